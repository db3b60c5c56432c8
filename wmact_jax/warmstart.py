"""Supervised warm start on oracle demonstrations, in the agent's own conversation format.

A model trained from scratch cannot find the answer format, let alone a solution, by sampling.
The warm start plays held-out levels with the oracle and writes each game as the exact token
sequence the in-graph rollout would produce (`Conversation.host_tokens`), then fits the model's
answer tokens by cross-entropy. Demonstrations are deliberately imperfect so that RL has something
to improve: a mix of one-action turns and multi-action plans (`plan_fraction`), and random detour
actions (`noise`) after which the oracle re-plans from the new state.
"""

from __future__ import annotations

import time
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from envs_jax.oracles import optimal_actions
from wmact_jax import ppo as ppo_lib
from wmact_jax import prompts


def _single_step(env, params):
    return jax.jit(lambda k, s, a: env.step_env(k, s, a, params))


def make_demos(trainer, num_levels: int, seed: int, max_turns: int, max_actions_per_turn: int,
               plan_fraction: float, noise: float) -> Tuple[List[List[int]], List[List[int]], Dict[str, float]]:
    """-> (token lists, loss-mask lists, stats). Levels come from a key stream disjoint from RL's."""
    env, ep, conv, tok = trainer.env, trainer.env_params, trainer.conv, trainer.tokenizer
    rng = np.random.default_rng(seed)
    keys = jax.random.split(jax.random.PRNGKey(7_000_003 + seed), num_levels)
    _, states = jax.jit(jax.vmap(env.reset_env, in_axes=(0, None)))(keys, ep)
    states = jax.device_get(states)
    step = _single_step(env, ep)
    render = jax.jit(env.render_glyphs)
    key = jax.random.PRNGKey(seed)
    out_tok, out_mask = [], []
    stats = {"levels": 0, "kept": 0, "unsolved": 0, "too_long": 0, "turns": 0.0, "actions": 0.0}
    K = max_actions_per_turn
    for i in range(num_levels):
        stats["levels"] += 1
        state = jax.tree.map(lambda x: x[i], states)
        plan = optimal_actions(env, state, ep)
        if not plan:
            stats["unsolved"] += 1
            continue
        grids = [np.asarray(render(state))]
        answers, rewards, valid = [], [], []
        solved, n_actions = False, 0
        multi = rng.random() < plan_fraction
        while not solved and len(answers) < max_turns and plan is not None:
            detour = rng.random() < noise
            if detour:
                chunk = [int(rng.integers(env.num_actions))]
            elif multi or max_turns == 1:
                k = len(plan) if max_turns == 1 else int(rng.integers(1, K + 1))
                chunk = plan[:k]
            else:
                chunk = plan[:1]
            chunk = chunk[:K]
            r_turn, done = 0.0, False
            for a in chunk:
                key, sub = jax.random.split(key)
                _, state, r, d, info = step(sub, state, jnp.int32(a))
                r_turn += float(r)
                n_actions += 1
                if bool(d):
                    solved = bool(info.success)
                    done = True
                    break
            answers.append(prompts.answer_text([env.action_names[a] for a in chunk]))
            rewards.append(r_turn)
            valid.append(True)
            grids.append(np.asarray(render(state)))
            if done:
                break
            plan = plan[len(chunk):] if not detour else optimal_actions(env, state, ep)
        if not solved:
            stats["unsolved"] += 1
            continue
        ids, mask = conv.host_tokens(grids, [tok.encode(a, add_special_tokens=False) for a in answers], rewards, valid)
        if len(ids) > trainer.rollout_cfg.context_len:
            stats["too_long"] += 1
            continue
        out_tok.append(ids)
        out_mask.append(mask)
        stats["kept"] += 1
        stats["turns"] += len(answers)
        stats["actions"] += n_actions
    if stats["kept"]:
        stats["turns"] /= stats["kept"]
        stats["actions"] /= stats["kept"]
    return out_tok, out_mask, stats


def _pad(rows: List[List[int]], width: int, value: int = 0) -> np.ndarray:
    arr = np.full((len(rows), width), value, np.int32)
    for i, r in enumerate(rows):
        arr[i, : len(r)] = r
    return arr


def run_warmstart(trainer, params, log=None):
    """Fits the policy to demonstrations; returns (params, metrics). The critic is left as is."""
    log = log or (lambda msg: print(msg, flush=True))
    c = trainer.config.warmstart
    t0 = time.perf_counter()
    toks, masks, stats = make_demos(
        trainer, int(c.num_levels), int(trainer.config.seed), trainer.max_turns,
        int(trainer.config.rollout.max_actions_per_turn), float(c.plan_fraction), float(c.noise))
    if not toks:
        raise RuntimeError(f"warm start: no usable demonstration ({stats})")
    width = int(np.ceil(max(len(t) for t in toks) / 64) * 64)
    tokens = jnp.asarray(_pad(toks, width, trainer.pad_id))
    mask = jnp.asarray(_pad(masks, width, 0).astype(bool))
    t_demo = time.perf_counter() - t0
    log(f"warm start: {stats['kept']} demonstrations from {stats['levels']} levels "
        f"({stats['turns']:.1f} turns, {stats['actions']:.1f} actions on average; width {width} tokens) "
        f"in {t_demo:.1f}s")

    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(optax.warmup_cosine_decay_schedule(0.0, float(c.lr), 20, int(c.steps), float(c.lr) * 0.1)))
    policy = params["policy"]
    opt_state = opt.init(policy)
    graphdef = trainer.graphdef
    from wmact_jax.models.llama import apply as model_apply

    def loss_fn(p, tk, m):
        logits = model_apply(graphdef, p, tk).logits
        lp, _, _ = ppo_lib.token_logprobs_and_values(logits, jnp.zeros(tk.shape), tk)
        m = m.astype(jnp.float32)
        nll = -jnp.sum(lp * m) / jnp.maximum(jnp.sum(m), 1.0)
        pred = jnp.argmax(logits[:, :-1], axis=-1)
        acc = jnp.sum((pred == tk[:, 1:]) * m[:, 1:]) / jnp.maximum(jnp.sum(m[:, 1:]), 1.0)
        return nll, acc

    B = min(int(c.batch_size), tokens.shape[0])
    chunk = 10

    @jax.jit
    def train_chunk(p, s, key):
        def one(carry, k):
            p, s = carry
            idx = jax.random.choice(k, tokens.shape[0], (B,), replace=False)
            (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(p, tokens[idx], mask[idx])
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), (loss, acc)

        (p, s), (loss, acc) = jax.lax.scan(one, (p, s), jax.random.split(key, chunk))
        return p, s, loss.mean(), acc.mean()

    key = jax.random.PRNGKey(int(trainer.config.seed) + 17)
    steps = int(c.steps)
    loss = acc = float("nan")
    t1 = time.perf_counter()
    for i in range(0, steps, chunk):
        key, sub = jax.random.split(key)
        policy, opt_state, loss, acc = train_chunk(policy, opt_state, sub)
        if (i // chunk) % 5 == 0 or i + chunk >= steps:
            log(f"warm start step {i + chunk}/{steps}: loss {float(loss):.4f}, token accuracy {float(acc):.3f}")
    params = dict(params, policy=policy)
    metrics = {"warmstart/loss": float(loss), "warmstart/token_accuracy": float(acc),
               "warmstart/demos": float(stats["kept"]), "warmstart/demo_turns": float(stats["turns"]),
               "warmstart/seconds": time.perf_counter() - t0, "warmstart/train_seconds": time.perf_counter() - t1}
    return params, metrics
