"""A/B of glibc malloc settings under XLA:CPU: fresh pages for every large temporary buffer, or reused ones.

    python benchmarks/malloc_env.py                       # all workloads, 3 alternated rounds
    python benchmarks/malloc_env.py --workloads slice,train --rounds 2

XLA:CPU allocates its buffers with malloc. glibc serves a large block (above its mmap threshold, 128 KB
to 32 MB, dynamic) with a fresh `mmap` and returns it with `munmap` when freed, so every execution of a
program touches fresh pages for its large temporaries, and each first touch is a page fault (zeroing
the page; on a virtual machine an exit to the hypervisor as well). Modes, each in its own process:
- `default`: glibc as configured;
- `env`: MALLOC_MMAP_THRESHOLD_=1 GiB and MALLOC_TRIM_THRESHOLD_=4 GiB set before the process starts
  (large blocks come from the heap and stay there when freed: their pages are reused);
- `mallopt`: the same asked at run time with `mallopt` (what a library could do after start-up; the
  thresholds alone did not help there, so also M_MMAP_MAX=0: no block from mmap).
Workloads (seconds, the best or mean of the child's repetitions; its peak RSS beside): `slice`, a 45 MB
slice copy (the one-token shift of a [16, 512, 1376] logits array, as in the training loss); `train`,
one supervised step of the scratch model of benchmarks/train_step.py at 16 x 512 (mean of 5); `generate`, greedy
sampling of the small model at batch 64 as in benchmarks/generate.py (prompt 64, 64 new tokens);
`generate_smollm`, the same with SmolLM2-135M (not in the default list: a minute per child).

Measured on 2026-12-05 (README, "Sampling"): the slice copy 5.7x faster with reused pages, but the
training step only 1.01-1.04x, small-model sampling 1.04-1.08x and SmolLM2 sampling 0.98x, with a
higher peak RSS: so the project's commands leave malloc as configured.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}
# glibc's M_TRIM_THRESHOLD (2 GiB - 1: the value is a C int), M_MMAP_THRESHOLD, M_MMAP_MAX (malloc.h).
MALLOPT = ((-1, (1 << 31) - 1), (-3, 1 << 30), (-4, 0))


def child(workload: str, mode: str) -> float:
    if mode == "mallopt":
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        for k, v in MALLOPT:
            if libc.mallopt(k, v) != 1:
                raise RuntimeError(f"glibc refused mallopt({k}, {v})")
    sys.path.insert(0, ROOT)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.decode_dots import best_seconds

    if workload == "slice":
        x = jnp.asarray(np.random.default_rng(0).standard_normal((8192, 1376), np.float32))
        f = jax.jit(lambda x: x.reshape(16, 512, 1376)[:, 1:] * 1.0)
        return best_seconds(lambda: f(x).block_until_ready(), 20)
    if workload == "train":
        from benchmarks.train_step import jax_step_seconds
        from wmact_jax.models import llama

        return jax_step_seconds(16, 512, llama.ATTENTION_CHUNK, 5)
    if workload in ("generate", "generate_smollm"):
        from flax import nnx

        from benchmarks.generate import bench_jax, small_model, smollm_model

        _, cfg, model = (small_model if workload == "generate" else smollm_model)()
        prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (64, 64)).astype(np.int32)
        reps = 3 if workload == "generate" else 1
        return min(bench_jax(cfg, nnx.split(model), prompts, 64, 128, (128,))[1] for _ in range(reps))
    raise ValueError(f"unknown workload {workload!r}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="slice,train,generate")
    ap.add_argument("--modes", default="default,env,mallopt")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("WORKLOAD", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        import resource

        secs = child(*args.child)
        print(f"SECONDS {secs:.6f} MAXRSS_MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}",
              flush=True)
        return
    import jax

    print(f"# jax {jax.__version__} cpus={os.cpu_count()} python {platform.python_version()} "
          f"glibc {platform.libc_ver()[1]}; seconds per the child's repetitions (best, or mean for train); "
          "modes alternated per round")
    modes = args.modes.split(",")
    for w in args.workloads.split(","):
        best = {m: float("inf") for m in modes}
        for r in range(args.rounds):
            for m in modes:
                env = dict(os.environ, **(ENV if m == "env" else {}))
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", w, m], env=env,
                                     capture_output=True, text=True, check=True).stdout
                fields = out.split("SECONDS")[-1].split()
                s, rss = float(fields[0]), float(fields[2])
                best[m] = min(best[m], s)
                print(f"{w:<9} round {r}  {m:<8} {s * 1e3:9.1f} ms   peak RSS {rss:6.0f} MB", flush=True)
        base = best[modes[0]]
        print(f"{w:<9} best: " + ", ".join(f"{m} {best[m] * 1e3:.1f} ms ({base / best[m]:.2f}x)" for m in modes),
              flush=True)


if __name__ == "__main__":
    main()
