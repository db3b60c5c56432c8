"""The matmuls of one decode step, alone: XLA:CPU's (jnp.dot under jit) against torch's, shape by shape.

    python benchmarks/decode_dots.py                 # small model and SmolLM2-135M, batch 64
    python benchmarks/decode_dots.py --batch 16 --models smollm

A decode step at batch B multiplies [B, K] activations by each weight [K, N]: q, k, v, o, gate, up and
down per layer, then the LM head once. This times each distinct shape alone (best of --reps, warm,
float32; torch's as `nn.Linear` runs it, on a [N, K] weight, with as many threads as cores), and adds
them up per decode step as each model runs them (count per step x time). What it tells: how much of
the gap between the two samplers the matmul kernels alone account for, before attention, the cache,
sampling and framework overheads. Inside XLA's program two independent dots may also run side by
side on the two cores, so its matmul time per step can be below the sum.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.generate import _timed, small_model  # noqa: E402
from wmact_jax.models import ModelConfig  # noqa: E402


def shapes(c: ModelConfig) -> list[tuple[str, int, int, int]]:
    """(name, K, N, count per decode step) of every weight matmul of a decode step."""
    d, f, hd = c.hidden_size, c.intermediate_size, c.head_dim
    L = c.num_layers
    return [("q", d, c.num_heads * hd, L), ("k, v", d, c.num_kv_heads * hd, 2 * L),
            ("o", c.num_heads * hd, d, L), ("gate, up", d, f, 2 * L), ("down", f, d, L),
            ("LM head", d, c.vocab_size, 1)]


def best_seconds(fn, reps: int) -> float:
    """Best of `reps` timed calls after one untimed (compile / warm-up)."""
    fn()
    return min(_timed(fn) for _ in range(reps))


def main(argv=None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="small,smollm")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"# jax {jax.__version__} devices={jax.devices()} cpus={os.cpu_count()} torch {torch.__version__} "
          f"({torch.get_num_threads()} threads) python {platform.python_version()}")
    print(f"# batch {args.batch}, float32, each matmul [B, K] x [K, N] alone, best of {args.reps}; "
          "per step = count x time")
    dot = jax.jit(lambda x, w: x @ w)
    rng = np.random.default_rng(0)
    for name in args.models.split(","):
        if name == "small":
            label, cfg, _ = small_model()
        else:  # the config only: no weights needed
            from wmact_jax.checkpoints import load_pretrained

            label, (cfg, _, _) = "SmolLM2-135M", load_pretrained("smollm2-135m-instruct", "float32", tokenizer=False)
        print(f"{label}: {'matmul':<9}{'K x N':>13}{'per step':>9} | {'jax ms':>8}{'GF/s':>7} | "
              f"{'torch ms':>9}{'GF/s':>7} | {'torch/jax':>9}")
        tot_j = tot_t = 0.0
        for what, K, N, n in shapes(cfg):
            x = rng.standard_normal((args.batch, K), np.float32)
            w = rng.standard_normal((K, N), np.float32)
            xj, wj = jnp.asarray(x), jnp.asarray(w)
            xt, wt = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(w.T))  # nn.Linear's [N, K]
            tj = best_seconds(lambda: dot(xj, wj).block_until_ready(), args.reps)
            with torch.inference_mode():
                tt = best_seconds(lambda: torch.nn.functional.linear(xt, wt), args.reps)
            gf = 2 * args.batch * K * N / 1e9
            tot_j, tot_t = tot_j + n * tj, tot_t + n * tt
            print(f"{'':<14}{what:<9}{f'{K} x {N}':>13}{n:>9} | {tj * 1e3:8.3f}{gf / tj:7.1f} | "
                  f"{tt * 1e3:9.3f}{gf / tt:7.1f} | {tt / tj:8.2f}x")
        print(f"{'':<14}{'per decode step':<31} | {tot_j * 1e3:8.1f}{'':>7} | {tot_t * 1e3:9.1f}{'':>7} | "
              f"{tot_t / tot_j:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
