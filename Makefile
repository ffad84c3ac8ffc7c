# `make demo`: install everything, fetch the sample model and text, compress with the default recipe,
# evaluate, print where the report is. `make test`: install everything, run the tests.
# torch is installed first, pinned, so no open range can pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
OUT ?= out/demo

.PHONY: install demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/tensorpress sample
	$(BIN)/tensorpress compress "$$($(BIN)/tensorpress sample | sed -n 's/^model: //p')" \
		--recipe default --out $(OUT) --force --eval kjv:eval

test: install
	$(BIN)/python -m pytest -q
	$(BIN)/ruff check .

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) out
