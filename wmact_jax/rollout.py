"""A batch of multi-turn episodes as one jitted program: prompt, generation, parsing, env steps,
feedback tokens, next turn, all on device.

Per episode, the token buffer `[S]` and the KV cache share positions: the prompt is prefilled (its
common head, the chat template and system prompt, once for the batch and copied to every episode),
each turn the model decodes up to `max_turn_tokens` (stopping on its answer's end), the answer is
parsed in-graph into up to K actions, the actions run in the vmapped environment, and the
environment's reply (reward line + [turns left] + new grid + generation prompt) is prefilled at the row's own
position, without re-encoding the history. A `lax.while_loop` runs the turns while any episode is
active, so a small turn cap costs little, and the cap is a traced value (annealing it never
recompiles).

An episode ends when solved, when the environment's step limit is hit, on the turn cap, on the
action cap, or when the next turn would not fit in the context budget; the reason is recorded.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
from flax import struct

from wmact_jax.conversation import Conversation
from wmact_jax.sampler import SamplingParams, accepts_logits_at, decode_fn, prefill_fn, prefill_shared_head_fn

END_SOLVED, END_ENV_LIMIT, END_TURN_CAP, END_ACTION_CAP, END_CONTEXT, END_RUNNING = range(6)
END_REASONS = ("solved", "env_step_limit", "turn_cap", "action_cap", "context_full", "running")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Static shape of a rollout (changing any of these recompiles)."""

    num_levels: int  # distinct levels per batch
    group_size: int  # episodes per level (same level, different samples)
    max_turns: int  # static bound of the turn loop (the traced cap is <= this)
    max_turn_tokens: int  # T: tokens the model may write per turn
    max_actions_per_turn: int  # K
    max_actions: int  # action cap of an episode
    context_len: int  # S: tokens of an episode (prompt + turns)
    attend_buckets: tuple | None = None  # key-length windows for decoding (None: sampler default)
    # Prefill the prompt's fixed head (chat template + system prompt, the same for every episode) once at
    # batch 1 and copy its keys/values to every row, instead of running it through the model E times.
    share_prompt_head: bool = True
    # Record the log-probs of the distribution each token was drawn from (temperature, top-k and top-p
    # applied) instead of the temperature-1 policy's: PPO's "old" log-probs when it trains the tempered
    # policy (rollout.temperature != 1).
    sampled_logprobs: bool = False

    @property
    def num_episodes(self) -> int:
        return self.num_levels * self.group_size


@struct.dataclass
class RolloutBatch:
    tokens: jax.Array  # [E, S] int32, right-padded with 0
    loss_mask: jax.Array  # [E, S] bool: written by the model (the only tokens trained on)
    turn_id: jax.Array  # [E, S] int32: turn index of model tokens, -1 elsewhere
    length: jax.Array  # [E] int32: valid tokens
    turn_rewards: jax.Array  # [E, L] f32: environment reward summed over each turn's actions
    turn_valid: jax.Array  # [E, L] bool: the turn's answer parsed
    turn_actions: jax.Array  # [E, L] int32: actions executed in the turn
    # [E, L] bool: the turn's (parsed) answer left the environment in a state the episode had been in before
    # (its grid equal to one shown earlier): a cycle closed, or actions that changed nothing.
    turn_revisit: jax.Array
    success: jax.Array  # [E] bool
    env_return: jax.Array  # [E] f32: sum of environment rewards
    turns: jax.Array  # [E] int32: turns used
    n_actions: jax.Array  # [E] int32: N, actions executed
    n_effective: jax.Array  # [E] int32: N_eff, actions that changed the state
    format_errors: jax.Array  # [E] int32: malformed answers
    end_reason: jax.Array  # [E] int32, index into END_REASONS
    level_id: jax.Array  # [E] int32: which level (episodes of one group share it)
    generated: jax.Array  # [E] int32: tokens written by the model
    logprobs: jax.Array  # [E, S] f32: log p(token t | tokens[:t]) of model tokens at sampling time (0 elsewhere)
    values: jax.Array  # [E, S] f32: value of tokens[:t] at model tokens (0 elsewhere, or without a value head)


def _scatter_rows(buf, new, start, n):
    """buf [E, S], new [E, P]: row e gets new[e, :n[e]] at start[e] (never clamps, drops overflow)."""
    S, P = buf.shape[1], new.shape[1]

    def one(b, x, s0, k):
        idx = s0 + jnp.arange(P, dtype=jnp.int32)
        idx = jnp.where(jnp.arange(P) < k, idx, S)
        return b.at[idx].set(x.astype(b.dtype), mode="drop")

    return jax.vmap(one)(buf, new, start, n)


class Rollout:
    """Builds the jittable rollout for one (environment, conversation, answer codec, model).

    apply_fn(params, tokens [B,T], cache, num_new [B]) -> ModelOutput is the policy; `init_cache(batch,
    max_len)` gives its empty KV cache; decoding stops on `stop_token_ids` (the answer's end) or `eos_id`.
    prepare_params(params) (optional) runs once per rollout, outside its turn and decode loops, and its
    result is what apply_fn receives: e.g. the policy's per-layer weights sliced once (on XLA:CPU a slice
    read inside a loop is a copy at every step).
    """

    def __init__(self, env, env_params, conversation: Conversation, answer_codec, apply_fn: Callable,
                 cfg: RolloutConfig, init_cache: Callable[[int, int], Any], stop_token_ids, eos_id: int | None,
                 pad_id: int = 0, shard_batch: Callable[[Any], Any] | None = None,
                 prepare_params: Callable[[Any], Any] | None = None):
        self.prepare_params = prepare_params or (lambda params: params)
        self.init_cache = init_cache  # (batch, max_len) -> empty KVCache of the policy
        # Under a device mesh: constrains batch-leading arrays (env states, cache, tokens) to be split
        # over the data axes, so episodes run data-parallel; identity on one device.
        self.shard_batch = shard_batch or (lambda tree: tree)
        self.env, self.env_params, self.conv, self.answer_codec = env, env_params, conversation, answer_codec
        self.apply_fn, self.cfg = apply_fn, cfg
        self.stop_token_ids = tuple(int(t) for t in stop_token_ids)
        self.eos_id, self.pad_id = eos_id, pad_id
        need = conversation.max_prompt_len + cfg.max_turn_tokens
        if need > cfg.context_len:
            raise ValueError(
                f"rollout.context_len={cfg.context_len} cannot hold the prompt ({conversation.max_prompt_len} tokens) "
                f"plus one answer ({cfg.max_turn_tokens} tokens): raise it to at least {need}")
        if conversation.show_turns_left and conversation.state_lines.shape[0] <= cfg.max_turns:
            raise ValueError(
                f"the conversation states at most {conversation.state_lines.shape[0] - 1} turns left, the rollout "
                f"runs up to {cfg.max_turns} turns: build the Conversation with max_turns >= {cfg.max_turns}")
        if cfg.max_actions_per_turn > answer_codec.max_actions:
            raise ValueError("the answer codec parses fewer actions than max_actions_per_turn")

    def reset_levels(self, key):
        """E initial env states, `group_size` consecutive episodes per level."""
        c = self.cfg
        keys = jax.random.split(key, c.num_levels)
        keys = jnp.repeat(keys, c.group_size, axis=0)
        _, state = jax.vmap(self.env.reset_env, in_axes=(0, None))(keys, self.env_params)
        return state

    def run(self, params, key, turn_cap, sampling: SamplingParams, init_state=None):
        """-> (RolloutBatch, final env states). `turn_cap` traced int32 (<= cfg.max_turns)."""
        c, env, ep, conv = self.cfg, self.env, self.env_params, self.conv
        E, S, T, K, L = c.num_episodes, c.context_len, c.max_turn_tokens, c.max_actions_per_turn, c.max_turns
        k_level, k_loop = jax.random.split(key)
        env_state = self.reset_levels(k_level) if init_state is None else init_state
        env_state = self.shard_batch(env_state)
        params = self.prepare_params(params)
        if accepts_logits_at(self.apply_fn):  # prefill then computes logits only where they are read
            apply = lambda tok, cache, n, logits_at=None: self.apply_fn(params, tok, cache, n, logits_at=logits_at)
        else:
            apply = lambda tok, cache, n: self.apply_fn(params, tok, cache, n)
        turn_cap = jnp.clip(jnp.asarray(turn_cap, jnp.int32), 1, L)

        # Turn 0: the prompt.
        grids = jax.vmap(env.render_glyphs)(env_state)
        prompt, plen = jax.vmap(conv.initial_prompt, in_axes=(0, None))(grids, turn_cap)  # [E, P0], [E]
        probe = jax.eval_shape(lambda c: apply(jnp.zeros((E, 1), jnp.int32), c, jnp.zeros((E,), jnp.int32)),
                               jax.eval_shape(lambda: self.init_cache(E, S)))
        has_values = probe.values is not None
        # Every prompt starts with conv.prompt_head (Conversation.initial_prompt): shared, it is prefilled once.
        H = len(conv.prompt_head) if c.share_prompt_head else 0
        last_logits, cache, last_values = prefill_shared_head_fn(
            apply, conv.prompt_head[:H], prompt[:, H:], plen - H, self.init_cache, S, shard=self.shard_batch)
        if last_values is None:
            last_values = jnp.zeros((E,), jnp.float32)
        zeros_es = jnp.zeros((E, S), jnp.int32)
        tokens = _scatter_rows(zeros_es, prompt, jnp.zeros((E,), jnp.int32), plen)
        # The grid the episode started from and the one after each turn: what a revisit is compared with.
        shown = jnp.zeros((E, L + 1, grids[0].size), grids.dtype).at[:, 0].set(grids.reshape(E, -1))  # [E, L+1, G]

        carry = dict(
            t=jnp.zeros((), jnp.int32), key=k_loop, cache=cache, last_logits=last_logits, last_values=last_values,
            logprobs=jnp.zeros((E, S), jnp.float32), values=jnp.zeros((E, S), jnp.float32), pos=plen, tokens=tokens, loss_mask=jnp.zeros((E, S), bool), turn_id=jnp.full((E, S), -1, jnp.int32),
            env_state=env_state, active=jnp.ones((E,), bool),
            turn_rewards=jnp.zeros((E, L), jnp.float32), turn_valid=jnp.zeros((E, L), bool),
            turn_actions=jnp.zeros((E, L), jnp.int32), turn_revisit=jnp.zeros((E, L), bool), shown=shown,
            success=jnp.zeros((E,), bool), env_return=jnp.zeros((E,), jnp.float32),
            turns=jnp.zeros((E,), jnp.int32),
            n_actions=jnp.zeros((E,), jnp.int32), n_effective=jnp.zeros((E,), jnp.int32),
            format_errors=jnp.zeros((E,), jnp.int32), end_reason=jnp.full((E,), END_RUNNING, jnp.int32),
            generated=jnp.zeros((E,), jnp.int32),
        )

        def turn(cr):
            t, active = cr["t"], cr["active"]
            key, k_dec, k_env = jax.random.split(cr["key"], 3)
            out = decode_fn(apply, cr["cache"], cr["last_logits"], k_dec, max_new_tokens=T, params=sampling,
                            stop_token_ids=jnp.asarray(self.stop_token_ids, jnp.int32), eos=self.eos_id,
                            active=active, pad_id=self.pad_id, attend_buckets=c.attend_buckets,
                            has_values=has_values, last_values=cr["last_values"] if has_values else None)
            n_gen = jnp.where(active, out.num_generated, 0)
            pos = cr["pos"]
            tokens = _scatter_rows(cr["tokens"], out.tokens, pos, n_gen)
            logprobs = _scatter_rows(cr["logprobs"], out.sample_logprobs if c.sampled_logprobs else out.logprobs,
                                     pos, n_gen)
            values = cr["values"] if not has_values else _scatter_rows(cr["values"], out.values, pos, n_gen)
            loss_mask = _scatter_rows(cr["loss_mask"], jnp.ones((E, T), bool), pos, n_gen)
            turn_id = _scatter_rows(cr["turn_id"], jnp.full((E, T), t, jnp.int32), pos, n_gen)
            pos = pos + n_gen

            # Parse the answers, then run their actions.
            actions, n_act, valid = jax.vmap(self.answer_codec.decode)(out.tokens, n_gen)
            valid = valid & active
            n_act = jnp.where(valid, jnp.minimum(n_act, K), 0)

            def act(acc, k):
                st, done, succ, trunc, n, n_eff, ret, r_turn, executed, kk = acc
                kk, sub = jax.random.split(kk)
                do = valid & (k < n_act) & ~done & (n < c.max_actions)
                _, st2, r, d, info = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))(
                    jax.random.split(sub, E), st, actions[:, k], ep)
                sel = lambda a, b: jnp.where(do.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
                st = jax.tree.map(sel, st2, st)
                r = jnp.where(do, r, 0.0)
                done = done | (do & d)
                succ = succ | (do & info.success)
                trunc = trunc | (do & info.truncated)
                n = n + do
                n_eff = n_eff + (do & info.effective)
                return (st, done, succ, trunc, n, n_eff, ret + r, r_turn + r, executed + do, kk), None

            zero_e = jnp.zeros((E,), jnp.int32)
            acc0 = (cr["env_state"], ~active, cr["success"], jnp.zeros((E,), bool), cr["n_actions"],
                    cr["n_effective"], cr["env_return"], jnp.zeros((E,), jnp.float32), zero_e, k_env)
            (env_state, _, success, trunc, n_actions, n_eff, env_return, r_turn, executed, _), _ = jax.lax.scan(
                act, acc0, jnp.arange(K))

            onehot = (jnp.arange(L) == t)[None, :] & active[:, None]
            turn_rewards = jnp.where(onehot, r_turn[:, None], cr["turn_rewards"])
            turn_valid = jnp.where(onehot, valid[:, None], cr["turn_valid"])
            turn_actions = jnp.where(onehot, executed[:, None], cr["turn_actions"])
            grids = jax.vmap(env.render_glyphs)(env_state)
            flat = grids.reshape(E, -1)  # [E, G]
            earlier = (jnp.arange(L + 1) <= t)[None, :]  # the first grid and those after turns 0..t-1
            revisit = valid & jnp.any(jnp.all(cr["shown"] == flat[:, None, :], axis=-1) & earlier, axis=1)
            turn_revisit = jnp.where(onehot, revisit[:, None], cr["turn_revisit"])
            shown = jax.lax.dynamic_update_slice_in_dim(cr["shown"], flat[:, None, :], t + 1, axis=1)
            turns = cr["turns"] + active
            format_errors = cr["format_errors"] + (active & ~valid)

            # Who stops now, and why (first reason wins).
            solved = active & success
            env_limit = active & ~solved & trunc
            turn_capped = active & (t + 1 >= turn_cap)
            action_capped = active & (n_actions >= c.max_actions)
            ctx_full = active & (pos + conv.max_feedback_len + T > S)
            reason = cr["end_reason"]
            for cond, code in ((ctx_full, END_CONTEXT), (action_capped, END_ACTION_CAP),
                               (turn_capped, END_TURN_CAP), (env_limit, END_ENV_LIMIT), (solved, END_SOLVED)):
                reason = jnp.where(cond, code, reason)  # later entries take precedence
            still = active & ~(solved | env_limit | turn_capped | action_capped | ctx_full)

            # The environment's reply for episodes that go on.
            last_tok = jnp.take_along_axis(out.tokens, jnp.maximum(n_gen - 1, 0)[:, None], axis=1)[:, 0]
            fb, fb_len = jax.vmap(conv.feedback, in_axes=(0, 0, 0, 0, None))(
                r_turn, valid, grids, last_tok, turn_cap - (t + 1))
            fb_len = jnp.where(still, fb_len, 0)
            last_logits, cache, last_values = prefill_fn(apply, fb, fb_len, out.cache, out.last_logits,
                                                         out.last_values)
            if last_values is None:
                last_values = cr["last_values"]
            tokens = _scatter_rows(tokens, fb, pos, fb_len)
            pos = pos + fb_len

            return dict(t=t + 1, key=key, cache=cache, last_logits=last_logits, last_values=last_values,
                        logprobs=logprobs, values=values, pos=pos, tokens=tokens,
                        loss_mask=loss_mask, turn_id=turn_id, env_state=env_state, active=still,
                        turn_rewards=turn_rewards, turn_valid=turn_valid, turn_actions=turn_actions,
                        turn_revisit=turn_revisit, shown=shown, success=success, env_return=env_return,
                        turns=turns, n_actions=n_actions,
                        n_effective=n_eff, format_errors=format_errors, end_reason=reason,
                        generated=cr["generated"] + n_gen)

        cr = jax.lax.while_loop(lambda cr: (cr["t"] < L) & jnp.any(cr["active"]), turn, carry)
        end_reason = jnp.where(cr["end_reason"] == END_RUNNING, END_TURN_CAP, cr["end_reason"])
        level_id = jnp.repeat(jnp.arange(c.num_levels, dtype=jnp.int32), c.group_size)
        batch = RolloutBatch(
            tokens=cr["tokens"], loss_mask=cr["loss_mask"], turn_id=cr["turn_id"], length=cr["pos"],
            turn_rewards=cr["turn_rewards"], turn_valid=cr["turn_valid"], turn_actions=cr["turn_actions"],
            turn_revisit=cr["turn_revisit"], success=cr["success"], env_return=cr["env_return"], turns=cr["turns"],
            n_actions=cr["n_actions"],
            n_effective=cr["n_effective"], format_errors=cr["format_errors"], end_reason=end_reason,
            level_id=level_id, generated=cr["generated"], logprobs=cr["logprobs"], values=cr["values"])
        chex.assert_shape(batch.tokens, (E, S))
        return batch, cr["env_state"]


def rollout_metrics(b: RolloutBatch) -> dict:
    """Scalar summaries of a batch (device arrays)."""
    f = lambda x: x.astype(jnp.float32)
    n = jnp.maximum(f(b.n_actions), 1.0)
    m = {
        "success_rate": jnp.mean(f(b.success)),
        "mean_turns": jnp.mean(f(b.turns)),
        "mean_actions": jnp.mean(f(b.n_actions)),
        "efficacy": jnp.sum(f(b.n_effective)) / jnp.maximum(jnp.sum(f(b.n_actions)), 1.0),
        "mean_episode_efficacy": jnp.mean(f(b.n_effective) / n),
        "format_error_rate": jnp.sum(f(b.format_errors)) / jnp.maximum(jnp.sum(f(b.turns)), 1.0),
        "env_return": jnp.mean(b.env_return),
        "generated_tokens": jnp.sum(f(b.generated)),
        "mean_length": jnp.mean(f(b.length)),
        # Episodes that came back to a state they had been in (a turn whose answer changed nothing included).
        "cycled": jnp.mean(f(jnp.any(b.turn_revisit, axis=1))),
    }
    for i, name in enumerate(END_REASONS[:-1]):
        m[f"end/{name}"] = jnp.mean(f(b.end_reason == i))
    return m
