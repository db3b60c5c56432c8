"""Jitted sampling for the policy LLM: ragged prefill + a single `lax.while_loop` decode with a KV cache.

Why this shape:
- The whole decode loop is one compiled `while_loop` (no per-token Python dispatch) and stops as soon
  as every row is done. It is a pure function of arrays, so the multi-turn rollout can call it inside
  its own `jit` / `while_loop`.
- Sampling knobs (`SamplingParams`) are *traced* values: changing temperature/top-k/top-p between calls
  never recompiles. Only `max_new_tokens`, the model graph and the attention buckets are static.
- Finished rows stop advancing their cache length, and every sampled token (including the stop token)
  is fed back through the model before the loop ends. So the returned `(cache, last_logits)` is the
  exact state after "prompt + generated tokens": the next turn prefills only its new tokens
  (per-row `lengths`) and decodes again, never re-encoding the history.
- `logprobs` are under the unmodified temperature-1 policy (what PPO's ratio needs); `sample_logprobs`
  are under the distribution actually sampled from (temperature / top-k / top-p applied).
- Attention cost per step grows with the *allocated* cache length, not the used one. `decode` therefore
  runs the loop in static key-length buckets (`attend_buckets`): while every row's length is below W it
  attends a W-long slice of the cache, then the slice is written back and the next bucket continues.

Shapes: B batch, T prompt length (right-padded), N = max_new_tokens, V vocab, S cache max_len.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from wmact_jax.models.kv_cache import KVCache

ApplyFn = Callable[..., Any]  # (tokens [B,T], cache, num_new [B]) -> ModelOutput(logits, values, cache)
# An ApplyFn may also take a keyword `logits_at` ([B] positions; logits [B,1,V] only there, as
# `llama.apply` does): prefill then pays the LM head once per row instead of once per prompt token.


# ----------------------------------------------------------------------------- sampling params
@struct.dataclass
class SamplingParams:
    """Traced sampling knobs; scalars or per-row [B] arrays.

    temperature <= 0 means greedy (argmax of the raw logits); top_k <= 0 disables top-k;
    top_p >= 1 disables nucleus filtering. Order as in transformers: temperature, top-k, top-p.
    """

    temperature: Any = 1.0
    top_k: Any = 0
    top_p: Any = 1.0

    @classmethod
    def greedy(cls) -> "SamplingParams":
        return cls(temperature=0.0, top_k=0, top_p=1.0)

    def as_arrays(self, batch: int) -> "SamplingParams":
        """Broadcast to [B] arrays with fixed dtypes (so Python floats and arrays share one trace)."""
        return SamplingParams(
            temperature=jnp.broadcast_to(jnp.asarray(self.temperature, jnp.float32), (batch,)),
            top_k=jnp.broadcast_to(jnp.asarray(self.top_k, jnp.int32), (batch,)),
            top_p=jnp.broadcast_to(jnp.asarray(self.top_p, jnp.float32), (batch,)),
        )


def filter_logits(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Mask logits [B,V] outside the top-k set / top-p nucleus with -inf (static shapes, sort + cumsum).

    top_k, top_p: [B]. Tokens tied with the k-th / nucleus-boundary value are all kept.
    The nucleus is computed on the top-k-renormalised distribution (as transformers' warpers do).
    """
    B, V = logits.shape
    srt = -jnp.sort(-logits, axis=-1)  # [B,V] descending
    idx = jnp.arange(V)[None, :]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)  # [B]
    in_k = idx < k[:, None]  # [B,V]
    srt_k = jnp.where(in_k, srt, -jnp.inf)
    probs = jax.nn.softmax(srt_k, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before position i
    keep = in_k & ((before < top_p[:, None]) | (idx == 0))  # always keep the best token
    n_keep = jnp.sum(keep, axis=-1)  # [B] >= 1
    threshold = jnp.take_along_axis(srt, (n_keep - 1)[:, None], axis=-1)  # [B,1]
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def argmax(x: jax.Array) -> jax.Array:
    """jnp.argmax over the last axis (first maximal index; first NaN if any), as two plain reductions.

    XLA:CPU lowers jnp.argmax to a variadic (value, index) reduce that does not vectorise; a max followed
    by a min over matching indices is several times faster on [B, V] logits.
    """
    V = x.shape[-1]
    mx = jnp.max(x, axis=-1, keepdims=True)  # NaN if the row has one
    hit = (x == mx) | jnp.isnan(x)
    idx = jnp.min(jnp.where(hit, jnp.arange(V, dtype=jnp.int32), V), axis=-1)
    return jnp.minimum(idx, V - 1).astype(jnp.int32)


def sample_logits(key: jax.Array, logits: jax.Array, params: SamplingParams):
    """Draw one token per row from logits [B,V] (float32).

    Returns (tokens [B] int32, logprobs [B] under the raw temperature-1 policy, sample_logprobs [B]
    under the modified distribution actually sampled from; 0 for greedy rows).
    The temperature / sort-based filter / random draw are skipped (lax.cond) when no row needs them, and
    the policy log-prob is logits[token] - logsumexp(logits) (no [B,V] log-softmax is materialised), which
    keeps greedy decoding of large vocabularies cheap.
    """
    B, V = logits.shape
    p = params.as_arrays(B)
    greedy = p.temperature <= 0.0
    best = argmax(logits)  # [B] greedy tokens

    def draw(_):
        temp = jnp.where(greedy, 1.0, p.temperature)
        scaled = logits / temp[:, None]
        need_filter = jnp.any(~greedy & ((p.top_k > 0) | (p.top_p < 1.0)))
        scaled = jax.lax.cond(need_filter, lambda s: filter_logits(s, p.top_k, p.top_p), lambda s: s, scaled)
        slogp = jax.nn.log_softmax(scaled, axis=-1)  # [B,V]
        # Inverse-CDF draw: one uniform per row instead of V Gumbel variates (cheap for big vocabularies).
        u = jax.random.uniform(key, (B, 1), jnp.float32)
        cdf = jnp.cumsum(jnp.exp(slogp), axis=-1)  # [B,V]
        tok = jnp.sum(cdf < u * cdf[:, -1:], axis=-1)
        tok = jnp.minimum(tok, V - 1)
        # Guard against float round-off landing on a masked (-inf) token: fall back to the argmax.
        slp = jnp.take_along_axis(slogp, tok[:, None], axis=-1)[:, 0]
        tok = jnp.where(slp > -jnp.inf, tok, argmax(scaled)).astype(jnp.int32)
        return tok, jnp.take_along_axis(slogp, tok[:, None], axis=-1)[:, 0]

    sampled, slp = jax.lax.cond(jnp.all(greedy), lambda _: (best, jnp.zeros((B,), jnp.float32)), draw, None)
    tok = jnp.where(greedy, best, sampled)
    lse = jax.nn.logsumexp(logits, axis=-1)  # [B]
    lp = jnp.take_along_axis(logits, tok[:, None], axis=-1)[:, 0] - lse
    slp = jnp.where(greedy, 0.0, slp)
    return tok, lp, slp


# ----------------------------------------------------------------------------- model plumbing
def _is_split(model) -> bool:
    return isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nnx.GraphDef)


def _as_apply(model) -> tuple[ApplyFn, Any]:
    """Normalise `model` to (apply_fn(tokens, cache, num_new), value_head flag or None if unknown).

    Accepts an nnx module, a `(graphdef, state)` pair from `nnx.split`, or a callable apply function.
    """
    if isinstance(model, nnx.Module):
        return ((lambda t, c, n, logits_at=None: model(t, c, n, logits_at=logits_at)),
                getattr(getattr(model, "config", None), "value_head", None))
    if _is_split(model):
        from wmact_jax.models.llama import apply
        graphdef, state = model
        return (lambda t, c, n, logits_at=None: apply(graphdef, state, t, c, n, logits_at=logits_at)), None
    if callable(model):
        return model, None
    raise TypeError(f"model must be an nnx.Module, a (graphdef, state) pair or an apply callable; got {type(model)}")


class SampleOutput(NamedTuple):
    tokens: jax.Array  # [B,N] int32 generated tokens (pad_id after a row stops)
    logprobs: jax.Array  # [B,N] f32 log pi(token) under the raw temperature-1 policy
    sample_logprobs: jax.Array  # [B,N] f32 log-prob under the sampling distribution (0 for greedy)
    values: jax.Array | None  # [B,N] f32 value at the position that predicted each token, or None
    mask: jax.Array  # [B,N] int32: 1 for generated tokens up to and including the stop token
    num_generated: jax.Array  # [B] int32
    stopped: jax.Array  # [B] bool: ended on EOS / stop token / stop sequence (False: length cut or inactive)
    cache: KVCache  # prompt + all generated tokens (stop token included), lengths advanced accordingly
    last_logits: jax.Array  # [B,V] f32 next-token logits after the generated tokens
    last_values: jax.Array | None  # [B] f32 value at that position (value-head models)


# ----------------------------------------------------------------------------- prefill
def accepts_logits_at(apply_fn: ApplyFn) -> bool:
    """Whether apply_fn takes a `logits_at` keyword (checked on its signature, at trace time)."""
    try:
        params = inspect.signature(apply_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "logits_at" or p.kind == p.VAR_KEYWORD for p in params)


def _windowed_apply(apply_fn: ApplyFn, tokens, cache: KVCache, num_new, buckets: Sequence[int], **kw):
    """apply_fn on the shortest cache prefix [0, W) that holds every row's writes (lax.switch on W).

    Attention and the cache read/write cost scale with the cache length given to the model, so a long
    preallocated cache (multi-turn rollouts) is only paid for once the histories are actually long.
    """
    S, T = cache.max_len, tokens.shape[1]
    buckets = [w for w in buckets if w >= T]
    if len(buckets) <= 1:
        return apply_fn(tokens, cache, num_new, **kw)
    need = jnp.max(cache.lengths) + T  # the model writes all T columns of every row at lengths[b]

    def branch(W):
        def f(cache):
            if W == S:
                return apply_fn(tokens, cache, num_new, **kw)
            out = apply_fn(tokens, cache.prefix(W), num_new, **kw)
            return out._replace(cache=cache.with_prefix(out.cache))
        return f

    index = jnp.sum(jnp.asarray(buckets)[:-1] < need)  # first bucket with need <= W (else the full cache)
    return jax.lax.switch(index, [branch(w) for w in buckets], cache)


def prefill_fn(apply_fn: ApplyFn, tokens, lengths, cache: KVCache, last_logits=None, last_values=None,
               attend_buckets: Sequence[int] | None = None):
    """Pure prefill: append right-padded tokens [B,T] (row b has lengths[b] valid ones) to the cache.

    Returns (last_logits [B,V], cache, last_values [B] or None). Rows with lengths 0 keep the given
    last_logits / last_values (zeros if none given): nothing new was appended for them.
    Needs max(cache.lengths) + T <= max_len (the model writes the padding columns too).
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    B, T = tokens.shape
    lengths = jnp.broadcast_to(jnp.asarray(lengths, jnp.int32), (B,))
    S = cache.max_len
    buckets = tuple(attend_buckets) if attend_buckets is not None else attend_buckets_for(S)
    idx = jnp.clip(lengths - 1, 0, T - 1)  # each row's last new token
    if accepts_logits_at(apply_fn):  # logits / values only at idx: [B,1,V]
        out = _windowed_apply(apply_fn, tokens, cache, lengths, buckets, logits_at=idx)
        idx = jnp.zeros_like(idx)
    else:
        out = _windowed_apply(apply_fn, tokens, cache, lengths, buckets)
    ll = jnp.take_along_axis(out.logits, idx[:, None, None], axis=1)[:, 0]  # [B,V]
    prev = jnp.zeros_like(ll) if last_logits is None else last_logits.astype(ll.dtype)
    ll = jnp.where((lengths > 0)[:, None], ll, prev)
    lv = None
    if out.values is not None:
        lv = jnp.take_along_axis(out.values, idx[:, None], axis=1)[:, 0]
        lv = jnp.where(lengths > 0, lv, 0.0 if last_values is None else last_values)
    return ll, out.cache, lv


def broadcast_cache(cache: KVCache, batch: int) -> KVCache:
    """A batch-1 cache repeated to `batch` rows (every buffer and the lengths)."""
    if cache.batch != 1:
        raise ValueError(f"broadcast_cache takes a batch-1 cache, got batch {cache.batch}")
    axis = 0 if cache.per_layer else 1  # per-layer buffers [batch, ...]; stacked [layers, batch, ...]

    def rows(x):
        shape = list(x.shape)
        shape[axis] = batch
        return jnp.broadcast_to(x, tuple(shape))

    return cache.replace(k=jax.tree.map(rows, cache.k), v=jax.tree.map(rows, cache.v),
                         lengths=jnp.broadcast_to(cache.lengths, (batch,)))


def prefill_shared_head_fn(apply_fn: ApplyFn, head, tokens, lengths, init_cache: Callable[[int, int], KVCache],
                           max_len: int, attend_buckets: Sequence[int] | None = None,
                           shard: Callable[[Any], Any] | None = None):
    """Prefill B prompts that all begin with the same `head` tokens [H] (a system prompt), into a new cache.

    The head is run once, at batch 1, and its keys/values are copied to every row; then each row's own
    tokens [B, T] (right-padded, lengths [B]) are prefilled after it. Equal to prefilling
    `concat(head, tokens[b, :lengths[b]])` per row (up to float round-off of a batch-1 against a batch-B
    matmul), for H x (B - 1) fewer tokens through the model: with a rules prompt of a few hundred tokens
    and short per-row states, most of a rollout's first prefill. An empty head is a plain prefill.
    `init_cache(batch, max_len)` -> empty cache; `shard` (optional) constrains the batch-B cache (e.g. to
    a mesh's data axes).
    -> (last_logits [B, V], cache with lengths H + lengths, last_values [B] or None).
    """
    head = jnp.asarray(head, jnp.int32).reshape(1, -1)  # [1, H]
    tokens = jnp.asarray(tokens, jnp.int32)
    B, H = tokens.shape[0], head.shape[1]
    shard = shard or (lambda tree: tree)
    if H == 0:  # nothing shared: a plain prefill into an empty cache
        return prefill_fn(apply_fn, tokens, lengths, shard(init_cache(B, max_len)), attend_buckets=attend_buckets)
    _, cache, _ = prefill_fn(apply_fn, head, jnp.full((1,), H, jnp.int32), init_cache(1, max_len),
                             attend_buckets=attend_buckets)
    return prefill_fn(apply_fn, tokens, lengths, shard(broadcast_cache(cache, B)), attend_buckets=attend_buckets)


# The static arguments of the two jitted entry points (a compiled executable is called without them:
# benchmarks/profile_decode.py runs one).
PREFILL_STATIC = ("graphdef", "attend_buckets")
DECODE_STATIC = ("graphdef", "max_new_tokens", "pad_id", "attend_buckets")


@functools.partial(jax.jit, static_argnames=PREFILL_STATIC, donate_argnames=("cache",))
def _prefill_split(graphdef, state, tokens, lengths, cache, last_logits, last_values, attend_buckets):
    from wmact_jax.models.llama import apply
    return prefill_fn(lambda t, c, n, logits_at=None: apply(graphdef, state, t, c, n, logits_at=logits_at), tokens,
                      lengths, cache, last_logits, last_values, attend_buckets)


def prefill(model, tokens, lengths, cache: KVCache, *, last_logits=None, last_values=None,
            return_values: bool = False, attend_buckets: Sequence[int] | None = None):
    """Ragged prefill. tokens [B,T] right-padded, lengths [B] -> (last_logits [B,V], cache)
    (+ last_values [B] if return_values). Jitted for modules / (graphdef, state); the cache is donated.
    attend_buckets: static key-length windows (default `attend_buckets_for(max_len)`).
    """
    if isinstance(model, nnx.Module):
        model = nnx.split(model)
    buckets = tuple(int(b) for b in (attend_buckets or attend_buckets_for(cache.max_len)))
    if _is_split(model):
        ll, cache, lv = _prefill_split(model[0], model[1], tokens, lengths, cache, last_logits, last_values,
                                       buckets)
    else:
        ll, cache, lv = prefill_fn(_as_apply(model)[0], tokens, lengths, cache, last_logits, last_values, buckets)
    return (ll, cache, lv) if return_values else (ll, cache)


# ----------------------------------------------------------------------------- decode
@struct.dataclass
class _Loop:
    step: jax.Array  # [] int32
    key: jax.Array
    tokens: jax.Array  # [B,N]
    logprobs: jax.Array  # [B,N]
    sample_logprobs: jax.Array  # [B,N]
    values: jax.Array  # [B,N] (zeros if no value head)
    mask: jax.Array  # [B,N]
    done: jax.Array  # [B] bool
    stopped: jax.Array  # [B] bool
    recent: jax.Array  # [B,L] last L generated tokens (for stop sequences)
    cache: KVCache
    last_logits: jax.Array  # [B,V]
    last_values: jax.Array  # [B]


def attend_buckets_for(max_len: int, base: int | None = 256) -> tuple[int, ...]:
    """Static key-length windows: base, 2*base, ... < max_len, then max_len. base None -> (max_len,)."""
    if not base or base >= max_len:
        return (max_len,)
    out, w = [], base
    while w < max_len:
        out.append(w)
        w *= 2
    return tuple(out) + (max_len,)


def decode_fn(apply_fn: ApplyFn, cache: KVCache, last_logits, key, *, max_new_tokens: int,
              params: SamplingParams | None = None, stop_token_ids=None, stop_sequences=None, eos=None,
              active=None, last_values=None, pad_id: int = 0, attend_buckets: Sequence[int] | None = None,
              has_values: bool | None = None) -> SampleOutput:
    """Pure decode loop (see `decode`); usable inside any jit. `attend_buckets` must be static."""
    N = int(max_new_tokens)
    B, V = last_logits.shape
    S = cache.max_len
    params = SamplingParams() if params is None else params
    stop_ids = [jnp.zeros((0,), jnp.int32)]
    for s in (stop_token_ids, eos):
        if s is not None:
            stop_ids.append(jnp.atleast_1d(jnp.asarray(s, jnp.int32)).reshape(-1))
    stop_ids = jnp.concatenate(stop_ids)  # [S_ids]
    if stop_sequences is not None:
        stop_seqs = jnp.asarray(stop_sequences, jnp.int32)  # [M,L], left-padded with -1
        if stop_seqs.ndim == 1:
            stop_seqs = stop_seqs[None]
    else:
        stop_seqs = jnp.zeros((0, 1), jnp.int32)
    L = stop_seqs.shape[1]
    active = jnp.ones((B,), bool) if active is None else jnp.broadcast_to(jnp.asarray(active, bool), (B,))

    if has_values is None:  # find out (at trace time, no FLOPs) whether the model returns values
        probe = jax.eval_shape(lambda c: apply_fn(jnp.zeros((B, 1), jnp.int32), c, jnp.zeros((B,), jnp.int32)),
                               cache)
        has_values = probe.values is not None
    if has_values and last_values is None:
        raise ValueError("the model has a value head: pass last_values (prefill(..., return_values=True)) "
                         "so values[:, 0] is the value of the prompt's last position")
    lv0 = jnp.zeros((B,), jnp.float32) if last_values is None else jnp.asarray(last_values, jnp.float32)

    st = _Loop(step=jnp.zeros((), jnp.int32), key=key,
               tokens=jnp.full((B, N), pad_id, jnp.int32), logprobs=jnp.zeros((B, N), jnp.float32),
               sample_logprobs=jnp.zeros((B, N), jnp.float32), values=jnp.zeros((B, N), jnp.float32),
               mask=jnp.zeros((B, N), jnp.int32), done=~active | (cache.lengths >= S),
               stopped=jnp.zeros((B,), bool), recent=jnp.full((B, L), -2, jnp.int32), cache=cache,
               last_logits=last_logits.astype(jnp.float32), last_values=lv0)

    def body(s: _Loop) -> _Loop:
        key, sub = jax.random.split(s.key)
        tok, lp, slp = sample_logits(sub, s.last_logits, params)
        live = ~s.done  # [B] rows generating this step
        tok = jnp.where(live, tok, pad_id)
        col = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x[:, None].astype(buf.dtype), s.step, 1)
        recent = jnp.concatenate([s.recent[:, 1:], tok[:, None]], axis=1) if L else s.recent
        hit = jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
        if stop_seqs.shape[0]:
            used = stop_seqs >= 0  # [M,L]
            match = jnp.all(~used[None] | (recent[:, None, :] == stop_seqs[None]), axis=-1)  # [B,M]
            hit |= jnp.any(match & jnp.any(used, axis=-1)[None], axis=-1)
        hit &= live
        # Feed the token back (stop token included) so cache/last_logits describe the full history.
        out = apply_fn(tok[:, None], s.cache, live.astype(jnp.int32))
        new_ll = jnp.where(live[:, None], out.logits[:, 0], s.last_logits)
        new_lv = s.last_values if out.values is None else jnp.where(live, out.values[:, 0], s.last_values)
        cache = out.cache
        done = s.done | hit | (cache.lengths >= S)
        return _Loop(step=s.step + 1, key=key, tokens=col(s.tokens, tok),
                     logprobs=col(s.logprobs, jnp.where(live, lp, 0.0)),
                     sample_logprobs=col(s.sample_logprobs, jnp.where(live, slp, 0.0)),
                     values=col(s.values, jnp.where(live, s.last_values, 0.0)),
                     mask=col(s.mask, live.astype(jnp.int32)), done=done, stopped=s.stopped | hit,
                     recent=recent, cache=cache, last_logits=new_ll, last_values=new_lv)

    def not_finished(s: _Loop):
        return (s.step < N) & ~jnp.all(s.done)

    buckets = tuple(attend_buckets) if attend_buckets is not None else attend_buckets_for(S)
    if buckets[-1] != S or any(b > S for b in buckets):
        raise ValueError(f"attend_buckets {buckets} must be increasing and end at the cache length {S}")
    for W in buckets:
        if W == S:
            st = jax.lax.while_loop(not_finished, body, st)
            break

        def run_window(st, W=W):
            # Attend only keys [0, W): valid while every row (done or not) has length < W, since the
            # model also writes (ignored) padding at position lengths[b] for rows with num_new 0.
            full = st.cache
            st = st.replace(cache=full.prefix(W))
            st = jax.lax.while_loop(lambda s: not_finished(s) & (jnp.max(s.cache.lengths) < W), body, st)
            return st.replace(cache=full.with_prefix(st.cache))

        st = jax.lax.cond(not_finished(st) & (jnp.max(st.cache.lengths) < W), run_window, lambda s: s, st)

    return SampleOutput(tokens=st.tokens, logprobs=st.logprobs, sample_logprobs=st.sample_logprobs,
                        values=st.values if has_values else None, mask=st.mask,
                        num_generated=jnp.sum(st.mask, axis=-1), stopped=st.stopped, cache=st.cache,
                        last_logits=st.last_logits, last_values=st.last_values if has_values else None)


@functools.partial(jax.jit, static_argnames=DECODE_STATIC, donate_argnames=("cache",))
def _decode_split(graphdef, state, cache, last_logits, key, params, stop_token_ids, stop_sequences, eos,
                  active, last_values, *, max_new_tokens, pad_id, attend_buckets):
    from wmact_jax.models.llama import apply, layer_weights
    lws = layer_weights(graphdef, state) if cache.per_layer else None  # sliced once, outside the loop
    return decode_fn(lambda t, c, n: apply(graphdef, state, t, c, n, layer_weights=lws), cache, last_logits, key,
                     max_new_tokens=max_new_tokens, params=params, stop_token_ids=stop_token_ids,
                     stop_sequences=stop_sequences, eos=eos, active=active, last_values=last_values,
                     pad_id=pad_id, attend_buckets=attend_buckets)


def decode(model, cache: KVCache, last_logits, key, *, max_new_tokens: int, params: SamplingParams | None = None,
           stop_token_ids=None, stop_sequences=None, eos=None, active=None, last_values=None, pad_id: int = 0,
           attend_buckets: Sequence[int] | None = None) -> SampleOutput:
    """Sample up to `max_new_tokens` (static) tokens per row in one jitted `lax.while_loop`.

    cache: KVCache holding each row's history (lengths [B]); needs lengths + max_new_tokens <= max_len
      (rows whose cache fills up stop, unstopped).
    last_logits [B,V]: next-token logits after the history (from `prefill` or a previous decode).
    stop_token_ids [S] / eos (int or [E]): single-token stops. stop_sequences [M,L] int: multi-token stops,
      left-padded with -1 (matched against generated tokens only). All traced: new values do not recompile.
    active [B] bool: rows that generate at all (inactive rows are untouched, mask 0).
    last_values [B]: value at the history's last position (required for value-head models).
    The cache is donated (do not reuse the argument); use the returned one.
    """
    B = last_logits.shape[0]
    params = (SamplingParams() if params is None else params).as_arrays(B)
    # Normalise optional arguments to fixed-shape arrays so common variations share one compilation:
    # single-token stops (eos + stop ids) padded with -1 (never matches) to a multiple of 8.
    ids = [np.atleast_1d(np.asarray(x, np.int64)).reshape(-1) for x in (eos, stop_token_ids)
           if x is not None and not isinstance(x, jax.Array)]
    traced_ids = [jnp.asarray(x, jnp.int32).reshape(-1) for x in (eos, stop_token_ids) if isinstance(x, jax.Array)]
    flat = np.concatenate(ids + [np.zeros((0,), np.int64)]).astype(np.int32)
    pad = (-(len(flat) + sum(t.shape[0] for t in traced_ids))) % 8
    stop_token_ids = jnp.concatenate([jnp.asarray(flat)] + traced_ids + [jnp.full((pad,), -1, jnp.int32)])
    eos = None
    if stop_sequences is not None:
        stop_sequences = jnp.asarray(stop_sequences, jnp.int32)
        stop_sequences = stop_sequences[None] if stop_sequences.ndim == 1 else stop_sequences
    active = jnp.ones((B,), bool) if active is None else jnp.broadcast_to(jnp.asarray(active, bool), (B,))
    if isinstance(model, nnx.Module):
        model = nnx.split(model)
    buckets = tuple(int(b) for b in (attend_buckets or attend_buckets_for(cache.max_len)))
    if _is_split(model):
        return _decode_split(model[0], model[1], cache, last_logits, key, params,
                             stop_token_ids, stop_sequences, eos, active, last_values,
                             max_new_tokens=int(max_new_tokens), pad_id=int(pad_id), attend_buckets=buckets)
    return decode_fn(_as_apply(model)[0], cache, last_logits, key, max_new_tokens=max_new_tokens, params=params,
                     stop_token_ids=stop_token_ids, stop_sequences=stop_sequences, eos=eos, active=active,
                     last_values=last_values, pad_id=pad_id, attend_buckets=buckets)


# ----------------------------------------------------------------------------- host helper
@dataclasses.dataclass
class GenerateResult:
    tokens: list[list[int]]  # per prompt: generated ids (stop token included if hit)
    logprobs: list[list[float]]  # per prompt: temperature-1 policy log-probs of those ids
    stopped: list[bool]
    output: SampleOutput  # raw device arrays (cache, last_logits, ...) for continuing


def _round_up(x: int, m: int) -> int:
    return max(m, -(-x // m) * m)


def make_batch(prompts: Sequence[Sequence[int]], pad_id: int = 0, multiple: int = 16):
    """Right-pad prompts to a length rounded up to `multiple` (limits recompiles) -> tokens [B,T], lengths [B]."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be non-empty token lists")
    T = _round_up(max(len(p) for p in prompts), multiple)
    tokens = np.full((len(prompts), T), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return tokens, np.asarray([len(p) for p in prompts], np.int32)


def generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             params: SamplingParams | None = None, key=None, seed: int = 0, eos=None, stop_token_ids=None,
             stop_sequences=None, pad_id: int = 0, cache_len: int | None = None, cache_dtype=None,
             attend_buckets: Sequence[int] | None = None) -> GenerateResult:
    """Host convenience: token-id prompts -> sampled continuations (prefill + decode, both jitted).

    model: nnx Transformer or (graphdef, state). eos defaults to the model config's eos ids.
    cache_len defaults to prompt length + max_new_tokens rounded up to 64: attention cost scales with it.
    """
    if isinstance(model, nnx.Module):
        config = model.config
        model = nnx.split(model)
    else:
        config = nnx.merge(*model).config if _is_split(model) else None
    if config is None:
        raise TypeError("generate needs an nnx Transformer or a (graphdef, state) pair")
    if eos is None and config.eos_token_ids:
        eos = list(config.eos_token_ids)
    tokens, lengths = make_batch(prompts, pad_id)
    B, T = tokens.shape
    S = cache_len or _round_up(T + max_new_tokens, 64)
    cache = KVCache.init(config, B, S, cache_dtype)
    key = jax.random.key(seed) if key is None else key
    has_values = bool(config.value_head)
    ll, cache, lv = prefill(model, tokens, lengths, cache, return_values=True, attend_buckets=attend_buckets)
    out = decode(model, cache, ll, key, max_new_tokens=max_new_tokens, params=params, eos=eos,
                 stop_token_ids=stop_token_ids, stop_sequences=stop_sequences, pad_id=pad_id,
                 last_values=lv if has_values else None, attend_buckets=attend_buckets)
    toks, lps, mask = (np.asarray(x) for x in (out.tokens, out.logprobs, out.mask))
    n = mask.sum(-1)
    return GenerateResult(tokens=[toks[i, : n[i]].tolist() for i in range(B)],
                          logprobs=[lps[i, : n[i]].tolist() for i in range(B)],
                          stopped=np.asarray(out.stopped).tolist(), output=out)
