"""Where the Taxi PPO update's time goes: one update (rewards, then epochs x minibatches of 16 episodes,
shared prompt head, value head) on one rollout's batch from the kept 95.8% warm start, traced with
`jax.profiler` and every XLA:CPU op summed per call, grouped by what it computes (output shape and the
jax op it came from: `jit(_forward)` / `jit(_backward)` are flash_attention's tiles).

    python benchmarks/profile_update.py --level on+f     # model.remat + model.flash_attention
    python benchmarks/profile_update.py --level on       # model.remat alone
    python benchmarks/profile_update.py --level off --top 40

This is how flash_attention's backward was found to run its dK/dV products off XLA:CPU's fast matmul
path (plain `dot` ops rather than `ynn_fusion`s, 1.8x the time per product) before its tiles were
transposed. The ops run inside loops on two threads: the rows can add up to more than the wall time,
and the wall time minus the busiest thread's op time is dispatch and waiting.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks.train_memory import LEVELS, taxi_trainer, update_program  # noqa: E402
from benchmarks.xla_profile import op_times, print_table  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--level", default="on+f", choices=tuple(LEVELS.values()),
                    help="off, on (model.remat), on+a (+ remat_attention), on+f (+ flash_attention)")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    level = {v: k for k, v in LEVELS.items()}[args.level]
    trainer, state = taxi_trainer(level)
    update, inputs = update_program(trainer, state)
    key = jax.random.PRNGKey(2)
    compiled = update.lower(*inputs, key).compile()  # once: its HLO names the ops the trace times
    jax.block_until_ready(compiled(*inputs, key))  # warm-up
    t = time.perf_counter()
    jax.block_until_ready(compiled(*inputs, key))
    wall = time.perf_counter() - t
    ms, count = op_times(lambda: jax.block_until_ready(compiled(*inputs, key)), compiled.as_text(), full_path=True)
    print(f"# jax {jax.__version__} devices={jax.devices()} cpus={os.cpu_count()}")
    print(f"# Taxi PPO update, remat level {args.level}; untraced {wall:.2f} s a call")
    print_table(ms, count, args.top, width=64)
    # The tiles' ops, not the loops around them (a `while` op's time includes its body's).
    flash = {part: sum(t for (kind, _, op), t in ms.items() if f"jit({part})" in op and kind != "while")
             for part in ("_forward", "_backward")}
    if any(flash.values()):
        print(f"# flash_attention's ops: forward {flash['_forward'] / 1e3:.2f} s, backward {flash['_backward'] / 1e3:.2f} s")


if __name__ == "__main__":
    main()
