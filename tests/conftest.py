"""Settings for the whole test session.

A persistent XLA compilation cache, one folder per pytest process (each xdist worker has its own: JAX
writes cache entries without a lock, so two writers could hand a reader half a file), removed at the end.
Many tests build a Trainer on the same tiny config, and `run_warmstart` jits its training chunk anew on
every call: each such Trainer or call traces again and, without the cache, XLA:CPU compiles the same
program again, which is most of those tests' time. A hit returns the program compiled before, so what a
test checks is unchanged (the in-memory `_cache_size()` counts and `chex.assert_max_traces` still see
every trace).
"""
import shutil
import tempfile

import jax

_CACHE_DIR = None


def pytest_configure(config):
    global _CACHE_DIR
    _CACHE_DIR = tempfile.mkdtemp(prefix="wmact-jax-test-xla-cache-")
    jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_unconfigure(config):
    if _CACHE_DIR:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)
