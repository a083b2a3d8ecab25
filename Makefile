# The two commands of the README. Everything a fresh clone needs is installed here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

# No network at run time: timm must not wait on the hub; no telemetry; plots off-screen.
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False
export MPLBACKEND := Agg

.PHONY: demo test docs bench lint format clean

demo: $(VENV)/.installed
	$(BIN)/workbench demo

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# The README's pictures and the group-purity figures (trains the demo models once if not cached).
docs: $(VENV)/.installed
	$(BIN)/python docs/make_figures.py

# docs/benchmarks.md (+ .csv, plots) on this machine's CPU: 2 threads, a 10 s budget per call.
bench: $(VENV)/.installed
	$(BIN)/workbench bench --out docs/ --sizes 256 512 1024 --precisions fp32 bf16 --threads 2 \
		--repeats 1 --time-budget-s 10

lint: $(VENV)/.installed-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install -e '.[test]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
