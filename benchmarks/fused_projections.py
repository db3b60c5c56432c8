"""A/B of the decode step with fused projections (wq|wk|wv and w_gate|w_up, one dot each) or not.

    python benchmarks/fused_projections.py                    # small model and SmolLM2-135M, batch 64
    python benchmarks/fused_projections.py --models smollm --rounds 5

`llama.layer_weights(..., fused=True)` gives the hoisted per-layer weights of a decode loop fused
(off by default: no faster on the 2-core CPU); this times greedy decoding of `--new-tokens` tokens from the same prefilled cache with both forms,
alternated round by round so a drifting machine speed hits both alike, and checks the tokens agree.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from wmact_jax import sampler  # noqa: E402
from wmact_jax.models import KVCache  # noqa: E402
from wmact_jax.models.llama import apply, layer_weights  # noqa: E402

from benchmarks.generate import small_model, smollm_model  # noqa: E402


def make_decode(graphdef, fused: bool, new: int, S: int):
    @functools.partial(jax.jit, donate_argnames=("cache",))
    def run(state, cache, last_logits):
        lws = layer_weights(graphdef, state, fused=fused)
        out = sampler.decode_fn(lambda t, c, n: apply(graphdef, state, t, c, n, layer_weights=lws), cache,
                                last_logits, jax.random.key(0), max_new_tokens=new,
                                params=sampler.SamplingParams.greedy().as_arrays(last_logits.shape[0]),
                                attend_buckets=(S,))
        return out.tokens
    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="small,smollm")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    B, P, N = args.batch, args.prompt_len, args.new_tokens
    S = -(-(P + N) // 64) * 64
    print(f"# jax {jax.__version__} devices={jax.devices()} cpus={os.cpu_count()} python {platform.python_version()}")
    print(f"# batch {B}, prompt {P}, {N} new tokens, cache {S} (per layer, bkds), greedy, float32; decode only "
          f"(the prefill is done once, outside the timing); ms per decode step, best of each side")
    makers = {"small": small_model, "smollm": smollm_model}
    for name in args.models.split(","):
        label, cfg, model = makers[name]()
        graphdef, state = nnx.split(model)
        prompts = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (B, P)), jnp.int32)
        lengths = jnp.full((B,), P, jnp.int32)
        cache0 = KVCache.init(cfg, B, S)
        ll, cache0 = sampler.prefill((graphdef, state), prompts, lengths, cache0, attend_buckets=(S,))
        runs = {"fused": make_decode(graphdef, True, N, S), "separate": make_decode(graphdef, False, N, S)}
        copy = lambda c: jax.tree.map(jnp.copy, c)  # noqa: E731  (each call donates its cache)
        toks = {k: np.asarray(f(state, copy(cache0), ll)) for k, f in runs.items()}  # compile
        best = {k: float("inf") for k in runs}
        for r in range(args.rounds):
            for k, f in runs.items():
                c = jax.block_until_ready(copy(cache0))
                t = time.perf_counter()
                f(state, c, ll).block_until_ready()
                dt = (time.perf_counter() - t) / N * 1e3
                best[k] = min(best[k], dt)
                print(f"{label:<13} round {r}  {k:<8} {dt:8.2f} ms/step", flush=True)
        same = np.mean(toks["fused"] == toks["separate"])
        print(f"{label:<13} best: fused {best['fused']:.2f} ms/step, separate {best['separate']:.2f} ms/step, "
              f"ratio {best['separate'] / best['fused']:.2f}x; identical greedy tokens {same:.0%}", flush=True)


if __name__ == "__main__":
    main()
