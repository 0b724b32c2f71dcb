# syntax=docker/dockerfile:1
# The Ray image: what KubeRay runs `ray start` in for the head, the training workers and the
# serving replicas, and what runs the Ray jobs openft submits (`python -m training.driver`,
# `python -m serving.deploy`): contract/, training/, serving/ and vllm_cpu/ (vLLM's plugin
# entry points name it; its CPU plugins stay inert on CUDA) over CUDA torch, CUDA vLLM and the
# training stack. Build from the repository root (deploy/README.md):
#   docker build -f deploy/ray.Dockerfile --build-arg OPENFT_VERSION=<appVersion> \
#     -t <registry>/openft-ray:<appVersion> .
#
# Why python:3.11-slim and not nvidia/cuda or rayproject/ray:
# - torch==2.13.0 and vllm==0.32.0 from PyPI are CUDA 13 builds that bring the CUDA user-space
#   libraries as wheels (cuda-toolkit, nvidia-cudnn-cu13, nvidia-nccl-cu13, ...); the driver
#   comes from the node through the NVIDIA container toolkit (driver 580 or newer for CUDA 13).
#   An nvidia/cuda base would add a second CUDA that nothing loads, and its Ubuntu 24.04 has
#   Python 3.12, which openft does not support (requires-python <3.12).
# - rayproject/ray images carry a conda Python with its own pins (and a CUDA 12 torch stack on
#   their cu12x tags) that torch 2.13 and vLLM 0.32 would replace anyway; Ray itself comes
#   from pyproject.toml's pin (ray==2.60.0, matching the RayCluster's rayVersion).
# - One base for both openft images: the venv sits at /opt/venv in each, so the interpreter
#   path the API names in a training job's entrypoint exists on the Ray head too.
# BASE: a patch-pinned tag; pin the digest as well for builds that cannot change under you:
#   --build-arg BASE=python:3.11.14-slim-bookworm@sha256:<digest>
ARG BASE=python:3.11.14-slim-bookworm

# --- deps: torch, vLLM and the training stack, from pyproject.toml alone ---------------------
FROM ${BASE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv && pip install pip==26.3 setuptools==84.2.1
WORKDIR /src
# Only pyproject.toml: a code change does not invalidate these multi-GB layers.
COPY pyproject.toml ./
# torch first and alone (the largest layer, shared by every rebuild that keeps its pin);
# PyPI's torch 2.13.0 for Linux is the CUDA build.
RUN pip install torch==2.13.0
# The base dependencies (the API's; training and serving import contract/, which needs
# pydantic, and the bucket clients) plus the `stack` and `cuda` extras.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['stack'] \
+ p['optional-dependencies']['cuda']))" > requirements.txt \
    && pip install -r requirements.txt

# --- app: openft's Ray-side packages as a wheel -----------------------------------------------
FROM deps AS app
COPY README.md ./
COPY contract ./contract
COPY training ./training
COPY serving ./serving
COPY vllm_cpu ./vllm_cpu
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

# --- the image ---------------------------------------------------------------------------------
FROM ${BASE}
ARG OPENFT_VERSION=0.1.0
LABEL org.opencontainers.image.title="openft-ray" \
      org.opencontainers.image.description="openft's Ray nodes: training and serving on CUDA" \
      org.opencontainers.image.version="${OPENFT_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# gcc/g++ and ninja: Triton compiles its kernel launchers at run time, DeepSpeed and torch
# build their C++ extensions on first use. wget: KubeRay's default exec probes call it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ gcc ninja-build wget \
    && rm -rf /var/lib/apt/lists/*
# uid 1000 and home /home/ray, as in Ray's own images (KubeRay's examples assume them).
# Ray's session files go to /tmp/ray; triton, vLLM and torch extension caches under $HOME.
RUN groupadd --gid 1000 ray \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/ray --shell /bin/bash ray
COPY --from=deps /opt/venv /opt/venv
# No RAY_AUTH_MODE here: KubeRay sets RAY_AUTH_MODE and RAY_AUTH_TOKEN from the RayCluster's
# authOptions. HF_HUB_OFFLINE: models come from the bucket or a volume, never the hub.
# NUMBA_CACHE_DIR: the venv is root's, so numba functions compiled with cache=True need a
# writable cache elsewhere.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1 NUMBA_CACHE_DIR=/tmp/numba-cache
RUN --mount=type=bind,from=app,source=/dist,target=/dist \
    pip install --no-cache-dir --no-deps /dist/openft-*.whl
USER 1000
WORKDIR /home/ray
# KubeRay replaces the command with `ray start ...`; this is for `docker run` by hand.
CMD ["ray", "start", "--head", "--block", "--num-cpus=0", "--dashboard-host=0.0.0.0"]
