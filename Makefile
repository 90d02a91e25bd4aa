# Two commands do all set-up on a fresh machine: `make reproduce` and `make test`.
# Each creates .venv and installs what it needs (torch first, from TORCH_SPEC, then the package).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-dev
OUT ?= outputs/demo
PYTEST_ARGS ?= -n 2

.PHONY: install test reproduce lint clean reproduce-gpu-5b demo report reproduce-table1 reproduce-table2 \
	reproduce-table3 reproduce-table4 reproduce-sp reproduce-perf reproduce-lowprec reproduce-quant-kernels

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The smoke experiment on CPU end to end: matrix -> results/smoke -> reports/smoke/index.html (resumable:
# re-running reuses finished cells; FORCE=1 redoes them).
reproduce: $(STAMP)
	$(BIN)/longlive sweep +experiment=smoke --results results/smoke $(if $(FORCE),--force,)
	$(BIN)/longlive report results/smoke --out reports/smoke --title "Smoke matrix (tiny preset, CPU)"

# GPU machines: the paper's tables and SP scaling (cells this machine cannot run are explained skips).
define sweep_and_report
	$(BIN)/longlive sweep +experiment=$(1) --results results/$(1)
	$(BIN)/longlive report results/$(1) --out reports/$(1)
endef
reproduce-table1: $(STAMP) ; $(call sweep_and_report,table1_training)
reproduce-table2: $(STAMP) ; $(call sweep_and_report,table2_dmd_memory)
reproduce-table3: $(STAMP) ; $(call sweep_and_report,table3_inference)
reproduce-table4: $(STAMP) ; $(call sweep_and_report,table4_quality)
reproduce-sp: $(STAMP) ; $(call sweep_and_report,sp_scaling)

# Re-render a report from existing results: make report RESULTS=results/smoke NAME=smoke
RESULTS ?= results/smoke
NAME ?= smoke
report: $(STAMP)
	$(BIN)/longlive report $(RESULTS) --out reports/$(NAME)

# One tiny video through `longlive generate` (the single-video path).
demo: $(STAMP)
	$(BIN)/longlive generate --model tiny --device cpu --frames 16 --steps 4 --seed 0 --decode streaming \
		--prompt "A red circle bounces on a grey background." \
		--prompt "The scene transitions. A blue square bounces on a grey background." \
		--out $(OUT)

# On a GPU machine: the 5B preset, 6 chunks at 704x1280, random weights (results + manifest in OUT).
reproduce-gpu-5b: $(STAMP) ; $(call sweep_and_report,foundation_5b)
reproduce-perf: $(STAMP)
	$(call sweep_and_report,perf_ladder)
	$(call sweep_and_report,vae_decode)
reproduce-lowprec: $(STAMP) ; $(call sweep_and_report,lowprec)
reproduce-quant-kernels: $(STAMP) ; $(call sweep_and_report,quant_kernels)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs results reports/smoke .pytest_cache .ruff_cache
