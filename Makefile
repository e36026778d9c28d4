# MMRS: `make demo` and `make test` are the two entry points (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch before the baseline's extra, so that pip keeps it: set TORCH to your own build's spec
TORCH ?= torch==2.13.0
DEMO_DATA := out/demo-data
DEMO_OUT := out/demo-mmrs

.PHONY: install demo test lint bench clean prefect-server prefect-pool prefect-deploy prefect-worker

$(BIN)/mmrs: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet '$(TORCH)'
	$(BIN)/pip install --quiet -e '.[test,baseline]'
	touch $@

install: $(BIN)/mmrs

demo: install
	$(BIN)/python -m pipeline.demo $(DEMO_DATA)
	$(BIN)/mmrs build \
		--source kvasir_seg=$(DEMO_DATA)/Kvasir-SEG \
		--source busi=$(DEMO_DATA)/Dataset_BUSI_with_GT \
		--source montgomery=$(DEMO_DATA)/MontgomerySet \
		--source msd=$(DEMO_DATA)/Task99_PhantomLiver \
		--out $(DEMO_OUT) --overwrite
	$(BIN)/mmrs validate $(DEMO_OUT)
	@echo "MMRS demo build: $(DEMO_OUT)"

lint: install
	$(BIN)/ruff check pipeline baselines tests benchmarks flows.py
	$(BIN)/ruff format --check pipeline baselines tests benchmarks flows.py

test: install lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_build.py
	$(BIN)/python benchmarks/bench_flow.py
	$(BIN)/python benchmarks/bench_card.py
	$(BIN)/python benchmarks/bench_volume.py
	$(BIN)/python benchmarks/bench_rewrite.py

clean:
	rm -rf out .pytest_cache

# Prefect deployments (README, "Running with Prefect"): a server, a process work pool, the
# deployments of prefect.yaml, and a worker. Run each in its own terminal or session.
PREFECT := PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 $(BIN)/prefect
POOL := mmrs-process

prefect-server: install
	$(PREFECT) server start --host 127.0.0.1

prefect-pool: install
	$(PREFECT) work-pool create $(POOL) --type process --overwrite

prefect-deploy: install
	MMRS_PROJECT_DIR=$(CURDIR) $(PREFECT) --no-prompt deploy --all

prefect-worker: install
	$(PREFECT) worker start --pool $(POOL)
