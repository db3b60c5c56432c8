"""Where a decode step's (or a prefill's) time goes: a jax.profiler trace, summed per XLA op.

    python benchmarks/profile_decode.py                     # small model, batch 64, 8 steps
    python benchmarks/profile_decode.py --model smollm --steps 4
    python benchmarks/profile_decode.py --model smollm --steps 4 --stacked   # the stacked cache + layer scan
    python benchmarks/profile_decode.py --model smollm --prefill             # the prefill instead (ms per call)

Prefill runs untraced; then `--steps` greedy decode steps run under `jax.profiler` and every XLA:CPU
op of the trace is summed per step and grouped by what it computes (the HLO op's output shape and the
jax op it came from, e.g. `f32[64,3,3,128] bkmd,bkds->bkms/dot_general`). Times are per step; ops on
two threads may overlap, so the rows can add up to more than the step. With `--prefill`, one prefill
of the prompts is traced instead and the times are per call.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from wmact_jax import sampler  # noqa: E402
from wmact_jax.models import KVCache  # noqa: E402

from benchmarks.generate import small_model, smollm_model  # noqa: E402
from benchmarks.xla_profile import op_times, print_table  # noqa: E402


# The static arguments of the jitted functions profiled (declared once, in the sampler's jit decorators).
STATIC = {"_prefill_split": sampler.PREFILL_STATIC, "_decode_split": sampler.DECODE_STATIC}


def run_compiled(jitted: str):
    """Route `sampler.<jitted>` through one ahead-of-time compiled executable, built from the arguments of
    its first call; returns the executable's holder ({"compiled": jax.stages.Compiled} after a call) and
    a function that restores the jitted one.

    So the program profiled is compiled once and its HLO (`.as_text()`: the fused ops' names the profile
    reports, their metadata the jax op each came from) is that very program's, not a look-alike lowered
    from hand-built arguments.
    """
    original, holder = getattr(sampler, jitted), {}
    names = list(inspect.signature(original).parameters)

    def through_compiled(*a, **k):
        if "compiled" not in holder:
            holder["compiled"] = original.lower(*a, **k).compile()
        dynamic = [v for name, v in zip(names, a) if name not in STATIC[jitted]]
        return holder["compiled"](*dynamic, **{n: v for n, v in k.items() if n not in STATIC[jitted]})

    setattr(sampler, jitted, through_compiled)
    return holder, lambda: setattr(sampler, jitted, original)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small", choices=("small", "smollm"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--stacked", action="store_true", help="stacked [layers, ...] cache instead of the default")
    ap.add_argument("--cache-dtype", default=None, choices=("float32", "bfloat16"), help="default: the model's")
    ap.add_argument("--prefill", action="store_true", help="profile one prefill of the prompts (ms per call)")
    args = ap.parse_args(argv)
    label, cfg, model = (small_model if args.model == "small" else smollm_model)()
    split = nnx.split(model)
    B, P, N = args.batch, args.prompt_len, args.steps
    S = -(-(P + N) // 64) * 64
    prompts = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (B, P)), jnp.int32)
    lengths = jnp.full((B,), P, jnp.int32)
    greedy = sampler.SamplingParams.greedy()

    def prefilled():
        cache = KVCache.init(cfg, B, S, args.cache_dtype, per_layer=False if args.stacked else None)
        ll, cache = sampler.prefill(split, prompts, lengths, cache, attend_buckets=(S,))
        return jax.block_until_ready((ll, cache))

    def decode(ll, cache):
        out = sampler.decode(split, cache, ll, jax.random.key(0), max_new_tokens=N, params=greedy,
                             attend_buckets=(S,))
        return out.tokens.block_until_ready()

    if args.prefill:  # one call: the per-op times are per prefill, not per step
        N = 1
        holder, restore = run_compiled("_prefill_split")
        prefilled()  # compiles
        t = time.perf_counter()
        prefilled()
        step_ms = (time.perf_counter() - t) * 1e3
    else:
        holder, restore = run_compiled("_decode_split")
        decode(*prefilled())  # compiles
        ll, cache = prefilled()
        t = time.perf_counter()
        decode(ll, cache)
        step_ms = (time.perf_counter() - t) / N * 1e3
    ll, cache = (None, None) if args.prefill else prefilled()
    ms, count = op_times(lambda: prefilled() if args.prefill else decode(ll, cache),
                         holder["compiled"].as_text(), calls=N)
    restore()
    print(f"# jax {jax.__version__} devices={jax.devices()} cpus={os.cpu_count()}")
    c1 = KVCache.init(cfg, 1, 1, args.cache_dtype, per_layer=False if args.stacked else None)
    print(f"# {label}: {cfg.num_layers} layers, batch {B}, prompt {P}, cache {S} ({c1.layout}, "
          f"{'per layer' if c1.per_layer else 'stacked'}), "
          + (f"one prefill of {B} x {P} tokens; untraced {step_ms:.1f} ms" if args.prefill else
             f"{N} greedy decode steps; untraced step {step_ms:.1f} ms"))
    print_table(ms, count, args.top, "call" if args.prefill else "step")

if __name__ == "__main__":
    main()
