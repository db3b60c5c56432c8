"""Compile and run time of one Trainer iteration under XLA's default code generation and under the test
session's `--xla_backend_optimization_level=0` (tests/conftest.py sets it: most of the suite's time is
compiling small programs that then run for a fraction of a second).

    python benchmarks/compile_time.py            # the tests' tiny Trainer (tests/wmact/test_train.py), 2 reps
    python benchmarks/compile_time.py --reps 3

Each setting runs in a child process of its own (XLA reads XLA_FLAGS once, when it starts), the settings
interleaved rep by rep, with no persistent compilation cache. Per child: the iteration's lowering (tracing:
Python, the same under both), its compile, and the best of 3 runs of the compiled program after a first
one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {"XLA default": "", "test session (O0)": "--xla_backend_optimization_level=0"}


def child() -> dict:
    sys.path.insert(0, ROOT)
    import jax

    from tests.wmact.test_train import tiny_config
    from wmact_jax.train import Trainer

    trainer = Trainer(tiny_config(), "")
    state = trainer._committed(trainer.init_state(jax.random.PRNGKey(0)))
    switches = trainer.device_switches()
    t0 = time.perf_counter()
    lowered = trainer._iteration_jit.lower(state, switches)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    runs = []
    for _ in range(4):  # each run from a fresh copy: the iteration donates its state
        fresh = jax.tree.map(lambda x: x.copy(), state)
        jax.block_until_ready(fresh)
        t = time.perf_counter()
        jax.block_until_ready(compiled(fresh, switches))
        runs.append(time.perf_counter() - t)
    return dict(lower=t1 - t0, compile=t2 - t1, run=min(runs[1:]), jax=jax.__version__)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child()))
        return
    sys.path.insert(0, ROOT)
    from tests.wmact.subprocess_env import compile_cache_env  # the test session's cache settings, left out

    env = {k: v for k, v in os.environ.items() if k not in compile_cache_env("")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    results = {name: [] for name in SETTINGS}
    for _ in range(args.reps):
        for name, flags in SETTINGS.items():
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child"], env=dict(env, XLA_FLAGS=flags),
                                 capture_output=True, text=True, check=True, cwd=ROOT).stdout
            results[name].append(json.loads(out.split("RESULT ", 1)[1]))
    jax_version = results["XLA default"][0]["jax"]
    print(f"# one Trainer iteration, the tests' tiny config; jax {jax_version}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs; {args.reps} child processes per setting, interleaved; best of them")
    print("| setting | lower (s) | compile (s) | run (s, best of 3) |")
    print("| --- | ---: | ---: | ---: |")
    for name, rows in results.items():
        best = {k: min(r[k] for r in rows) for k in ("lower", "compile", "run")}
        print(f"| {name} | {best['lower']:.1f} | {best['compile']:.1f} | {best['run']:.2f} |")


if __name__ == "__main__":
    main()
