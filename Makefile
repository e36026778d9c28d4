# MMRS: `make demo` and `make test` are the two entry points (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DATA := out/demo-data
DEMO_OUT := out/demo-mmrs

.PHONY: install demo test lint bench clean

$(BIN)/mmrs: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/mmrs

demo: install
	$(BIN)/python -m pipeline.demo $(DEMO_DATA)
	$(BIN)/mmrs build \
		--source kvasir_seg=$(DEMO_DATA)/Kvasir-SEG \
		--source busi=$(DEMO_DATA)/Dataset_BUSI_with_GT \
		--source montgomery=$(DEMO_DATA)/MontgomerySet \
		--out $(DEMO_OUT) --overwrite
	$(BIN)/mmrs validate $(DEMO_OUT)
	@echo "MMRS demo build: $(DEMO_OUT)"

lint: install
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/ruff format --check pipeline tests benchmarks

test: install lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_build.py

clean:
	rm -rf out .pytest_cache
