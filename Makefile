# The two commands a new machine needs: `make repro` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# DVC stage commands call `multitask`: find it without an activated venv (as on CI).
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup system-deps repro repro-sample repro-example test test-fast bench lint ui dashboard server help

setup: $(STAMP) system-deps

# What each target does (the README's "The two commands" says more); installs nothing.
help:
	@echo "make repro          set up .venv, then dvc repro: the whole pipeline on full MultiFashion"
	@echo "make test           set up .venv, then ruff and the test suite (pytest -n 2)"
	@echo "make repro-sample   the same pipeline on the sample in data/sample/ (about a minute)"
	@echo "make repro-example  the pipeline on a manifest with a multiclass, a binary and a regression task"
	@echo "make setup          .venv from requirements.lock (and, as root, Debian's Fashion-MNIST)"
	@echo "make system-deps    as root with apt-get: Debian's dataset-fashion-mnist only"
	@echo "make lint           ruff over src tests benchmarks scripts"
	@echo "make test-fast      the test suite without the slow tests"
	@echo "make bench          the benchmarks (python -m benchmarks.run)"
	@echo "make ui             the MLflow UI on http://127.0.0.1:5000 (MLFLOW_PORT=5001 moves it)"
	@echo "make dashboard      optuna-dashboard on http://127.0.0.1:8080 (STUDY=..., DASHBOARD_PORT=...)"
	@echo "make server         a team MLflow tracking server on PostgreSQL (SERVER_ARGS=...)"

# The virtual environment, pinned exactly by requirements.lock (torch 2.14.1 + torchvision 0.29.1).
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# Debian's Fashion-MNIST files (as root, where apt-get exists and the folder is missing).
system-deps:
	@bash scripts/system_deps.sh data

repro: setup
	$(BIN)/dvc repro

repro-sample: $(STAMP)
	$(BIN)/dvc repro sample/dvc.yaml

# The heterogeneous example (README, "A heterogeneous example"): its archive, written from
# Debian's Fashion-MNIST (the same bytes every time), is the download stage's local mirror.
# Fashion-MNIST's four .gz files elsewhere: FASHION_SOURCE=<folder>.
EXAMPLE := examples/fashion-manifest
FASHION_SOURCE ?= /usr/share/datasets/fashion-mnist
repro-example: setup $(EXAMPLE)/source/fashion.tar.gz
	$(BIN)/dvc repro $(EXAMPLE)/dvc.yaml

$(EXAMPLE)/source/fashion.tar.gz: scripts/make_fashion_manifest.py
	@test -d "$(FASHION_SOURCE)" || { echo "make repro-example: $(FASHION_SOURCE) is missing: install Debian's dataset-fashion-mnist (as root: bash scripts/system_deps.sh data), or pass FASHION_SOURCE=<folder with Fashion-MNIST's four .gz files>" >&2; exit 1; }
	rm -rf $(EXAMPLE)/source
	$(BIN)/python scripts/make_fashion_manifest.py --out $(EXAMPLE)/source/fashion --count 6000 --archive --source "$(FASHION_SOURCE)"
	rm -rf $(EXAMPLE)/source/fashion

test: lint
	@bash scripts/system_deps.sh test
	$(BIN)/pytest -n 2 --dist loadgroup

test-fast: $(STAMP)
	$(BIN)/pytest -n 2 -m "not slow"

# The peers measured beside this repository (TorchJD) are benchmark dependencies only.
bench: setup
	$(BIN)/pip install --quiet -r benchmarks/requirements.txt -c requirements.lock
	$(BIN)/python -m benchmarks.run

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

# The MLflow UI over the embedded store on http://127.0.0.1:5000 (another port: MLFLOW_PORT=5002).
ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --default-artifact-root ./mlartifacts --host 127.0.0.1

# optuna-dashboard over the tuning study (objectives named val/accuracy/<task>) on
# http://127.0.0.1:8080 until Ctrl-C. The sample's: make dashboard STUDY=sample/reports/tuning/study.journal;
# a PostgreSQL study: STUDY=postgresql://...; another port: DASHBOARD_PORT=8081.
STUDY ?= reports/tuning/study.journal
DASHBOARD_PORT ?= 8080
dashboard: $(STAMP)
	@case "$(STUDY)" in *://*) ;; *) test -f "$(STUDY)" || { echo "make dashboard: $(STUDY) does not exist yet: run make repro (the tune stage writes it), or make repro-sample then make dashboard STUDY=sample/reports/tuning/study.journal" >&2; exit 1; };; esac
	$(BIN)/optuna-dashboard $(STUDY) --host 127.0.0.1 --port $(DASHBOARD_PORT)

# The team's tracking server: PostgreSQL backend store and served artifacts under .server/, on
# 127.0.0.1:5000 until Ctrl-C; clients set MLFLOW_TRACKING_URI=http://127.0.0.1:5000. Options
# (python scripts/tracking_server.py --help) via SERVER_ARGS, e.g. SERVER_ARGS="--port 5001".
server: $(STAMP)
	$(BIN)/python scripts/tracking_server.py run $(SERVER_ARGS)
