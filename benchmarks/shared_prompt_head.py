"""The prompt's common head computed once per batch (`rollout.share_prompt_head`) against once per episode.

Every episode's prompt starts with the same tokens: the chat template and the system prompt (the rules).
With the option on, the rollout runs them through the model once, at batch 1, and copies their keys and
values to every episode's cache, and the PPO update's forwards (policy and critic) run them once per
minibatch; off, each of the E episodes does. This script times, for two Trainers that differ only in the
option (same model, params, levels, keys), the first prefill alone, the whole in-graph rollout and one
PPO update on the same batch, alternating on and off round by round so a machine whose speed drifts
favours neither.

    python benchmarks/shared_prompt_head.py                      # scratch model, Sokoban 6x6, full prompt
    python benchmarks/shared_prompt_head.py --prompt minimal     # the experiment suites' short prompt
    python benchmarks/shared_prompt_head.py --smollm2            # SmolLM2-135M, 16 episodes (slow on CPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def build(args, share: bool):
    from configs.base import get_config
    from wmact_jax.config_check import prepare_config
    from wmact_jax.train import Trainer

    c = get_config()
    c.env.name = args.env
    c.warmstart.enabled = False
    c.rollout.system_prompt = args.prompt
    c.rollout.levels_per_iteration, c.rollout.group_size = args.levels, args.group
    c.rollout.share_prompt_head = share
    c.anneal.l0 = args.turns
    if args.smollm2:
        c.model.source, c.model.path, c.model.dtype = "pretrained", "smollm2-135m-instruct", "float32"
    return Trainer(prepare_config(c))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="Sokoban-6x6-1")
    ap.add_argument("--prompt", default="full", help="rollout.system_prompt: full | compact | minimal")
    ap.add_argument("--levels", type=int, default=16)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--turns", type=int, default=4, help="turn cap (the untrained model uses every turn)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smollm2", action="store_true", help="SmolLM2-135M-Instruct instead of the scratch model")
    args = ap.parse_args()
    if args.smollm2 and args.levels == 16:
        args.levels, args.group = 4, 4

    from wmact_jax.sampler import prefill_fn, prefill_shared_head_fn

    trainers = {True: build(args, True), False: build(args, False)}
    tr = trainers[True]
    conv, rc = tr.conv, tr.rollout_cfg
    E, S = rc.num_episodes, rc.context_len
    state = tr.init_state(jax.random.PRNGKey(0))
    params = state.ppo.params
    H = len(conv.prompt_head)
    c = tr.config
    print(f"# jax {jax.__version__} devices={jax.devices()} cpus={os.cpu_count()} python {platform.python_version()}")
    print(f"# {'SmolLM2-135M' if args.smollm2 else 'scratch'} model ({tr.model_config.num_layers} layers, hidden "
          f"{tr.model_config.hidden_size}, critic '{c.model.critic}'), {args.env}, system prompt '{args.prompt}': "
          f"head {H} tokens of a prompt <= {conv.max_prompt_len}; {E} episodes, turn cap {args.turns}, context {S}, "
          f"untrained (every turn runs); PPO {c.ppo.epochs} epochs x {c.ppo.minibatches} minibatches; "
          f"load {os.getloadavg()[0]:.2f}")

    run, upd = {}, {}
    for share, t in trainers.items():
        run[share] = jax.jit(lambda p, k, t=t: t.rollout.run(p, k, args.turns, t.sampling)[0])

        def update(ppo_state, batch, key, t=t):
            data, _ = t._ppo_batch(ppo_state.params, None, batch, t.switches)
            new, m = t._update(ppo_state, data, key)
            return new.params, m

        upd[share] = jax.jit(update)

    # The first prefill alone, on the prompts of one batch of levels.
    ro = tr.rollout
    grids = jax.vmap(tr.env.render_glyphs)(ro.reset_levels(jax.random.PRNGKey(1)))
    prompt, plen = jax.vmap(conv.initial_prompt, in_axes=(0, None))(grids, jnp.int32(args.turns))

    def apply_with(p):
        p = ro.prepare_params(p)
        return lambda t, ca, n, logits_at=None: ro.apply_fn(p, t, ca, n, logits_at=logits_at)

    pre = {
        True: jax.jit(lambda p: prefill_shared_head_fn(apply_with(p), conv.prompt_head, prompt[:, H:], plen - H,
                                                       ro.init_cache, S)[0]),
        False: jax.jit(lambda p: prefill_fn(apply_with(p), prompt, plen, ro.init_cache(E, S))[0]),
    }
    key = jax.random.PRNGKey(7)
    batch = run[True](params, jax.random.PRNGKey(100))
    for s in (True, False):  # compile
        jax.block_until_ready(pre[s](params))
        jax.block_until_ready(run[s](params, jax.random.PRNGKey(0)))
        jax.block_until_ready(upd[s](state.ppo, batch, key))
    same_logits = np.allclose(np.asarray(pre[True](params)), np.asarray(pre[False](params)), atol=1e-3)
    p_on, m_on = upd[True](state.ppo, batch, key)
    p_off, m_off = upd[False](state.ppo, batch, key)
    dp = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(p_on), jax.tree.leaves(p_off)))
    times = {(w, s): [] for w in ("prefill", "rollout", "update") for s in (True, False)}
    for r in range(args.rounds):
        for s in (True, False):
            t0 = time.perf_counter()
            jax.block_until_ready(pre[s](params))
            times[("prefill", s)].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            jax.block_until_ready(run[s](params, jax.random.PRNGKey(100 + r)))
            times[("rollout", s)].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            jax.block_until_ready(upd[s](state.ppo, batch, key))
            times[("update", s)].append(time.perf_counter() - t0)
        print(f"round {r}: " + "; ".join(
            f"{w} shared {times[(w, True)][-1]:.3f}s / per episode {times[(w, False)][-1]:.3f}s"
            for w in ("prefill", "rollout", "update")))
    best = {k: min(v) for k, v in times.items()}
    print(f"best of {args.rounds} (shared head vs per episode):")
    for w, what in (("prefill", "first prefill"), ("rollout", "whole rollout"), ("update", "PPO update")):
        print(f"  {what:14s} {best[(w, True)]:7.3f}s vs {best[(w, False)]:7.3f}s  "
              f"({best[(w, False)] / best[(w, True)]:.2f}x)")
    print(f"# same last logits after the first prefill (1e-3): {same_logits}; largest parameter difference after "
          f"the update on the same batch: {dp:.1e}; policy loss {float(m_on['policy_loss']):.6f} vs "
          f"{float(m_off['policy_loss']):.6f}")
    print(f"# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
