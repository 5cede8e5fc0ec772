# Two commands do all set-up: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= data
OUT ?= outputs

.PHONY: demo lab test bench install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,deploy]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m seqtr_lib.pipeline $(if $(filter 1,$(DEMO_FAST)),--fast,--demo)

# JupyterLab on the notebooks (those of the fast project after DEMO_FAST=1 make demo); it prints the URL to
# open. --allow-root only when running as root (containers, cloud boxes). LAB_ARGS adds options, e.g. --port 8899.
LAB_DIR := $(if $(filter 1,$(DEMO_FAST)),outputs/demo_fast/notebooks,notebooks)
lab: install
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(LAB_DIR) --no-browser $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Two pytest workers with one thread each use both cores without oversubscribing them; the fast-project tests
# (notebooks and browser) share one worker (xdist_group), which builds that project once.
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup

bench: install
	$(PY) benchmarks/bench_data.py --out benchmarks/results/bench_data.json
	$(PY) benchmarks/bench_decode.py --quick --out benchmarks/results/bench_decode.json

clean:
	rm -rf $(VENV) build *.egg-info
