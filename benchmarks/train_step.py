"""One supervised training step (forward + backward + Adam) of the scratch model, side by side with
transformers' PyTorch LlamaForCausalLM of the same shape, at the sequence shapes of the warm start
and the PPO update.

    python benchmarks/train_step.py            # both attention paths of ours, and torch
    python benchmarks/train_step.py --no-torch

"blocks" is the default training forward (causal attention by query blocks of 128, skipping the
masked upper triangle); "full" is the plain masked T x T attention, as before. Tokens/s count every
position of the batch (the loss is next-token cross-entropy on all of them).
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
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from wmact_jax.models import ModelConfig, Transformer  # noqa: E402
from wmact_jax import ppo  # noqa: E402
from wmact_jax.models import llama  # noqa: E402

SHAPES = ((32, 128), (16, 512), (8, 1024))
MODEL = dict(vocab_size=1376, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4, num_kv_heads=2)


def _time(fn, reps: int) -> float:
    fn()  # compile / warm up
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def jax_step_seconds(B: int, T: int, chunk: int | None, reps: int) -> float:
    old = llama.ATTENTION_CHUNK
    llama.ATTENTION_CHUNK = chunk if chunk else 1 << 30  # "full": never split
    try:
        mc = ModelConfig(**MODEL, tie_word_embeddings=True, max_position_embeddings=2048)
        gd, p = nnx.split(Transformer(mc, rngs=nnx.Rngs(0)))
        opt = optax.adam(1e-3)
        s = opt.init(p)
        x = jnp.asarray(np.random.default_rng(0).integers(0, MODEL["vocab_size"], (B, T)), jnp.int32)

        def loss(p):  # the warm start's loss: next-token log-probs as PPO computes them
            lp, _, _ = ppo.token_logprobs_and_values(llama.apply(gd, p, x).logits, jnp.zeros(x.shape), x)
            return -jnp.mean(lp[:, 1:])

        @jax.jit
        def step(p, s):
            l, g = jax.value_and_grad(loss)(p)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s, l

        state = [p, s]

        def run():
            state[0], state[1], l = step(*state)
            l.block_until_ready()

        return _time(run, reps)
    finally:
        llama.ATTENTION_CHUNK = old


def torch_step_seconds(B: int, T: int, reps: int) -> float:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=MODEL["vocab_size"], hidden_size=MODEL["hidden_size"],
                      intermediate_size=MODEL["intermediate_size"], num_hidden_layers=MODEL["num_layers"],
                      num_attention_heads=MODEL["num_heads"], num_key_value_heads=MODEL["num_kv_heads"],
                      tie_word_embeddings=True, max_position_embeddings=2048)
    m = LlamaForCausalLM(cfg)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    x = torch.randint(0, MODEL["vocab_size"], (B, T))

    def run():
        loss = m(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    return _time(run, reps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch_info = "torch not run"
    if not args.no_torch:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        torch_info = f"torch {torch.__version__} ({torch.get_num_threads()} threads, sdpa attention)"
    print(f"# jax {jax.__version__} devices={jax.devices()} cpus={os.cpu_count()} {torch_info} "
          f"python {platform.python_version()}")
    print(f"# model: scratch Llama {MODEL}, float32, tied embeddings; step = loss + grad + Adam; mean of "
          f"{args.reps} after compilation")
    head = f"{'batch x len':>12} | {'ours blocks':>12} {'ours full':>10} {'torch':>10} | {'blocks/full':>11} {'torch/blocks':>12}"
    print(head + "\n" + "-" * len(head))
    for B, T in SHAPES:
        blocks = jax_step_seconds(B, T, llama.ATTENTION_CHUNK, args.reps)
        full = jax_step_seconds(B, T, None, args.reps)
        tok = lambda s: f"{B * T / s / 1e3:.1f}k/s"
        t = torch_step_seconds(B, T, args.reps) if not args.no_torch else float("nan")
        print(f"{B:>5} x {T:<5} | {tok(blocks):>12} {tok(full):>10} {tok(t) if t == t else '-':>10} | "
              f"{full / blocks:>10.2f}x {f'{blocks / t:.2f}x' if t == t else '-':>12}")
    print("# tokens/s of training (higher is better); blocks/full > 1: the block attention is faster; "
          "torch/blocks > 1: torch is faster")


if __name__ == "__main__":
    main()
