"""KV-cache storage A/B: one buffer per layer (the default for <= 8 layers) against one stacked array.

    python benchmarks/kv_cache_storage.py              # small model, batch 64, 3 interleaved rounds
    python benchmarks/kv_cache_storage.py --batch 16 --rounds 5

Greedy sampling end to end (cache allocation + prefill + decode, as in benchmarks/generate.py) of the
same model and prompts with `KVCache.init(..., per_layer=True)` and `per_layer=False`, alternated
round by round so a drifting machine speed hits both alike. Prints new tokens/s per round and the
best of each.
"""

from __future__ import annotations

import argparse
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

from benchmarks.generate import small_model  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    _, cfg, model = small_model()
    split = nnx.split(model)
    B, P, N = args.batch, args.prompt_len, args.new_tokens
    S = -(-(P + N) // 64) * 64
    prompts = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (B, P)), jnp.int32)
    lengths = jnp.full((B,), P, jnp.int32)

    def run(per_layer: bool):
        cache = KVCache.init(cfg, B, S, per_layer=per_layer)
        ll, cache = sampler.prefill(split, prompts, lengths, cache, attend_buckets=(S,))
        out = sampler.decode(split, cache, ll, jax.random.key(0), max_new_tokens=N,
                             params=sampler.SamplingParams.greedy(), attend_buckets=(S,))
        return out.tokens.block_until_ready()

    print(f"# jax {jax.__version__} devices={jax.devices()} cpus={os.cpu_count()} python {platform.python_version()}")
    print(f"# small model {cfg.num_layers} layers hidden {cfg.hidden_size}, batch {B}, prompt {P}, {N} new tokens, "
          f"cache {S}, greedy, float32; new tokens/s end to end (alloc + prefill + decode)")
    same = np.array_equal(run(True), run(False))  # also compiles both
    best = {True: 0.0, False: 0.0}
    for r in range(args.rounds):
        for per_layer in (True, False):
            t = time.perf_counter()
            run(per_layer)
            tps = B * N / (time.perf_counter() - t)
            best[per_layer] = max(best[per_layer], tps)
            print(f"round {r}  {'per-layer' if per_layer else 'stacked  '}  {tps:8.1f} tok/s")
    print(f"best: per-layer {best[True]:.1f} tok/s, stacked {best[False]:.1f} tok/s, "
          f"ratio {best[True] / best[False]:.2f}x; identical greedy tokens: {same}")


if __name__ == "__main__":
    main()
