# Two commands do all set-up: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= data
OUT ?= outputs

.PHONY: demo test bench install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m seqtr_lib.pipeline $(if $(filter 1,$(DEMO_FAST)),--fast)

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_data.py --out benchmarks/results/bench_data.json
	$(PY) benchmarks/bench_decode.py --quick --out benchmarks/results/bench_decode.json

clean:
	rm -rf $(VENV) build *.egg-info
