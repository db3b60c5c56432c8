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


def qk_product(B: int, KV: int, G: int, S: int, Dh: int, reps: int = 30, buffers: int = 1):
    """Best-of-reps ms of one decode step's q.K^T with keys stored [S, Dh] ("bksd") and [Dh, S] ("bkds"),
    and of P.V (values [S, Dh]), per product; "bkds_bf16": the "bkds" keys stored and multiplied in bfloat16.

    buffers > 1: one jitted call runs the product over that many distinct key buffers (a decode step reads
    a key and a value buffer per layer), so they come from memory rather than from the CPU cache that a
    single buffer, re-read each repetition, stays in; the time is per product.
    """
    q = jax.random.normal(jax.random.key(0), (B, KV, G, Dh))
    p = jax.nn.softmax(jax.random.normal(jax.random.key(2), (B, KV, G, S)), axis=-1)
    k_sd = [jax.random.normal(jax.random.key(10 + i), (B, KV, S, Dh)) for i in range(buffers)]
    k_ds = [jnp.swapaxes(k, -1, -2) for k in k_sd]
    f_sd = jax.jit(lambda q, ks: [jnp.einsum("bkmd,bksd->bkms", q, k) for k in ks])
    f_ds = jax.jit(lambda q, ks: [jnp.einsum("bkmd,bkds->bkms", q, k) for k in ks])
    f_pv = jax.jit(lambda p, vs: [jnp.einsum("bkms,bksd->bkmd", p, v) for v in vs])
    # Keys stored as bfloat16, the product in bfloat16 with float32 accumulation (half the bytes).
    k_bf = [k.astype(jnp.bfloat16) for k in k_ds]
    f_bf = jax.jit(lambda q, ks: [jnp.einsum("bkmd,bkds->bkms", q.astype(jnp.bfloat16), k,
                                             preferred_element_type=jnp.float32) for k in ks])
    out = {}
    for name, f, a, k in (("bksd", f_sd, q, k_sd), ("bkds", f_ds, q, k_ds), ("pv", f_pv, p, k_sd),
                          ("bkds_bf16", f_bf, q, k_bf)):
        jax.block_until_ready(f(a, k))
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            jax.block_until_ready(f(a, k))
            ts.append(time.perf_counter() - t)
        out[name] = min(ts) * 1e3 / buffers
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--products-only", action="store_true", help="skip the end-to-end A/B")
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
    if args.products_only:
        variants = {}
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
    # The product the "bkds" layout is for, alone, at this model's and SmolLM2's decode shapes: one buffer
    # (in cache), then as many as the keys and values of all layers (a decode step's bytes, from memory).
    G = cfg.num_heads // cfg.num_kv_heads
    for label, shape, layers in (("small", (B, cfg.num_kv_heads, G, S, cfg.head_dim), cfg.num_layers),
                                 ("SmolLM2-135M", (B, 3, 3, S, 64), 30)):
        mb = np.prod(shape[:2] + shape[3:]) * 4 / 2**20
        for n in (1, 2 * layers):
            ms = qk_product(*shape, buffers=n)
            print(f"q.K^T alone, {label} [B, KV, G, S, Dh]={list(shape)}, {n} key buffer(s) of {mb:.1f} MB: "
                  f"keys [S, Dh] {ms['bksd']:.3f} ms, keys [Dh, S] {ms['bkds']:.3f} ms "
                  f"({ms['bksd'] / ms['bkds']:.2f}x), keys [Dh, S] in bfloat16 {ms['bkds_bf16']:.3f} ms; "
                  f"P.V {ms['pv']:.3f} ms", flush=True)


if __name__ == "__main__":
    main()
