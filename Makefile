# Two entry points: `make demo` (the main job) and `make test`. Both build .venv with pip.
# torch is pinned to the local CPU wheel here so setup never pulls a multi-GB CUDA build;
# the package itself accepts any torch>=2.4 for real users.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test proto bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[all,dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/thinwire demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

proto: $(STAMP)
	$(BIN)/python -m thinwire.wire.regen

bench: $(STAMP)
	$(BIN)/thinwire bench codecs

clean:
	rm -rf $(VENV) build *.egg-info runs
