"""The agent conversation as token pieces, so a rollout can assemble every turn in-graph.

Built once on the host from (environment, tokenizer): the chat template is rendered with
placeholder contents and cut at the placeholders, giving the fixed pieces between messages; the
system prompt, the state header and every reward line are tokenized once into tables. In-graph,
a message is the concatenation of fixed pieces, a reward-line row and the grid tokens from the
`GridCodec`. At build time the pieces are checked against the host rendering + tokenization of a
few random transcripts (`prompts.py` is the specification), so the in-graph tokens are exactly
what `tokenizer.apply_chat_template` would give.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from wmact_jax import prompts
from wmact_jax.codec import listed_grids

_PH = ["QQSYSQQ", "QQUSERQQ", "QQASSTQQ", "QQUSER2QQ"]  # placeholders: plain letters, no template syntax


class ConversationError(ValueError):
    """The tokenizer or its chat template cannot express the conversation in-graph."""


def _grid_sampler(env):
    """rng, n -> n grids to check the pieces on: the environment's own grids when it lists them
    (`enumerate_grids`, the set the grid codec was verified on), else random glyph grids."""
    real = listed_grids(env)
    if real is not None:
        return lambda rng, n: list(real[rng.integers(0, len(real), n)])
    rows, cols = env.grid_shape
    return lambda rng, n: [rng.integers(0, len(env.glyphs), (rows, cols)) for _ in range(n)]


def _ids(tokenizer, text: str) -> List[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def concat_segments(segments: Sequence[Tuple[jax.Array, jax.Array]]) -> Tuple[jax.Array, jax.Array]:
    """Concatenates ragged token segments of one row: [(tokens [P_i], length)] -> (tokens [sum P_i], length).

    Positions past the total length hold 0 (padding); shapes are static.
    """
    total = sum(int(t.shape[0]) for t, _ in segments)
    out = jnp.zeros((total,), jnp.int32)
    offset = jnp.zeros((), jnp.int32)
    for tok, n in segments:
        p = tok.shape[0]
        idx = offset + jnp.arange(p, dtype=jnp.int32)
        idx = jnp.where(jnp.arange(p) < n, idx, total)  # masked entries scatter out of range
        out = out.at[idx].set(tok.astype(jnp.int32), mode="drop")
        offset = offset + n
    return out, offset


def _padded(rows: Sequence[Sequence[int]]) -> Tuple[np.ndarray, np.ndarray]:
    width = max(1, max(len(r) for r in rows))
    arr = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        arr[i, : len(r)] = r
    return arr, np.array([len(r) for r in rows], np.int32)


class Conversation:
    """Token pieces of the conversation for one (env, tokenizer, answer budget).

    Attributes (numpy, host):
      prompt_head: tokens before the first grid (template + system prompt + first user header).
      user_tail: tokens after a grid up to where the assistant writes (end of user + generation prompt).
      turn_head: tokens after an assistant answer up to the feedback text (end of assistant + user start).
      feedback_lines: [num_rewards, P] reward lines ("Reward: x\\nCurrent state:\\n"), row `invalid_row`
        is the invalid-answer line.
      state_lines: with `turns_left` only: [R, P] rows "Turns left: n\\nCurrent state:\\n" for n = 0..R-1; the
        state header then leaves prompt_head and feedback_lines for this table.
    """

    def __init__(self, env, tokenizer, grid_codec, max_actions_per_turn: int, single_turn: bool = False,
                 style: str = "full", reward_range: float = 100.0, check_samples: int = 8, seed: int = 0,
                 turns_left: bool = False, max_turns: int = 1):
        self.env, self.tokenizer, self.grid_codec = env, tokenizer, grid_codec
        self.show_turns_left = bool(turns_left)
        self.system_text = prompts.system_prompt(env, max_actions_per_turn, single_turn, style)
        msgs = [{"role": "system", "content": _PH[0]}, {"role": "user", "content": _PH[1]},
                {"role": "assistant", "content": _PH[2]}, {"role": "user", "content": _PH[3]}]
        try:
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # no template, or a template rejecting a system message
            raise ConversationError(f"the tokenizer's chat template cannot render the conversation: {e}") from e
        parts = []
        rest = text
        for ph in _PH:
            if rest.count(ph) != 1:
                raise ConversationError(f"chat template output does not contain placeholder {ph} exactly once")
            before, rest = rest.split(ph)
            parts.append(before)
        pre_sys, sys_to_user, user_to_asst, asst_to_user = parts
        gen_tail = rest
        if gen_tail != user_to_asst:
            raise ConversationError(
                "chat template: the text after the last user message differs from the text between a user and "
                f"an assistant message ({gen_tail!r} vs {user_to_asst!r}); cannot build turns in-graph")
        # Without the turns-left line the state header is folded into the fixed pieces (the layout of
        # every run before the option existed: their token ids are unchanged).
        state_in_pieces = "" if self.show_turns_left else prompts.STATE_HEADER
        self._text_head = pre_sys + self.system_text + sys_to_user + state_in_pieces
        self._text_user_tail = user_to_asst
        self._text_turn_head = asst_to_user
        self.prompt_head = np.array(_ids(tokenizer, self._text_head), np.int32)
        self.user_tail = np.array(_ids(tokenizer, self._text_user_tail), np.int32)
        self.turn_head = np.array(_ids(tokenizer, self._text_turn_head), np.int32)
        # Reward lines for every value with one decimal in [-reward_range, reward_range].
        self.reward_scale = 10
        self.reward_offset = int(round(reward_range * self.reward_scale))
        values = np.arange(-self.reward_offset, self.reward_offset + 1) / self.reward_scale
        lines = [prompts.reward_text(v) + state_in_pieces for v in values]
        lines.append(prompts.INVALID_TEXT + state_in_pieces)
        self.invalid_row = len(lines) - 1
        self.feedback_lines, self.feedback_lengths = _padded([_ids(tokenizer, l) for l in lines])
        # Turns-left rows up to the run's static turn bound (at least 3: the longest transcript `_check` builds).
        rows = max(int(max_turns), 3) + 1 if self.show_turns_left else 0
        self.state_lines, self.state_lengths = (
            _padded([_ids(tokenizer, prompts.turns_left_text(n) + prompts.STATE_HEADER) for n in range(rows)])
            if rows else (np.zeros((0, 0), np.int32), np.zeros((0,), np.int32)))
        self._check(check_samples, seed)

    # ------------------------------------------------------------------ host (the specification)
    def _turns_left(self, turn_cap, i: int):
        """Turns left shown before turn i (None when not shown)."""
        if not self.show_turns_left:
            return None
        if turn_cap is None:
            raise ValueError("this conversation states the turns left: pass the episode's turn_cap")
        n = int(turn_cap) - i
        if not 0 <= n < self.state_lines.shape[0]:
            raise ValueError(f"turns left {n} (turn_cap {turn_cap}, turn {i}) is outside this conversation's "
                             f"table 0..{self.state_lines.shape[0] - 1}: build it with a larger max_turns")
        return n

    def host_transcript_text(self, grids_text: Sequence[str], answers: Sequence[str],
                             rewards: Sequence[float], valid: Sequence[bool], turn_cap: int | None = None) -> str:
        """Text of a conversation: grids_text[0] first, then (answer i, feedback i with grids_text[i+1]).

        turn_cap: the episode's turn cap, required when the conversation states the turns left.
        """
        msgs = [{"role": "system", "content": self.system_text},
                {"role": "user", "content": prompts.state_message(grids_text[0], self._turns_left(turn_cap, 0))}]
        for i, a in enumerate(answers):
            msgs.append({"role": "assistant", "content": a})
            if i + 1 < len(grids_text):
                msgs.append({"role": "user", "content": prompts.feedback_message(
                    rewards[i], grids_text[i + 1], valid[i], self._turns_left(turn_cap, i + 1))})
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def grid_text(self, grid) -> str:
        return self.env.glyphs_to_text(np.asarray(grid), sep=self.grid_codec.cell_sep)

    def host_tokens(self, grids, answers_ids: Sequence[Sequence[int]], rewards, valid,
                    feedback_mark: int = 0, trained: Sequence[bool] | None = None,
                    turn_cap: int | None = None) -> Tuple[List[int], List[int]]:
        """Token ids and loss mask (1 = model-written) of a transcript, from the pieces.

        `answers_ids[i]` are the model's tokens of turn i (through `</answer>`); the env-written
        pieces follow, marked `feedback_mark` in the mask (0: not trained on; the warm start's
        state loss marks them 2). `trained[i]` False marks answer i 0 (in the context, not a target:
        the warm start's deliberate no-effect moves). turn_cap: the episode's cap, required when the
        conversation states the turns left. Used by the warm start; equal to the in-graph rollout's layout.
        """
        ids = (list(self.prompt_head) + self._state_ids(turn_cap, 0) + self._grid_ids(grids[0])
               + list(self.user_tail))
        mask = [0] * len(ids)
        for i, a in enumerate(answers_ids):
            ids += list(a)
            mask += [1 if trained is None or trained[i] else 0] * len(a)
            if i + 1 < len(grids):
                head = list(self.turn_head)
                if a and a[-1] == head[0]:  # as in-graph: the end-of-turn token is not repeated
                    head = head[1:]
                fb = (head + self._line_ids(rewards[i], valid[i]) + self._state_ids(turn_cap, i + 1)
                      + self._grid_ids(grids[i + 1]) + list(self.user_tail))
                ids += fb
                mask += [feedback_mark] * len(fb)
        return ids, mask

    def _grid_ids(self, grid) -> List[int]:
        return _ids(self.tokenizer, self.grid_text(grid))

    def _state_ids(self, turn_cap, i: int) -> List[int]:
        n = self._turns_left(turn_cap, i)
        return [] if n is None else list(self.state_lines[n, : self.state_lengths[n]])

    def _line_ids(self, reward: float, valid: bool) -> List[int]:
        row = self.invalid_row if not valid else self.reward_row(reward)
        return list(self.feedback_lines[row, : self.feedback_lengths[row]])

    def reward_row(self, reward: float) -> int:
        return int(np.clip(round(float(reward) * self.reward_scale) + self.reward_offset, 0, 2 * self.reward_offset))

    def _check(self, samples: int, seed: int) -> None:
        """The pieces concatenated equal the tokenized chat-template text (else in-graph is wrong)."""
        rng = np.random.default_rng(seed)
        grids_of = _grid_sampler(self.env)
        for s in range(samples):
            n = 1 + s % 3
            grids = grids_of(rng, n + 1)
            answers = [prompts.answer_text([self.env.action_names[int(a)] for a in rng.integers(0, self.env.num_actions, 2)],
                                           "thinking") for _ in range(n)]
            rewards = [float(rng.integers(-30, 30)) / 10 for _ in range(n)]
            valid = [bool(v) for v in rng.integers(0, 2, n)]
            cap = int(rng.integers(n, self.state_lines.shape[0])) if self.show_turns_left else None
            text = self.host_transcript_text([self.grid_text(g) for g in grids], answers, rewards, valid, cap)
            want = _ids(self.tokenizer, text)
            got, _ = self.host_tokens(grids, [_ids(self.tokenizer, a) for a in answers], rewards, valid,
                                      turn_cap=cap)
            if want != got:
                raise ConversationError(
                    "the conversation pieces do not tokenize compositionally with this tokenizer "
                    f"(first difference at token {next(i for i, (x, y) in enumerate(zip(want + [-1], got + [-2])) if x != y)}); "
                    "choose another grid cell separator")

    # ------------------------------------------------------------------ in-graph
    @property
    def max_prompt_len(self) -> int:
        return len(self.prompt_head) + self.state_lines.shape[1] + self.grid_codec.max_len + len(self.user_tail)

    @property
    def max_feedback_len(self) -> int:
        return (len(self.turn_head) + self.feedback_lines.shape[1] + self.state_lines.shape[1]
                + self.grid_codec.max_len + len(self.user_tail))

    def _state_segment(self, turns_left):
        """[] or [(the turns-left row, its length)]; turns_left traced int32, clipped to the table."""
        if not self.show_turns_left:
            return []
        if turns_left is None:
            raise ValueError("this conversation states the turns left: pass turns_left")
        row = jnp.clip(jnp.asarray(turns_left, jnp.int32), 0, self.state_lines.shape[0] - 1)
        return [(jnp.asarray(self.state_lines)[row], jnp.asarray(self.state_lengths)[row])]

    def initial_prompt(self, grid: jax.Array, turns_left=None) -> Tuple[jax.Array, jax.Array]:
        """grid [rows, cols] -> (tokens [max_prompt_len], length) of the prompt up to the model's turn.

        turns_left: int32 scalar, the episode's turn cap (required when the conversation states it).
        """
        g, n = self.grid_codec.encode(grid)
        head, tail = jnp.asarray(self.prompt_head), jnp.asarray(self.user_tail)
        return concat_segments([(head, head.shape[0])] + self._state_segment(turns_left)
                               + [(g, n), (tail, tail.shape[0])])

    def feedback(self, reward: jax.Array, valid: jax.Array, grid: jax.Array, last_token: jax.Array,
                 turns_left=None) -> Tuple[jax.Array, jax.Array]:
        """Env-written tokens after an answer: end of the assistant message, the reward (or invalid)
        line, [the turns left], the new grid, the generation prompt. -> (tokens [max_feedback_len], length).

        If the model already wrote the first token of `turn_head` (e.g. it ended with the end-of-turn
        token itself), that token is not repeated. turns_left: int32 scalar, turns the model has left
        from the next one on (required when the conversation states it).
        """
        head = jnp.asarray(self.turn_head)
        skip = (last_token == head[0]).astype(jnp.int32)
        head_shifted = jnp.roll(head, -skip)
        row = jnp.clip(jnp.round(reward * self.reward_scale).astype(jnp.int32) + self.reward_offset,
                       0, 2 * self.reward_offset)
        row = jnp.where(valid, row, self.invalid_row)
        line = jnp.asarray(self.feedback_lines)[row]
        line_len = jnp.asarray(self.feedback_lengths)[row]
        g, n = self.grid_codec.encode(grid)
        tail = jnp.asarray(self.user_tail)
        return concat_segments([(head_shifted, head.shape[0] - skip), (line, line_len)]
                               + self._state_segment(turns_left) + [(g, n), (tail, tail.shape[0])])
