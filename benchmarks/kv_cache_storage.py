"""KV-cache A/B: storage (one buffer per layer vs one stacked array) and layout (keys transposed or not).

    python benchmarks/kv_cache_storage.py              # small model, batch 64, 3 interleaved rounds
    python benchmarks/kv_cache_storage.py --batch 16 --rounds 5

Greedy sampling end to end (cache allocation + prefill + decode, as in benchmarks/generate.py) of the
same model and prompts with the default cache (`KVCache.init`: per layer, layout "bkds", keys stored
[head_dim, max_len]) against the stacked storage and against the "bskd" layout, alternated round by
round so a drifting machine speed hits all alike. Prints new tokens/s per round and the best of each,
then the decode step's q.K^T product alone with keys stored [max_len, head_dim] against [head_dim,
max_len], at the small model's and SmolLM2-135M's shapes.
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


def qk_product(B: int, KV: int, G: int, S: int, Dh: int, reps: int = 30):
    """Best-of-reps ms of one decode step's q.K^T with keys stored [S, Dh] ("bksd") and [Dh, S] ("bkds")."""
    key = jax.random.key(0)
    q = jax.random.normal(key, (B, KV, G, Dh))
    k_sd = jax.random.normal(jax.random.key(1), (B, KV, S, Dh))
    k_ds = jnp.swapaxes(k_sd, -1, -2)
    f_sd = jax.jit(lambda q, k: jnp.einsum("bkmd,bksd->bkms", q, k))
    f_ds = jax.jit(lambda q, k: jnp.einsum("bkmd,bkds->bkms", q, k))
    out = {}
    for name, f, k in (("bksd", f_sd, k_sd), ("bkds", f_ds, k_ds)):
        f(q, k).block_until_ready()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            f(q, k).block_until_ready()
            ts.append(time.perf_counter() - t)
        out[name] = min(ts) * 1e3
    return out


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

    def run(per_layer: bool, layout: str):
        cache = KVCache.init(cfg, B, S, layout=layout, per_layer=per_layer)
        ll, cache = sampler.prefill(split, prompts, lengths, cache, attend_buckets=(S,))
        out = sampler.decode(split, cache, ll, jax.random.key(0), max_new_tokens=N,
                             params=sampler.SamplingParams.greedy(), attend_buckets=(S,))
        return out.tokens.block_until_ready()

    print(f"# jax {jax.__version__} devices={jax.devices()} cpus={os.cpu_count()} python {platform.python_version()}")
    print(f"# small model {cfg.num_layers} layers hidden {cfg.hidden_size}, batch {B}, prompt {P}, {N} new tokens, "
          f"cache {S}, greedy, float32; new tokens/s end to end (alloc + prefill + decode)")
    variants = {"per-layer bkds": (True, "bkds"), "stacked   bkds": (False, "bkds"),
                "per-layer bskd": (True, "bskd")}
    toks = {name: run(*v) for name, v in variants.items()}  # also compiles each
    best = dict.fromkeys(variants, 0.0)
    for r in range(args.rounds):
        for name, v in variants.items():
            t = time.perf_counter()
            run(*v)
            tps = B * N / (time.perf_counter() - t)
            best[name] = max(best[name], tps)
            print(f"round {r}  {name}  {tps:8.1f} tok/s", flush=True)
    ref = "per-layer bkds"
    for name in variants:
        if name != ref:
            print(f"best: {ref} {best[ref]:.1f} tok/s, {name} {best[name]:.1f} tok/s, "
                  f"ratio {best[ref] / best[name]:.2f}x; identical greedy tokens: {np.array_equal(toks[ref], toks[name])}")
    # The product the "bkds" layout is for, alone, at this model's and SmolLM2's decode shapes.
    G = cfg.num_heads // cfg.num_kv_heads
    for label, shape in (("small", (B, cfg.num_kv_heads, G, S, cfg.head_dim)), ("SmolLM2-135M", (B, 3, 3, S, 64))):
        ms = qk_product(*shape)
        print(f"q.K^T alone, {label} [B, KV, G, S, Dh]={list(shape)}: keys [S, Dh] {ms['bksd']:.3f} ms, "
              f"keys [Dh, S] {ms['bkds']:.3f} ms ({ms['bksd'] / ms['bkds']:.2f}x)")


if __name__ == "__main__":
    main()
