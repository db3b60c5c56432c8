"""Sampling throughput: wmact_jax's jitted sampler vs transformers' PyTorch `generate`, same weights.

    python benchmarks/generate.py            # small model + SmolLM2-135M, batch 1/16/64 (a few minutes)
    python benchmarks/generate.py --quick    # batch 1 and 16, fewer tokens

For each model and batch size: new tokens/s of greedy sampling end to end (prefill + decode) for both
frameworks at the same prompt length and number of new tokens (no early stop: EOS disabled), plus our
prefill tokens/s and the achieved GFLOP/s of prefill and decode against a measured float32 matmul peak.
The torch reference is LlamaForCausalLM built from *our* HF-named tensors (use_cache=True, 2 threads).
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
from wmact_jax.models import KVCache, ModelConfig, Transformer  # noqa: E402


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """Best-of-reps GFLOP/s of an n x n float32 jnp matmul (the machine's practical peak)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def flops_per_token(c: ModelConfig, context: float, lm_head: bool = True) -> float:
    """Forward FLOPs per token: 2 x matmul params (+ the LM head's if `lm_head`) + attention at
    `context` keys. The prefill pays the LM head once per row (`logits_at`), not per prompt token."""
    d, f, h, kv, hd = c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim
    layer = 2 * (d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f)
    attn = 4 * h * hd * context
    return c.num_layers * (layer + attn) + (2 * d * c.vocab_size if lm_head else 0)


def small_model(dtype="float32"):
    cfg = ModelConfig(vocab_size=2048, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=8,
                      num_kv_heads=4, tie_word_embeddings=True, max_position_embeddings=2048, dtype=dtype,
                      param_dtype=dtype)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    return "small", cfg, model


def smollm_model(dtype="float32"):
    from wmact_jax.checkpoints import load_pretrained

    cfg, model, _ = load_pretrained("smollm2-135m-instruct", dtype, tokenizer=False)
    return "SmolLM2-135M", cfg, model


def torch_reference(cfg: ModelConfig, model):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from wmact_jax.models import hf_names

    torch.set_num_threads(2)
    hf = cfg.to_hf_dict()
    hf.pop("architectures", None)
    hf.pop("model_type", None)
    tcfg = LlamaConfig(**hf)
    tm = LlamaForCausalLM(tcfg).eval()
    tensors = hf_names.to_hf_tensors(cfg, nnx.state(model, nnx.Param))
    sd = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in tensors.items()}
    missing, unexpected = tm.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or [k for k in unexpected if not k.startswith("value_head")]:
        raise RuntimeError(f"torch load: missing {missing}, unexpected {unexpected}")
    tm.tie_weights() if cfg.tie_word_embeddings else None
    return tm


def bench_jax(cfg, split, prompts: np.ndarray, new: int, cache_len: int, buckets, cache_dtype=None,
              repeats: int = 1):
    """Seconds for prefill alone and for prefill + decode of `new` tokens (greedy, no EOS); best of `repeats`."""
    B, P = prompts.shape
    lengths = np.full((B,), P, np.int32)
    key = jax.random.key(0)
    greedy = sampler.SamplingParams.greedy()

    def run_prefill():
        cache = KVCache.init(cfg, B, cache_len, cache_dtype)
        ll, cache = sampler.prefill(split, prompts, lengths, cache, attend_buckets=buckets)
        return ll, cache

    def run_all():
        ll, cache = run_prefill()
        out = sampler.decode(split, cache, ll, key, max_new_tokens=new, params=greedy, attend_buckets=buckets)
        return out.tokens.block_until_ready()

    run_all()  # compile
    t_pre = min(_timed(lambda: jax.block_until_ready(run_prefill())) for _ in range(2))
    t_all = min(_timed(run_all) for _ in range(repeats))
    return t_pre, t_all, np.asarray(run_all())


def bench_torch(tm, prompts: np.ndarray, new: int, repeats: int = 1):
    """Seconds of transformers' `generate` of `new` tokens (greedy, no EOS), best of `repeats`."""
    import torch

    ids = torch.from_numpy(prompts.astype(np.int64))
    kw = dict(do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0,
              attention_mask=torch.ones_like(ids))
    with torch.inference_mode():
        tm.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)  # warm-up
        dt = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            out = tm.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
            dt = min(dt, time.perf_counter() - t)
    return dt, out[:, prompts.shape[1]:].numpy()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 1 and 16 only, 16 new tokens")
    ap.add_argument("--models", default="small,smollm", help="comma list of: small, smollm")
    ap.add_argument("--batches", default=None, help="comma list (default 1,16,64; quick 1,16)")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=None, help="default 64 (quick 16)")
    ap.add_argument("--cache-len", type=int, default=None, help="KV cache length (default prompt+new, /64)")
    ap.add_argument("--bucket", type=int, default=256, help="attention window bucket base (0 = off)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per side and shape; the best counts "
                    "(torch's figure varied by up to 1.25x between runs on a quiet machine, ours by 1%%)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="our params/compute/cache dtype (torch stays float32)")
    ap.add_argument("--cache-dtype", default=None, choices=("float32", "bfloat16"),
                    help="our KV cache's dtype (default: --dtype); a bfloat16 cache under float32 compute runs "
                         "the attention products in bfloat16 with float32 accumulation")
    args = ap.parse_args(argv)
    batches = [int(b) for b in (args.batches or ("1,16" if args.quick else "1,16,64")).split(",")]
    new = args.new_tokens or (16 if args.quick else 64)
    P = args.prompt_len
    cache_len = args.cache_len or -(-(P + new) // 64) * 64
    buckets = sampler.attend_buckets_for(cache_len, args.bucket or None)
    threads = "torch 2"
    if not args.no_torch:
        import torch

        torch.set_num_threads(2)
        threads = f"torch {torch.get_num_threads()} (torch {torch.__version__})"
    peak = matmul_peak()
    print(f"# jax {jax.__version__} devices={jax.devices()} cpus={os.cpu_count()} {threads} "
          f"python {platform.python_version()}")
    layout = KVCache.init(ModelConfig.tiny(8), 1, 1).layout
    print(f"# prompt_len={P} new_tokens={new} cache_len={cache_len} attend_buckets={buckets} greedy, EOS off, "
          f"jax dtype={args.dtype} (KV cache {args.cache_dtype or args.dtype}, layout {layout}), torch float32; "
          f"timings include cache allocation and prefill on both sides, best of {args.repeats} runs per side")
    print(f"# float32 matmul peak (2048^3 jnp): {peak:.1f} GFLOP/s")
    hdr = (f"{'model':<13}{'params':>8}{'batch':>6} | {'jax tok/s':>10}{'torch tok/s':>12}{'speedup':>8}"
           f" | {'prefill tok/s':>13}{'prefill GF/s':>13}{'decode GF/s':>12}{'%peak':>7}{'same':>6}{'ceiling':>8}")
    print(hdr)
    print("-" * len(hdr))
    makers = {"small": small_model, "smollm": smollm_model}
    for name in args.models.split(","):
        label, cfg, model = makers[name](args.dtype)
        split = nnx.split(model)
        tm = None if args.no_torch else torch_reference(cfg, model)
        nparams = cfg.num_params()
        rng = np.random.default_rng(0)
        for B in batches:
            prompts = rng.integers(3, cfg.vocab_size, size=(B, P)).astype(np.int32)
            t_pre, t_all, jtok = bench_jax(cfg, split, prompts, new, cache_len, buckets, args.cache_dtype,
                                              args.repeats)
            jax_tps = B * new / t_all
            pre_flops = B * P * flops_per_token(cfg, P / 2, lm_head=False) + B * 2 * cfg.hidden_size * cfg.vocab_size
            dec_flops = B * new * flops_per_token(cfg, P + new / 2)
            pre_gfs = pre_flops / t_pre / 1e9
            dec_gfs = dec_flops / max(t_all - t_pre, 1e-9) / 1e9
            t_floor = (pre_flops + dec_flops) / (peak * 1e9)  # every FLOP at the measured matmul peak
            if tm is not None:
                t_torch, ttok = bench_torch(tm, prompts, new, args.repeats)
                torch_tps = B * new / t_torch
                same = f"{np.mean(jtok == ttok):.0%}"
                tcol, scol = f"{torch_tps:12.1f}", f"{jax_tps / torch_tps:7.2f}x"
                ccol = f"{t_torch / t_floor:7.2f}x"
            else:
                tcol, scol, same, ccol = f"{'-':>12}", f"{'-':>8}", "-", f"{'-':>8}"
            print(f"{label:<13}{nparams / 1e6:7.1f}M{B:6d} | {jax_tps:10.1f}{tcol}{scol} | "
                  f"{B * P / t_pre:13.0f}{pre_gfs:13.1f}{dec_gfs:12.1f}{dec_gfs / peak:7.0%}{same:>6}{ccol}", flush=True)
    print("# 'same' = fraction of greedy tokens identical to torch (float round-off may flip near-ties)")
    print("# 'ceiling' = the speedup over torch if every FLOP of our prefill and decode ran at the matmul peak")


if __name__ == "__main__":
    main()
