PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: train test test-fast

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Install and train CRNN on the built-in synthetic text lines (no data files needed).
train: $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/python launch/multihost.py -c configs/rec/quickstart_crnn.yml

# Install what the tests need and run the whole suite, slow multi-process tests included: two
# pytest workers (tracing and compiling keep one core busy each), each test file on one worker
# (its module fixtures built once).
test: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

test-fast: $(BIN)/python
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"
