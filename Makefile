# Fresh-machine entry points: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install tools demo test lint protos clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/xinhe demo

tools:
	bash scripts/install-tools.sh

test: $(STAMP) tools
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Regenerate the committed Python code from protos/ (tests fail when stale).
protos: $(STAMP)
	$(BIN)/python -m controlplane.api.protogen

clean:
	rm -rf $(VENV) build *.egg-info
