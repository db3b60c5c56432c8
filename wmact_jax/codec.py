"""In-graph text codec: grids -> tokens and generated answers -> actions, jittable and vmappable.

The conversation around them (chat template, system prompt, reward lines, turns left) is assembled
from token pieces by `conversation.Conversation`.

Built once per (env, tokenizer) on the host; the results are `flax.struct` pytrees of small integer
tables, so they can be closed over or passed as jit arguments. Every in-graph function has a host
*specification* that it equals exactly (tested with hypothesis):

- `GridCodec.encode(grid)`  == `tokenizer.encode(prefix + env.glyphs_to_text(grid, cell_sep) + suffix,
  add_special_tokens=False)`  (host: `GridCodec.render_text`).
- `AnswerCodec.decode(tokens, length)` == `parse_answer_text(tokenizer.decode(tokens[:length],
  skip_special_tokens=False, clean_up_tokenization_spaces=False), env.action_names, K)`.

Why it is exact: BPE output is not a concatenation of per-glyph tokens in general ('##' merges), so
each grid cell *owns* the separator before it, and a table holds the tokens of (separator + glyph)
for each position class (first cell with the prefix, row start, inner cell, last cell with the
suffix). This is compositional when the pre-tokenizer cuts the text before every separator; the
build VERIFIES it and raises `CodecError` otherwise: on every grid the environment can render when
it lists them (`env.enumerate_grids()`: Taxi), else on hundreds of random glyph grids holding every
glyph pair. Default cell separator (`cell_sep=None`): the first of '' and ' ' that verifies. In
practice: scratch tokenizer -> '' (one token per cell; Taxi too, whose two walls `||`, which would
fuse into the action-separator token, never stand side by side in a real grid); SmolLM2 -> ' ' (the
ByteLevel pre-tokenizer isolates ' #' pieces; ' √' is 2 tokens).
"""

from __future__ import annotations

import re
import string
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = [
    "CodecError",
    "GridCodec",
    "AnswerCodec",
    "parse_answer_text",
    "listed_grids",
    "token_bytes",
    "decode_text",
]


class CodecError(ValueError):
    """The tokenizer cannot encode this rendering compositionally (or a bad template/argument)."""


def _encode(tokenizer, text: str) -> List[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _encode_many(tokenizer, texts: Sequence[str]) -> List[List[int]]:
    return [list(e.ids) for e in tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def _pad_id(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if t is not None:
            return int(t)
    return 0


def _table(seqs: Sequence[Sequence[int]], width: Optional[int] = None, pad: int = 0):
    """Ragged lists -> (int32 [n, width], lengths int32 [n])."""
    width = max([1] + [len(s) for s in seqs]) if width is None else width
    out = np.full((len(seqs), width), pad, np.int32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, np.array([len(s) for s in seqs], np.int32)


def _compact(toks, lens, max_len: int, pad_id):
    """Concatenates ragged rows in-graph: toks [M, L], lens [M] -> (tokens [max_len], length).

    A gather (searchsorted over the row ends) rather than a scatter: cheap on every backend.
    """
    m, width = toks.shape
    if width == 1 and max_len == m:  # every row is exactly one token (checked by the caller)
        return toks[:, 0], jnp.int32(m)
    ends = jnp.cumsum(lens)  # [M]
    starts = ends - lens
    p = jnp.arange(max_len, dtype=jnp.int32)  # [max_len]
    row = jnp.clip(jnp.searchsorted(ends, p, side="right"), 0, m - 1)
    col = jnp.clip(p - starts[row], 0, width - 1)
    total = ends[-1]
    out = jnp.where(p < total, toks[row, col], pad_id)
    return out.astype(jnp.int32), total.astype(jnp.int32)


def _compact_np(rows: Sequence[Sequence[int]]) -> List[int]:
    return [t for r in rows for t in r]


# ================================================================================================
# Grids
# ================================================================================================


@struct.dataclass
class GridCodec:
    """Glyph grid int32 [rows, cols] -> tokens of its text rendering, in-graph.

    table: int32 [classes, glyphs, width] tokens of (lead text + glyph (+ suffix for the last cell)),
    lens: int32 [classes, glyphs], cell_class: int32 [rows*cols] the position class of each cell.
    """

    table: jax.Array
    lens: jax.Array
    cell_class: jax.Array
    pad_id: int = struct.field(pytree_node=False)
    rows: int = struct.field(pytree_node=False)
    cols: int = struct.field(pytree_node=False)
    max_len: int = struct.field(pytree_node=False)  # static length of `encode`'s token buffer
    cell_sep: str = struct.field(pytree_node=False)
    row_sep: str = struct.field(pytree_node=False)
    prefix: str = struct.field(pytree_node=False)
    suffix: str = struct.field(pytree_node=False)
    glyphs: Tuple[str, ...] = struct.field(pytree_node=False)

    @classmethod
    def build(
        cls,
        env,
        tokenizer,
        cell_sep: Optional[str] = None,
        row_sep: str = "\n",
        prefix: str = "",
        suffix: str = "",
        num_checks: int = 256,
        seed: int = 0,
    ) -> "GridCodec":
        """Tables for `env.grid_shape`; verified on `num_checks` random grids (raises `CodecError`)."""
        if cell_sep is None:
            errors = []
            for sep in ("", " "):
                try:
                    return cls.build(env, tokenizer, sep, row_sep, prefix, suffix, num_checks, seed)
                except CodecError as e:
                    errors.append(str(e))
            raise CodecError("no default cell separator works: " + " | ".join(errors))
        rows, cols = (int(x) for x in env.grid_shape)
        glyphs = tuple(env.glyphs)
        if rows * cols < 2:
            raise CodecError("grids must have at least 2 cells")
        leads = {}  # (lead, trail) -> class id
        cell_class = np.zeros(rows * cols, np.int32)
        for r in range(rows):
            for c in range(cols):
                lead = prefix if (r, c) == (0, 0) else (row_sep if c == 0 else cell_sep)
                trail = suffix if (r, c) == (rows - 1, cols - 1) else ""
                cell_class[r * cols + c] = leads.setdefault((lead, trail), len(leads))
        texts = [lead + g + trail for (lead, trail) in leads for g in glyphs]
        seqs = _encode_many(tokenizer, texts)
        width = max(len(s) for s in seqs)
        if min(len(s) for s in seqs) == 0:
            raise CodecError("a glyph encodes to no token")
        flat, flat_lens = _table(seqs, width, _pad_id(tokenizer))
        n_cls, n_g = len(leads), len(glyphs)
        max_len = int(sum(flat_lens.reshape(n_cls, n_g).max(axis=1)[cell_class]))
        codec = cls(
            table=jnp.asarray(flat.reshape(n_cls, n_g, width)),
            lens=jnp.asarray(flat_lens.reshape(n_cls, n_g)),
            cell_class=jnp.asarray(cell_class),
            pad_id=_pad_id(tokenizer),
            rows=rows,
            cols=cols,
            max_len=max_len,
            cell_sep=cell_sep,
            row_sep=row_sep,
            prefix=prefix,
            suffix=suffix,
            glyphs=glyphs,
        )
        real = listed_grids(env)
        codec._verify(env, tokenizer, list(real) if real is not None
                      else _check_grids(n_g, rows, cols, num_checks, seed))
        return codec

    # ---- host side ------------------------------------------------------------------------------
    def render_text(self, grid) -> str:
        """The exact text `encode` tokenizes (host)."""
        g = np.asarray(grid)
        body = self.row_sep.join(self.cell_sep.join(self.glyphs[int(x)] for x in row) for row in g)
        return self.prefix + body + self.suffix

    def encode_np(self, grid) -> List[int]:
        """Host composition of the tables (what `encode` computes), for checks."""
        g = np.asarray(grid).reshape(-1)
        table, lens, cc = np.asarray(self.table), np.asarray(self.lens), np.asarray(self.cell_class)
        return _compact_np([table[cc[i], g[i], : lens[cc[i], g[i]]] for i in range(g.size)])

    def _verify(self, env, tokenizer, grids) -> None:
        texts = [self.render_text(g) for g in grids]
        for g, text, ids in zip(grids, texts, _encode_many(tokenizer, texts)):
            if ids != self.encode_np(g):
                raise CodecError(
                    f"tokenizer is not compositional for cell_sep={self.cell_sep!r}, row_sep={self.row_sep!r}:"
                    f" {text!r} -> {ids}, per-cell tables give {self.encode_np(g)}"
                )

    # ---- in-graph -------------------------------------------------------------------------------
    def cell_tokens(self, grid):
        """grid int32 [rows, cols] -> (tokens [rows*cols, width], lens [rows*cols])."""
        g = grid.reshape(-1).astype(jnp.int32)
        return self.table[self.cell_class, g], self.lens[self.cell_class, g]

    def encode(self, grid):
        """grid int32 [rows, cols] -> (tokens int32 [max_len] padded with pad_id, length int32)."""
        toks, lens = self.cell_tokens(grid)
        return _compact(toks, lens, self.max_len, self.pad_id)


def listed_grids(env) -> Optional[np.ndarray]:
    """Every grid `env` can show ([n, rows, cols]) when it lists them (`enumerate_grids`), else None
    (also for duck-typed envs without the method): what the codec and conversation checks run on."""
    return env.enumerate_grids() if hasattr(env, "enumerate_grids") else None


def _check_grids(n_glyphs: int, rows: int, cols: int, n: int, seed: int) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    grids = [np.full((rows, cols), g, np.int32) for g in range(n_glyphs)]  # long runs of one glyph
    pairs = np.array([(a, b) for a in range(n_glyphs) for b in range(n_glyphs)]).reshape(-1)  # every bigram
    for off in range(0, len(pairs), rows * cols):
        chunk = pairs[off : off + rows * cols]
        grids.append(np.resize(chunk, rows * cols).reshape(rows, cols).astype(np.int32))
    grids += list(rng.integers(0, n_glyphs, (n, rows, cols), dtype=np.int32))
    return grids


# ================================================================================================
# Answers
# ================================================================================================

_WS_BYTES = b" \t\n\r\x0b\x0c"
_WS_RE = r"[ \t\n\r\f\v]"


def parse_answer_text(text: str, action_names: Sequence[str], max_actions: int) -> Tuple[List[int], bool]:
    """The specification of `AnswerCodec.decode` (host): (action ids, valid).

    Grammar (WS = ASCII whitespace ` \\t\\n\\r\\f\\v`, NAME = an action name, ASCII case-insensitive):
      1. The answer block is the text between the first `<answer>` and the first `</answer>` after it.
         Anything before it (e.g. `<think>...</think>`) and after it is ignored.
      2. The block must be  WS* NAME (WS* `||` WS* NAME)* WS*  in full.
      3. 1 <= number of actions <= max_actions.
    Otherwise (no block, unclosed block, empty block, unknown word, missing/trailing `||`, other
    characters, more than max_actions actions) the answer is invalid: ([], False). Nothing of an
    invalid answer is executed (no truncation to K).
    """
    m = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if m is None:
        return [], False
    names = "|".join(re.escape(a) for a in sorted(action_names, key=len, reverse=True))
    body = m.group(1)
    flags = re.ASCII | re.IGNORECASE
    if not re.fullmatch(rf"{_WS_RE}*(?:{names})(?:{_WS_RE}*\|\|{_WS_RE}*(?:{names}))*{_WS_RE}*", body, flags):
        return [], False
    lower = [a.lower() for a in action_names]
    ids = [lower.index(w.lower()) for w in re.findall(names, body, flags)]
    if len(ids) > max_actions:
        return [], False
    return ids, True


def decode_text(tokenizer, ids) -> str:
    """The host text of generated ids that `parse_answer_text` reads."""
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def token_bytes(tokenizer) -> List[bytes]:
    """Host: the bytes each token id contributes to `decode_text` (ByteLevel or plain-string vocabularies)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    backend = tokenizer.backend_tokenizer
    added = {i: t.content for i, t in backend.get_added_tokens_decoder().items()}
    byte_level = type(backend.decoder).__name__ == "ByteLevel"
    inv = {c: b for b, c in bytes_to_unicode().items()}
    out = []
    for i in range(len(tokenizer)):
        if i in added:
            out.append(added[i].encode("utf-8"))
            continue
        s = backend.id_to_token(i)
        if s is None:
            out.append(b"")
        elif byte_level and all(c in inv for c in s):
            out.append(bytes(inv[c] for c in s))
        else:
            out.append(s.encode("utf-8"))
    return out


# byte-level DFA states
_OPEN, _CLOSE = b"<answer>", b"</answer>"
S_BODY, S_AFTER, S_SEP1, S_AFTER_SEP = 8, 9, 10, 11
S_CLOSE0 = 12  # CLOSE k (k=1..8 matched chars of '</answer>') is S_CLOSE0 + k - 1
S_DONE, S_ERROR, S_TRIE0 = 20, 21, 22


def _byte_dfa(action_names: Sequence[str]):
    """(next [S, 256] int32, emit [S, 256] int32 action id or -1) of the grammar in `parse_answer_text`."""
    lower = [a.lower() for a in action_names]
    if len(set(lower)) != len(lower):
        raise CodecError(f"action names clash case-insensitively: {action_names}")
    for a in lower:
        if not a or not all(c in string.ascii_letters + string.digits + "_" for c in a):
            raise CodecError(f"action names must be ASCII alphanumeric: {a!r}")
    children: List[Dict[int, int]] = [{}]  # trie node 0 = root (not a DFA state)
    terminal: Dict[int, int] = {}
    for idx, a in enumerate(lower):
        node = 0
        for ch in a.encode():
            if ch not in children[node]:
                children.append({})
                children[node][ch] = len(children) - 1
            node = children[node][ch]
        terminal[node] = idx
    n_states = S_TRIE0 + len(children) - 1
    nxt = np.full((n_states, 256), S_ERROR, np.int32)
    emit = np.full((n_states, 256), -1, np.int32)
    low = np.arange(256)
    low = np.where((low >= 65) & (low <= 90), low + 32, low)

    def trie_state(node):
        return S_TRIE0 + node - 1

    def start_action(s):  # from a state expecting an action name
        for ch, child in children[0].items():
            for b in range(256):
                if low[b] == ch:
                    nxt[s, b] = trie_state(child)

    # search for '<answer>' (KMP; '<answer>' has no proper border but '<')
    for k in range(8):
        for b in range(256):
            if b == _OPEN[k]:
                nxt[k, b] = S_BODY if k == 7 else k + 1
            else:
                nxt[k, b] = 1 if b == ord("<") else 0
    for s in (S_BODY, S_AFTER_SEP):
        for b in _WS_BYTES:
            nxt[s, b] = s
        start_action(s)
    nxt[S_BODY, ord("<")] = S_CLOSE0  # '</answer>' right away: empty (invalid, 0 actions)
    for b in _WS_BYTES:
        nxt[S_AFTER, b] = S_AFTER
    nxt[S_AFTER, ord("|")] = S_SEP1
    nxt[S_AFTER, ord("<")] = S_CLOSE0
    nxt[S_SEP1, ord("|")] = S_AFTER_SEP
    for k in range(1, 9):
        s = S_CLOSE0 + k - 1
        if k < 9:
            b = _CLOSE[k]
            nxt[s, b] = S_DONE if k == 8 else s + 1
    nxt[S_DONE, :] = S_DONE
    for node in range(1, len(children)):
        s = trie_state(node)
        for b in range(256):
            if low[b] in children[node]:
                nxt[s, b] = trie_state(children[node][low[b]])
            elif node in terminal:
                after = S_AFTER if (b in _WS_BYTES or b in (ord("|"), ord("<"))) else S_ERROR
                if after != S_ERROR:
                    emit[s, b] = terminal[node]
                    nxt[s, b] = nxt[S_AFTER, b]
    return nxt, emit


@struct.dataclass
class AnswerCodec:
    """Generated answer tokens -> (actions [K], num_actions, valid), in-graph (see `parse_answer_text`).

    Built on the host by running the byte DFA of the grammar over every token's bytes from every
    state; tokens with identical behaviour share a class, so the tables stay small even for 49k vocabs.
    token_class: int32 [V+1] (last = ids outside the vocabulary -> error),
    trans: int32 [S, C] next state, emits: int32 [E, S, C] actions emitted in order (-1 none).
    """

    token_class: jax.Array
    trans: jax.Array
    emits: jax.Array
    max_actions: int = struct.field(pytree_node=False)
    action_names: Tuple[str, ...] = struct.field(pytree_node=False)

    @classmethod
    def build(cls, env, tokenizer, max_actions: int) -> "AnswerCodec":
        names = tuple(env.action_names)
        nxt, emit = _byte_dfa(names)
        tb = token_bytes(tokenizer)
        _check_token_bytes(tokenizer, tb)
        n_s, v = nxt.shape[0], len(tb)
        width = max(1, max(len(b) for b in tb))
        mat = np.zeros((v, width), np.int32)
        lens = np.array([len(b) for b in tb], np.int32)
        for i, b in enumerate(tb):
            mat[i, : len(b)] = np.frombuffer(b, np.uint8)
        cur = np.repeat(np.arange(n_s, dtype=np.int32)[:, None], v, axis=1)  # [S, V]
        count = np.zeros((n_s, v), np.int32)
        bufs: List[np.ndarray] = []
        order = np.argsort(-lens, kind="stable")  # process long tokens only as far as they go
        for j in range(width):
            act = order[: int((lens > j).sum())]
            if act.size == 0:
                break
            c = cur[:, act]
            byte = mat[act, j][None, :]
            e = emit[c, byte]
            cur[:, act] = nxt[c, byte]
            hit = e >= 0
            if hit.any():
                cnt = count[:, act]
                need = int(cnt[hit].max()) + 1
                while len(bufs) < need:
                    bufs.append(np.full((n_s, v), -1, np.int32))
                for q in range(need):
                    sel = hit & (cnt == q)
                    if sel.any():
                        bq = bufs[q][:, act]
                        bq[sel] = e[sel]
                        bufs[q][:, act] = bq
                count[:, act] = cnt + hit
        if not bufs:
            bufs.append(np.full((n_s, v), -1, np.int32))
        keys = np.concatenate([cur] + bufs, axis=0).T  # [V, S*(1+E)]
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        n_c = uniq.shape[0]
        trans = np.concatenate([uniq[:, :n_s].T, np.full((n_s, 1), S_ERROR, np.int32)], axis=1)  # [S, C+1]
        emits = np.stack(
            [np.concatenate([uniq[:, n_s * (q + 1): n_s * (q + 2)].T, np.full((n_s, 1), -1, np.int32)], axis=1)
             for q in range(len(bufs))]
        )  # [E, S, C+1]
        token_class = np.concatenate([inv.reshape(-1).astype(np.int32), [n_c]]).astype(np.int32)
        return cls(token_class=jnp.asarray(token_class), trans=jnp.asarray(trans), emits=jnp.asarray(emits),
                   max_actions=int(max_actions), action_names=names)

    def decode(self, tokens, length):
        """tokens int32 [T], length int32 -> (actions int32 [K] (-1 padded), num_actions int32, valid bool).

        Token ids outside [0, V) make the answer invalid. Invalid answers return all -1 and 0 actions.
        """
        k = self.max_actions
        v = self.token_class.shape[0] - 1
        t_idx = jnp.arange(tokens.shape[0], dtype=jnp.int32)

        def step(carry, x):
            state, n, acts = carry
            tok, t = x
            ok = (tok >= 0) & (tok < v)
            c = self.token_class[jnp.where(ok, tok, v)]
            active = t < length
            for q in range(self.emits.shape[0]):
                a = self.emits[q, state, c]
                hit = active & (a >= 0)
                acts = jnp.where(hit & (jnp.arange(k) == n), a, acts)
                n = jnp.minimum(n + hit.astype(jnp.int32), k + 1)
            state = jnp.where(active, self.trans[state, c], state)
            return (state, n, acts), None

        init = (jnp.int32(0), jnp.int32(0), jnp.full((k,), -1, jnp.int32))
        (state, n, acts), _ = jax.lax.scan(step, init, (tokens.astype(jnp.int32), t_idx))
        valid = (state == S_DONE) & (n >= 1) & (n <= k)
        return jnp.where(valid, acts, -1), jnp.where(valid, n, 0), valid


def _check_token_bytes(tokenizer, tb: List[bytes], n: int = 64, seed: int = 0) -> None:
    """decode(ids) must be the UTF-8 (lossy) decoding of the concatenated token bytes."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        ids = rng.integers(0, len(tb), 12).tolist()
        want = decode_text(tokenizer, ids)
        got = b"".join(tb[i] for i in ids).decode("utf-8", "replace")
        if want != got:
            raise CodecError(f"cannot map tokens to bytes for this tokenizer: {ids}: {want!r} != {got!r}")
