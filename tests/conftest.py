"""Settings for the whole test session: XLA compiles fast, and compiles each program once.

Most of the suite's time is XLA:CPU compiling small programs that then run for a fraction of a second
(many tests build a Trainer on the same tiny config; `run_warmstart` jits its training chunk anew on every
call). Two settings, made here before JAX reads its configuration and inherited by the xdist workers and
by the tests' own subprocesses (`tests/wmact/subprocess_env.py`):

- `--xla_backend_optimization_level=0`: LLVM's code generation without its optimisation passes. The tiny
  Trainer's iteration compiles in about half the time and runs about twice as slowly
  (`benchmarks/compile_time.py`), a good trade where a program runs a few times. It changes how fast the
  machine code is, not what it computes (no fast-math either way); `make run`, the benchmarks and users
  keep XLA's default.
- One persistent compilation cache for the session, shared by both xdist workers and the subprocesses:
  a program compiled once (by any of them) is read back by the next Trainer or call that traces it again.
  A size limit turns on JAX's file lock around every read and write of the cache (without one, JAX
  writes entries without a lock, and a reader could get half a file). What a test checks is unchanged:
  the in-memory `_cache_size()` counts and `chex.assert_max_traces` still see every trace. The session
  that created the folder removes it at the end.
"""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for `tests.`
from tests.wmact.subprocess_env import compile_cache_env  # noqa: E402  (imports only os, not JAX)

FAST_COMPILE = "--xla_backend_optimization_level=0"
_CACHE_ENV = "WMACT_TEST_XLA_CACHE"  # set by the session that created the cache (the xdist controller)

if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE).strip()
_OWN_CACHE = _CACHE_ENV not in os.environ
if _OWN_CACHE:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="wmact-jax-test-xla-cache-")
os.environ.update(compile_cache_env(os.environ[_CACHE_ENV]))

import jax  # noqa: E402  (after the settings above: JAX reads them when its configuration is defined)

assert jax.config.jax_compilation_cache_dir == os.environ[_CACHE_ENV], "conftest ran after JAX read its settings"


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ[_CACHE_ENV], ignore_errors=True)
