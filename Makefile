# Two commands do all set-up on a fresh machine:
#   make run   — create .venv, install, run the main job on the built-in mock galaxy (local Ray)
#   make test  — create .venv, install, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/mock.yaml
OUT ?= runs/mock
# Extra `--set key=value` overrides for `make run`, e.g. SET="--set cnf.ensemble_size=2"
SET ?=

.PHONY: run test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	# constraints.txt pins torch to the CPU build and every other verified version.
	# The enbid extra (GPL-2 EnBiD binaries) is installed so its baseline is tested.
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,flows,enbid,s3]'
	# torchdyn 1.0.6 requires an unpinned torchvision whose CPU-incompatible build breaks
	# `import torchdyn.core` (via pytorch_lightning -> torchmetrics); nothing here uses it.
	$(BIN)/pip uninstall --yes --quiet torchvision
	$(BIN)/python -c "from torchdyn.core import NeuralODE; import gflow_dist"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/gflow run $(CONFIG) --out $(OUT) $(SET)

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_cnf.py

clean:
	rm -rf $(VENV) runs
