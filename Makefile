# The two commands of the README. Everything a fresh clone needs is installed here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

# No network at run time: timm must not wait on the hub; no telemetry; plots off-screen.
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False
export MPLBACKEND := Agg

.PHONY: demo test docs bench lab lint format clean chromium

# Trains the demo model if the cache lacks it, prints its evaluation, then serves the app on
# http://$(HOST):$(PORT) (Ctrl-C stops it). SERVE=0 stops after the evaluation (headless machines).
SERVE ?= 1
HOST ?= 127.0.0.1
PORT ?= 7860
demo: $(VENV)/.installed
	$(BIN)/workbench demo
	@if [ "$(SERVE)" != 0 ]; then $(BIN)/python apps/app.py --host $(HOST) --port $(PORT); fi

test: $(VENV)/.installed-test chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# The README's pictures and the group-purity figures (trains the demo models once if not cached).
docs: $(VENV)/.installed
	$(BIN)/python docs/make_figures.py

# On this machine's CPU with 2 threads: docs/fast_path.md (every family at 512² in bf16 side by side:
# forward, mmseg's labels, the Predictor, torch.compile, the roofline, the profile), its fp32 twin,
# docs/scaling.md (GPViT-L1 from 512² to 2048² against plain eager), docs/benchmarks.md (every model,
# 256² to 2048², a 20 s budget per call) and docs/fidelity.md (bf16 against fp32 on the three demo
# models; trains them once if absent). With GPVIT_REPO=<a checkout of ChenhongyiYang/GPViT>, the
# released GPViT code joins the fast-path tables (benchmarks/official).
BENCH := $(BIN)/workbench bench --out docs/ --threads 2
OFFICIAL := $(if $(GPVIT_REPO),--official)
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/fast_path.py --threads 2 --compile $(OFFICIAL) --out docs/fast_path.md
	$(BIN)/python benchmarks/fast_path.py --threads 2 --precision fp32 $(OFFICIAL) --out docs/fast_path_fp32.md
	$(BENCH) --name scaling --title "Scaling: GPViT-L1 from 512² to 2048²" --models gpvit_l1 \
		--modes inference --sizes 512 1024 2048 --precisions fp32 bf16 --layouts channels_last \
		--baseline eager --repeats 1
	$(BENCH) --sizes 256 512 1024 2048 --precisions fp32 bf16 --repeats 1 --time-budget-s 20
	$(BIN)/python benchmarks/fidelity.py --threads 2 --out docs/fidelity.md demo_gpvit demo_setr demo_hlg

# JupyterLab in notebooks/ on 127.0.0.1 only, the project's .venv as the kernel; prints the URL with its
# token. Another port: make lab LAB_PORT=8899.
LAB_PORT ?= 8888
lab: $(VENV)/.installed
	$(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --port=$(LAB_PORT) --ServerApp.root_dir=notebooks \
		--LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate \
		$(if $(filter 0,$(shell id -u)),--allow-root)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The browser test drives Debian's chromium (never a downloaded browser). As root on Debian/Ubuntu it is
# installed here; elsewhere make stops with the one command that installs it.
CHROMIUM := /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
		else \
			echo "make test needs $(CHROMIUM) for the browser test: sudo apt-get install chromium"; exit 1; \
		fi; \
	fi

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
