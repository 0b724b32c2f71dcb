# syntax=docker/dockerfile:1
# The API image: `uvicorn --factory service.main:create_app`, the migration hook
# (`python -m service.migrate`) and `python -m service.base_models register`. Only contract/
# and service/ with the package's base dependencies: no torch, vLLM or Ray, so it starts in
# seconds on a small pod. Build from the repository root (deploy/README.md):
#   docker build -f deploy/api.Dockerfile --build-arg OPENFT_VERSION=<appVersion> \
#     -t <registry>/openft-api:<appVersion> .
#
# BASE: a patch-pinned tag. For builds that cannot change under you, pin the digest too:
#   --build-arg BASE=python:3.11.14-slim-bookworm@sha256:<digest>
# (`docker buildx imagetools inspect python:3.11.14-slim-bookworm` prints it). Both stages
# must use the same image: the venv's interpreter is a link to the base image's Python.
ARG BASE=python:3.11.14-slim-bookworm

# --- deps: the third-party packages, from pyproject.toml alone --------------------------------
FROM ${BASE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv && pip install pip==26.3 setuptools==84.2.1
WORKDIR /src
# Only pyproject.toml: a code change does not invalidate this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))\
['project']['dependencies']))" > requirements.txt \
    && pip install -r requirements.txt

# --- app: openft's API packages as a wheel ----------------------------------------------------
FROM deps AS app
COPY README.md ./
COPY contract ./contract
COPY service ./service
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

# --- the image ---------------------------------------------------------------------------------
FROM ${BASE}
ARG OPENFT_VERSION=0.1.0
LABEL org.opencontainers.image.title="openft-api" \
      org.opencontainers.image.description="openft's HTTP API (OpenAI fine-tuning API)" \
      org.opencontainers.image.version="${OPENFT_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed uid (the Ray image's too: the chart gives every openft pod one runAsUser).
RUN groupadd --gid 1000 openft \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /var/lib/openft \
       --shell /usr/sbin/nologin openft \
    && install -d -o 1000 -g 1000 /var/lib/openft
# The dependency layer first (it changes only with pyproject.toml), then the code on top.
# The venv stays root's: the running user cannot change the code it runs.
COPY --from=deps /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1 OPENFT_DATA_DIR=/var/lib/openft
RUN --mount=type=bind,from=app,source=/dist,target=/dist \
    pip install --no-cache-dir --no-deps /dist/openft-*.whl
USER 1000
WORKDIR /var/lib/openft
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["uvicorn", "--factory", "service.main:create_app", "--host", "0.0.0.0", "--port", "8000"]
