# Two commands do all the set-up on a fresh clone:  make demo   and   make test
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
BIN     := $(VENV)/bin
DATA    ?= ../shared/data
OUT     ?= out

.PHONY: install test lint typecheck unit demo convert-shared bench bench-convert bench-read bench-train bench-stream bench-distributed bench-device clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --upgrade pip
	# exactly these two: other versions download gigabytes or fail to import here
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check wsi_patchgd tests benchmarks pipelines
	$(BIN)/ruff format --check wsi_patchgd tests benchmarks pipelines

typecheck: install
	$(BIN)/mypy wsi_patchgd

unit: install
	$(PY) -m pytest -q -ra

# The README's test command (what .ci/run runs): lint, types, the whole test suite.
test: install
	$(BIN)/ruff check wsi_patchgd tests benchmarks pipelines
	$(BIN)/mypy wsi_patchgd
	$(PY) -m pytest -q -ra

# The main job: synthetic slides -> Dask conversion -> PatchGD and GD -> report (prints its path).
demo: install
	$(BIN)/wsi-patchgd demo --out $(OUT)/demo

# Convert the real test slides (broken.svs fails on purpose) and describe the stores.
convert-shared: install
	$(BIN)/wsi-patchgd convert "$(DATA)/slides/*" --out $(OUT)/stores --report $(OUT)/convert-report.json; \
	  echo "exit code $$? (1 = some slides failed, as broken.svs must)"; \
	  for s in $(OUT)/stores/*.zarr; do $(BIN)/wsi-patchgd info $$s; done

bench-convert: install
	$(PY) benchmarks/bench_convert.py

bench-read: install
	$(PY) benchmarks/bench_read.py

bench-train: install
	$(PY) benchmarks/bench_train.py

bench-stream: install
	$(PY) benchmarks/bench_stream.py

bench-distributed: install
	$(PY) benchmarks/bench_distributed.py

# On a GPU machine (run as one command on the accelerator; installs, benchmarks, writes JSON in < 8 min)
bench-device:
	OUT=$(OUT)/device bash benchmarks/device.sh

bench: bench-convert bench-read bench-train bench-stream bench-distributed

clean:
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache
