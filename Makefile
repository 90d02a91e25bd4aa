# Two commands do all set-up on a fresh machine: `make reproduce` and `make test`.
# Each creates .venv and installs what it needs (torch first, from TORCH_SPEC, then the package).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-dev
OUT ?= outputs/reproduce
PYTEST_ARGS ?=

.PHONY: install test reproduce lint clean reproduce-gpu-5b

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check longlive tests
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# For now: one tiny-preset video on CPU, end to end (text → AR chunk loop → streaming VAE → mp4 + strip).
reproduce: $(STAMP)
	$(BIN)/longlive generate --preset tiny --device cpu --frames 16 --steps 4 --seed 0 --decode streaming \
		--prompt "A red ball bounces across a blue floor" \
		--prompt "The scene transitions. A green square slides to the right" \
		--out $(OUT)

# On a GPU machine: the 5B preset, 6 chunks at 704x1280, random weights (results + manifest in OUT).
reproduce-gpu-5b: $(STAMP)
	OUT=$(OUT) bash reports/foundation-5b/run.sh

lint: $(STAMP)
	$(BIN)/ruff check longlive tests

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
