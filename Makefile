# Every target sets up what it needs: `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
PORT ?= 8000
MODEL ?= models:/santander@champion
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install run train serve mlflow-ui test test-fast lint format bench docker-smoke clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): requirements-dev.lock requirements.lock requirements-serve.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" "uv>=0.4"
	$(BIN)/uv pip install -q --compile-bytecode --python $(PY) -r requirements-dev.lock
	$(BIN)/uv pip install -q --python $(PY) --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

install: $(STAMP) ## Create .venv with the pinned dependencies and the project (editable)

run: install ## The main job: synthesize data, train, register, promote, serve the champion on :8000 (FULL=1 for the full model)
	./scripts/run.sh

train: install ## Train once and register (QUICK=1 for the small preset)
	$(PY) -m training.train $(if $(QUICK),--quick,)

serve: install ## Serve MODEL (default models:/santander@champion) on PORT
	./local-serve.sh "$(MODEL)" --port $(PORT)

mlflow-ui: install ## MLflow UI on :5000 over the project's own store
	$(BIN)/mlflow server --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db" \
		--default-artifact-root "$(CURDIR)/mlartifacts" --host 0.0.0.0 --port 5000

test: install ## Run the whole test suite (Docker tests run where an engine answers)
	./scripts/system-deps.sh
	$(BIN)/pytest -q

lint: install ## ruff format --check, ruff check, mypy, notebook outputs stripped
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy app scoring batch training bench
	$(PY) scripts/check_notebooks.py

format: install ## Format the code and strip notebook outputs
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/nbstripout notebooks/*.ipynb

bench: install ## Benchmark this service against `mlflow models serve`, and batch scoring on Dask (writes bench/results/)
	$(PY) -m bench.run
	set -o pipefail; $(PY) -m bench.batch | tee bench/results/batch.txt

docker-smoke: install ## Build and bring up the docker-compose stack, train in it, call the API, tear down
	$(BIN)/pytest -q -m docker tests/docker

clean: ## Remove the venv, caches and the local MLflow store
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache mlflow.db mlartifacts mlruns
