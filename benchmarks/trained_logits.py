"""The LM head where the losses read it (`model.trained_logits_only`, the default) against at every position:
the warm start's training step and the PPO update, on an experiment suite's shapes.

    python benchmarks/trained_logits.py                        # maze5 of the quick suite
    python benchmarks/trained_logits.py --experiment sokoban_std --suite full

Warm start: the suite's demonstrations (`--levels` levels of them, batched by length as the warm start
does), one jitted step (forward, backward, AdamW) at batch `warmstart.batch_size` per length bucket; the
mean over buckets is weighted as the warm start draws them (by answer tokens). PPO: `Trainer._update`
(epochs x minibatches of the suite) on a batch of the rollout's shape whose every episode has its whole
turn budget of model tokens (the LM head's cost depends on the shapes, not on the tokens), at each of the update's
width buckets. Both sides alternate repeat by repeat (this machine's speed
drifts); each figure is the median of `--repeats`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402


def matmul_gflops() -> float:
    a = jnp.ones((1024, 1024), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(10):
        f(a).block_until_ready()
    return 2 * 1024 ** 3 / ((time.perf_counter() - t) / 10) / 1e9


def trainers(args):
    from experiments.run import experiment_config
    from wmact_jax import config_check
    from wmact_jax.train import Trainer

    out = {}
    for on in (True, False):
        c = experiment_config(args.experiment, args.suite, {}, method="interactive", seed=0)
        c.warmstart.enabled = False
        c.warmstart.num_levels = args.levels
        c.model.trained_logits_only = on
        out[on] = Trainer(config_check.prepare_config(c, ()), "")
    return out


def alternate(fns: dict, repeats: int) -> dict:
    """{name: fn}: each run once to compile, then `repeats` rounds of one call each -> {name: median s}."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def warmstart_steps(tr: dict, repeats: int):
    from wmact_jax.warmstart import ANSWER, all_demos, bucket_arrays, demo_loss_fn, length_buckets

    t = tr[True]
    c = t.config.warmstart
    toks, masks, _, _ = all_demos(t)
    B = min(int(c.batch_size), len(toks))
    groups = length_buckets([len(x) for x in toks], int(c.length_bucket), B)
    params = t._init_params["policy"]
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    rows, weights = [], []
    print(f"warm start: {len(toks)} demonstrations, batch {B}")
    print(f"{'width':>6} {'demos':>6} {'answer tok/row':>14} {'k':>4} | {'every position ms':>17} {'trained only ms':>15} "
          f"{'saved':>6}")
    for w, idx in sorted(groups.items()):
        sel = np.random.default_rng(0).choice(len(idx), B, replace=len(idx) < B)
        tk, mk, k = bucket_arrays(toks, masks, [idx[i] for i in sel], w, t.pad_id, float(c.state_loss))
        fns = {}
        for on in (True, False):
            loss_fn = demo_loss_fn(t.graphdef, float(c.state_loss), tr[on].forward_options(grad=True))

            @jax.jit
            def step(p, s, loss_fn=loss_fn, kk=k if on else 0):
                (_, (nll, _)), g = jax.value_and_grad(lambda q: loss_fn(q, tk, mk, kk), has_aux=True)(p)
                u, s = opt.update(g, s, p)
                return optax.apply_updates(p, u), s, nll

            state = opt.init(params)
            fns[on] = (lambda step=step, state=state: jax.block_until_ready(step(params, state)))
        res = alternate(fns, repeats)
        answer = float((mk == ANSWER).sum(axis=1).mean())
        print(f"{w:>6} {len(idx):>6} {answer:>14.1f} {k:>4} | {res[False] * 1e3:>17.1f} {res[True] * 1e3:>15.1f} "
              f"{1 - res[True] / res[False]:>6.1%}")
        rows.append(res)
        weights.append(float((np.asarray([m for i in idx for m in masks[i]]) == ANSWER).sum()))
    p = np.asarray(weights) / sum(weights)
    off = sum(pi * r[False] for pi, r in zip(p, rows))
    on = sum(pi * r[True] for pi, r in zip(p, rows))
    print(f"{'mean as drawn':>35} | {off * 1e3:>17.1f} {on * 1e3:>15.1f} {1 - on / off:>6.1%}")


def ppo_updates(tr: dict, repeats: int):
    from wmact_jax import ppo as ppo_lib

    t = tr[True]
    rc = t.config.rollout
    E = int(rc.levels_per_iteration) * int(rc.group_size)
    S = int(rc.context_len)
    T, L = int(rc.max_turn_tokens), t.max_turns
    print(f"\nPPO update: {E} episodes, {t.ppo_cfg.epochs} epochs x {t.ppo_cfg.minibatches} minibatches, {L} turns x {T} "
          f"tokens (max_trained {t.ppo_cfg.max_trained}), critic {t.config.model.critic}")
    print(f"{'width':>6} {'model tok/row':>13} | {'every position ms':>17} {'trained only ms':>15} {'saved':>6}")
    rng = np.random.default_rng(0)
    for width in (t.ppo_cfg.width_buckets or (S,)):
        turns = min(L, width // (T + 1) - 1) if width > 2 * (T + 1) else 1
        gap = (width - turns * T) // (turns + 1)  # the prompt, then each turn's feedback
        mask = np.zeros((E, S), bool)
        for i in range(turns):
            mask[:, gap + i * (T + gap):gap + i * (T + gap) + T] = True
        tokens = rng.integers(0, t.model_config.vocab_size, (E, S)).astype(np.int32)
        data = dict(tokens=jnp.asarray(tokens), mask=jnp.asarray(mask),
                    logprobs=jnp.asarray(-rng.random((E, S)) * mask, jnp.float32),
                    values=jnp.zeros((E, S), jnp.float32),
                    advantages=jnp.asarray(rng.normal(size=(E, S)) * mask, jnp.float32),
                    returns=jnp.asarray(rng.normal(size=(E, S)) * mask, jnp.float32))
        fns = {}
        for on in (True, False):
            st = ppo_lib.TrainState.create(tr[on]._init_params, tr[on].optimizer)
            upd = jax.jit(tr[on]._update)
            fns[on] = (lambda upd=upd, st=st: jax.block_until_ready(upd(st, data, jax.random.PRNGKey(0))))
        res = alternate(fns, repeats)
        print(f"{width:>6} {int(mask.sum(1).max()):>13} | {res[False] * 1e3:>17.1f} {res[True] * 1e3:>15.1f} "
              f"{1 - res[True] / res[False]:>6.1%}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="maze5")
    ap.add_argument("--suite", default="quick")
    ap.add_argument("--levels", type=int, default=300, help="warm start levels whose demonstrations are timed")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-warmstart", action="store_true")
    ap.add_argument("--skip-ppo", action="store_true")
    args = ap.parse_args()
    print(f"setup: {args.experiment} of the {args.suite} suite; jax {jax.__version__}, {jax.devices()[0].platform}, "
          f"{os.cpu_count()} cores, python {platform.python_version()}; 1024^3 matmul "
          f"{matmul_gflops():.0f} GFLOP/s; load {'%.2f %.2f %.2f' % os.getloadavg()}")
    tr = trainers(args)
    if not args.skip_warmstart:
        warmstart_steps(tr, args.repeats)
    if not args.skip_ppo:
        ppo_updates(tr, args.repeats)


if __name__ == "__main__":
    main()
