"""Host-loop rollout baseline: the same model, sampler and conversation as `wmact_jax.rollout.Rollout`,
driven turn by turn from Python the way RAGEN / verl-agent style frameworks do it.

Per turn:
  1. device: the jitted sampler decodes up to T tokens for every episode (KV cache stays on device);
  2. host:   the generated ids are copied back, detokenized (`codec.decode_text`) and parsed with the
             regex specification `codec.parse_answer_text`;
  3. host:   each episode's actions run one by one through the environment's `step_env`, jitted for a
             SINGLE episode (one dispatch + one device->host sync per action, as a host loop does);
  4. host:   the new grid (`render_glyphs`, jitted per episode) is rendered to text, the feedback
             message (end of the assistant turn + reward line + state + generation prompt, the same text
             `Conversation.host_tokens` composes) is tokenized with `tokenizer.encode`;
  5. device: the feedback tokens are prefilled into the KV cache by the jitted sampler.

Only the environment / codec part lives on the host; generation uses exactly the functions the in-graph
rollout uses (`sampler.prefill_fn` / `sampler.decode_fn`, each jitted on its own, cache donated), the same
attention buckets and the same static shapes (prompt and feedback padded to the in-graph widths), so the
comparison isolates the cost of the host round trips. PRNG keys are split exactly as in
`Rollout.run`, so with the same params and key both produce the same episodes (up to float round-off in
the logits); `tests/wmact/test_host_loop.py` checks this with greedy decoding.

The result is a `RolloutBatch` (numpy arrays), so the trainer's PPO update can consume it unchanged.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from wmact_jax import prompts
from wmact_jax.codec import decode_text, parse_answer_text
from wmact_jax.rollout import (END_ACTION_CAP, END_CONTEXT, END_ENV_LIMIT, END_RUNNING, END_SOLVED, END_TURN_CAP,
                               RolloutBatch)
from wmact_jax.sampler import accepts_logits_at, decode_fn, prefill_fn, prefill_shared_head_fn


class HostLoopRollout:
    """A Python-driven multi-turn rollout mirroring `trainer.rollout` (same RolloutConfig)."""

    def __init__(self, env, env_params, conversation, tokenizer, apply_fn, cfg, init_cache, stop_token_ids,
                 eos_id, pad_id: int = 0, prepare_params=None):
        """Same arguments as `Rollout` (+ the tokenizer): apply_fn(params, tokens, cache, num_new).
        prepare_params runs at the start of each jitted call (outside its decode loop), as in-graph."""
        prepare = prepare_params or (lambda params: params)
        self.env, self.ep, self.conv, self.tok = env, env_params, conversation, tokenizer
        self.cfg = c = cfg
        self.stop_ids = jnp.asarray(tuple(int(t) for t in stop_token_ids), jnp.int32)
        self.eos_id, self.pad_id = eos_id, pad_id
        self.init_cache = init_cache
        apply = self._apply = apply_fn
        self._prepare = prepare

        def with_params(params):  # logits only where prefill reads them, as the in-graph rollout does
            params = prepare(params)
            if accepts_logits_at(apply):
                return lambda t, ca, n, logits_at=None: apply(params, t, ca, n, logits_at=logits_at)
            return lambda t, ca, n: apply(params, t, ca, n)

        def _prefill(params, tokens, lengths, cache, last_logits, last_values):
            ll, cache, lv = prefill_fn(with_params(params), tokens, lengths, cache, last_logits,
                                       last_values if self.has_values else None)
            return ll, cache, (last_values if lv is None else lv)

        # As in-graph: with share_prompt_head the common head is prefilled once (what a prefix cache does).
        self.head = np.asarray(self.conv.prompt_head if c.share_prompt_head else self.conv.prompt_head[:0], np.int32)

        def _prefill0(params, tokens, lengths):  # tokens: each prompt after the head
            ll, cache, lv = prefill_shared_head_fn(with_params(params), self.head, tokens, lengths, init_cache,
                                                   c.context_len)
            return ll, cache, (jnp.zeros((tokens.shape[0],), jnp.float32) if lv is None else lv)

        stop_ids, eos, pad_id = self.stop_ids, self.eos_id, self.pad_id

        def _decode(params, cache, last_logits, last_values, key, sampling, active):
            hv = self.has_values
            prepared = prepare(params)
            out = decode_fn(lambda t, ca, n: apply(prepared, t, ca, n), cache, last_logits, key,
                            max_new_tokens=c.max_turn_tokens, params=sampling, stop_token_ids=stop_ids, eos=eos,
                            active=active, pad_id=pad_id, attend_buckets=c.attend_buckets, has_values=hv,
                            last_values=last_values if hv else None)
            values = out.values if hv else jnp.zeros_like(out.logprobs)
            last_v = out.last_values if hv else last_values
            return out.tokens, out.logprobs, values, out.num_generated, out.cache, out.last_logits, last_v

        self.has_values = None  # found on the first run (as in-graph: does the policy return values?)
        self._prefill = jax.jit(_prefill, donate_argnums=3)
        self._prefill0 = jax.jit(_prefill0)
        self._decode = jax.jit(_decode, donate_argnums=1)
        env, ep = self.env, self.ep
        # Single-episode env functions, jitted: what a host loop calls per episode / per action.
        self._reset1 = jax.jit(lambda k: env.reset_env(k, ep)[1])
        self._step1 = jax.jit(lambda k, s, a: env.step_env(k, s, a, ep))
        self._render1 = jax.jit(env.render_glyphs)
        # Host text pieces (the specification the in-graph pieces are checked against).
        self.head_text = self.conv._text_turn_head
        self.user_tail_text = self.conv._text_user_tail
        self.turn_head0 = int(self.conv.turn_head[0])
        self.timers: Dict[str, float] = defaultdict(float)

    @classmethod
    def from_trainer(cls, trainer, cfg=None) -> "HostLoopRollout":
        """The host-loop twin of `trainer.rollout` (same model, codecs, shapes, stop tokens)."""
        ro = trainer.rollout
        return cls(trainer.env, trainer.env_params, trainer.conv, trainer.tokenizer, trainer._policy_apply,
                   cfg or trainer.rollout_cfg, ro.init_cache, ro.stop_token_ids, ro.eos_id, ro.pad_id,
                   ro.prepare_params)

    # ---------------------------------------------------------------- host pieces
    def _grid_text(self, state) -> str:
        return self.conv.grid_text(np.asarray(self._render1(state)))

    def _prompt_ids(self, grid_text: str, turn_cap: int) -> List[int]:
        msgs = [{"role": "system", "content": self.conv.system_text},
                {"role": "user", "content": prompts.state_message(grid_text, self.conv._turns_left(turn_cap, 0))}]
        text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return list(self.tok.encode(text, add_special_tokens=False))

    def _feedback_ids(self, reward: float, valid: bool, grid_text: str, last_token: int, turn_cap: int,
                      turn: int) -> List[int]:
        """The reply before `turn` (its turns-left count, if stated, from the conversation's rule)."""
        text = (self.head_text + prompts.feedback_message(reward, grid_text, valid, self.conv._turns_left(turn_cap, turn))
                + self.user_tail_text)
        ids = list(self.tok.encode(text, add_special_tokens=False))
        if last_token == self.turn_head0 and ids and ids[0] == self.turn_head0:
            ids = ids[1:]  # as in-graph: the end-of-turn token the model wrote is not repeated
        return ids

    def _pad(self, rows: List[List[int]], width: int):
        arr = np.full((len(rows), width), 0, np.int32)
        lens = np.zeros((len(rows),), np.int32)
        for i, r in enumerate(rows):
            if len(r) > width:
                raise ValueError(f"host message of {len(r)} tokens exceeds the in-graph width {width}")
            arr[i, : len(r)] = r
            lens[i] = len(r)
        return arr, lens

    # ---------------------------------------------------------------- the loop
    def run(self, params, key, turn_cap: int, sampling) -> RolloutBatch:
        c, conv, env = self.cfg, self.conv, self.env
        tm = self.timers
        E, S, T, K, L = c.num_episodes, c.context_len, c.max_turn_tokens, c.max_actions_per_turn, c.max_turns
        turn_cap = int(np.clip(int(turn_cap), 1, L))
        t0 = time.perf_counter()
        k_level, k_loop = jax.random.split(key)
        level_keys = jnp.repeat(jax.random.split(k_level, c.num_levels), c.group_size, axis=0)
        states = [self._reset1(level_keys[e]) for e in range(E)]
        step_key = jax.random.PRNGKey(0)  # the environments here are deterministic (key unused)
        shown = [[self._grid_text(s)] for s in states]  # per episode: the grids it has been in (revisits)
        prompts_ids = [self._prompt_ids(g[0], turn_cap) for g in shown]
        tm["host_reset_prompt"] += time.perf_counter() - t0

        t1 = time.perf_counter()
        ptok, plen = self._pad(prompts_ids, conv.max_prompt_len)
        if self.has_values is None:
            probe = jax.eval_shape(lambda p, ca: self._apply(self._prepare(p), jnp.zeros((E, 1), jnp.int32), ca,
                                                             jnp.zeros((E,), jnp.int32)), params,
                                   jax.eval_shape(lambda: self.init_cache(E, S)))
            self.has_values = probe.values is not None
        H = self.head.size
        if not np.all(ptok[:, :H] == self.head[None]):
            raise ValueError("a host prompt does not start with the conversation's prompt head")
        last_logits, cache, last_values = self._prefill0(params, jnp.asarray(ptok[:, H:]), jnp.asarray(plen - H))
        jax.block_until_ready(last_logits)
        tm["device_prefill"] += time.perf_counter() - t1

        tokens = np.zeros((E, S), np.int32)
        loss_mask = np.zeros((E, S), bool)
        turn_id = np.full((E, S), -1, np.int32)
        logprobs = np.zeros((E, S), np.float32)
        values = np.zeros((E, S), np.float32)
        for e in range(E):
            tokens[e, : plen[e]] = ptok[e, : plen[e]]
        pos = plen.astype(np.int64).copy()
        active = np.ones((E,), bool)
        turn_rewards = np.zeros((E, L), np.float32)
        turn_valid = np.zeros((E, L), bool)
        turn_actions = np.zeros((E, L), np.int32)
        turn_revisit = np.zeros((E, L), bool)
        success = np.zeros((E,), bool)
        env_return = np.zeros((E,), np.float32)
        turns = np.zeros((E,), np.int32)
        n_actions = np.zeros((E,), np.int32)
        n_eff = np.zeros((E,), np.int32)
        format_errors = np.zeros((E,), np.int32)
        end_reason = np.full((E,), END_RUNNING, np.int32)
        generated = np.zeros((E,), np.int32)
        names = env.action_names

        t = 0
        loop_key = k_loop
        while t < L and active.any():
            loop_key, k_dec, _k_env = jax.random.split(loop_key, 3)
            t1 = time.perf_counter()
            out_tok, out_lp, out_v, n_gen, cache, dec_logits, dec_values = self._decode(
                params, cache, last_logits, last_values, k_dec, sampling, jnp.asarray(active))
            out_tok, out_lp, out_v, n_gen = (np.asarray(x) for x in (out_tok, out_lp, out_v, n_gen))  # -> host
            tm["device_decode"] += time.perf_counter() - t1
            n_gen = np.where(active, n_gen, 0)

            fb_rows: List[List[int]] = [[] for _ in range(E)]
            for e in np.nonzero(active)[0]:
                ng = int(n_gen[e])
                tokens[e, pos[e]: pos[e] + ng] = out_tok[e, :ng]
                loss_mask[e, pos[e]: pos[e] + ng] = True
                logprobs[e, pos[e]: pos[e] + ng] = out_lp[e, :ng]
                values[e, pos[e]: pos[e] + ng] = out_v[e, :ng]
                turn_id[e, pos[e]: pos[e] + ng] = t
                pos[e] += ng
                generated[e] += ng
                # -- parse
                t2 = time.perf_counter()
                acts, valid = parse_answer_text(decode_text(self.tok, out_tok[e, :ng]), names, K)
                tm["host_parse"] += time.perf_counter() - t2
                # -- act
                t2 = time.perf_counter()
                r_turn, executed, trunc = 0.0, 0, False
                for a in (acts if valid else []):
                    if n_actions[e] >= c.max_actions:
                        break
                    _, states[e], r, d, info = self._step1(step_key, states[e], np.int32(a))
                    r, d, ok, eff, tr = float(r), bool(d), bool(info.success), bool(info.effective), bool(info.truncated)
                    r_turn += r
                    env_return[e] += np.float32(r)
                    n_actions[e] += 1
                    n_eff[e] += eff
                    executed += 1
                    success[e] |= ok
                    trunc |= tr
                    if d:
                        break
                tm["host_env_step"] += time.perf_counter() - t2
                turn_rewards[e, t] = r_turn
                turn_valid[e, t] = valid
                turn_actions[e, t] = executed
                t2 = time.perf_counter()
                grid = self._grid_text(states[e])
                turn_revisit[e, t] = valid and grid in shown[e]
                shown[e].append(grid)
                tm["host_render_tokenize"] += time.perf_counter() - t2
                turns[e] += 1
                format_errors[e] += not valid
                # -- who stops (same precedence as in-graph: solved > env limit > turn cap > action cap > context)
                reason = None
                if pos[e] + conv.max_feedback_len + T > S:
                    reason = END_CONTEXT
                if n_actions[e] >= c.max_actions:
                    reason = END_ACTION_CAP
                if t + 1 >= turn_cap:
                    reason = END_TURN_CAP
                if trunc and not success[e]:
                    reason = END_ENV_LIMIT
                if success[e]:
                    reason = END_SOLVED
                if reason is not None:
                    end_reason[e] = reason
                    active[e] = False
                    continue
                # -- feedback text -> tokens
                t2 = time.perf_counter()
                last = int(out_tok[e, max(ng - 1, 0)])
                fb_rows[e] = self._feedback_ids(r_turn, valid, grid, last, turn_cap, t + 1)
                tm["host_render_tokenize"] += time.perf_counter() - t2
                ids = fb_rows[e]
                tokens[e, pos[e]: pos[e] + len(ids)] = ids
                pos[e] += len(ids)
            t1 = time.perf_counter()
            fb, fb_len = self._pad(fb_rows, conv.max_feedback_len)
            fb_len = np.where(active, fb_len, 0)
            last_logits, cache, last_values = self._prefill(params, jnp.asarray(fb), jnp.asarray(fb_len), cache,
                                                            dec_logits, dec_values)
            jax.block_until_ready(last_logits)
            tm["device_prefill"] += time.perf_counter() - t1
            t += 1
        end_reason = np.where(end_reason == END_RUNNING, END_TURN_CAP, end_reason).astype(np.int32)
        level_id = np.repeat(np.arange(c.num_levels, dtype=np.int32), c.group_size)
        tm["total"] += time.perf_counter() - t0
        return RolloutBatch(tokens=tokens, loss_mask=loss_mask, turn_id=turn_id, length=pos.astype(np.int32),
                            turn_rewards=turn_rewards, turn_valid=turn_valid, turn_actions=turn_actions,
                            turn_revisit=turn_revisit,
                            success=success, env_return=env_return, turns=turns, n_actions=n_actions,
                            n_effective=n_eff, format_errors=format_errors, end_reason=end_reason,
                            level_id=level_id, generated=generated, logprobs=logprobs, values=values)
