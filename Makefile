# Set-up and the two everyday commands. `make train` and `make test` work on a fresh clone:
# they create .venv, install bigbatch with the CPU build of torch (torch==2.13.0 lies on the
# project machines' disk, so no multi-GB CUDA build is fetched), then run.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

.PHONY: install train test test-slow
install: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/bigbatch train

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow
