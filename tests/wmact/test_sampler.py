"""Sampler: cached jitted decoding must match naive full forwards exactly (tokens, log-probs, values).

All tests share one tiny model and the same shapes (B=3, T=16, cache 64, N=8) so the jitted prefill /
decode compile once for the module.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wmact_jax import sampler as S
from wmact_jax.models import KVCache, ModelConfig, Transformer
from wmact_jax.models.llama import apply

V, N, CACHE = 64, 8, 64
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17]]


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig.tiny(vocab_size=V, num_layers=2, hidden_size=32, intermediate_size=64, num_heads=4,
                           num_kv_heads=2, max_position_embeddings=256, value_head=True)
    gd, st = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    # Scale weights so the next-token distribution is peaked (no near-ties for argmax comparisons)
    # and the zero-initialised value head gives non-trivial values.
    st = jax.tree.map(lambda x: x * 15 if x.ndim >= 2 else x + 0.3, st)
    return cfg, (gd, st)


def run(model, prompts, *, max_new=N, **kw):
    cfg, m = model
    tok, ln = S.make_batch(prompts)
    cache = KVCache.init(cfg, len(prompts), CACHE)
    ll, cache, lv = S.prefill(m, tok, ln, cache, return_values=True, attend_buckets=kw.get("attend_buckets"))
    kw.setdefault("params", S.SamplingParams.greedy())
    return S.decode(m, cache, ll, kw.pop("key", jax.random.key(0)), max_new_tokens=max_new, last_values=lv, **kw)


@jax.jit
def _forward_padded(state_pair, tokens):
    out = apply(*state_pair, tokens)
    return jax.nn.log_softmax(out.logits[0], -1), out.values[0]


def full_forward(model, seq):
    """Uncached causal forward of one sequence -> (log_softmax [T,V], values [T]).

    Right-padded to a fixed 48 tokens (one compilation): causality makes the padding irrelevant.
    """
    tokens = np.zeros((1, 48), np.int32)
    tokens[0, : len(seq)] = seq
    lp, val = _forward_padded(model[1], tokens)
    return np.asarray(lp)[: len(seq)], np.asarray(val)[: len(seq)]


def test_greedy_matches_naive_loop_with_logprobs_and_values(model):
    out = run(model, PROMPTS)
    assert out.tokens.shape == (3, N) and out.mask.shape == (3, N) and out.values.shape == (3, N)
    np.testing.assert_array_equal(out.mask, 1)
    np.testing.assert_array_equal(out.num_generated, N)
    for b, p in enumerate(PROMPTS):
        seq = list(p)
        for _ in range(N):  # naive: full forward every step, argmax
            lp, _ = full_forward(model, seq)
            seq.append(int(np.argmax(lp[-1])))
        gen = seq[len(p):]
        np.testing.assert_array_equal(np.asarray(out.tokens[b]), gen)
        lp, val = full_forward(model, seq)
        pos = np.arange(len(p) - 1, len(p) - 1 + N)  # positions that predicted each generated token
        np.testing.assert_allclose(np.asarray(out.logprobs[b]), lp[pos, gen], atol=2e-4)
        np.testing.assert_allclose(np.asarray(out.values[b]), val[pos], atol=2e-4)
        np.testing.assert_allclose(np.asarray(out.last_values[b]), val[-1], atol=2e-4)
        np.testing.assert_allclose(np.asarray(jax.nn.log_softmax(out.last_logits[b])), lp[-1], atol=2e-4)
    assert int(out.cache.lengths[0]) == len(PROMPTS[0]) + N
    np.testing.assert_array_equal(out.sample_logprobs, 0.0)  # greedy


def test_ragged_batch_equals_each_prompt_alone(model):
    together = run(model, PROMPTS)
    for b, p in enumerate(PROMPTS):
        alone = run(model, [p, p, p])  # same shapes (no recompile), no other prompt lengths in the batch
        np.testing.assert_array_equal(alone.tokens[0], together.tokens[b])
        np.testing.assert_allclose(alone.logprobs[0], together.logprobs[b], atol=1e-5)


def _first_stop(gen, stop_ids):
    for i, t in enumerate(gen):
        if t in stop_ids:
            return i
    return None


def test_stop_tokens_and_eos_per_row_masks(model):
    ref = np.asarray(run(model, PROMPTS).tokens)
    eos, stop = int(ref[0, 2]), int(ref[1, 4])
    out = run(model, PROMPTS, eos=eos, stop_token_ids=[stop], pad_id=63)
    for b in range(3):
        i = _first_stop(ref[b].tolist(), {eos, stop})
        n = N if i is None else i + 1
        assert int(out.num_generated[b]) == n and bool(out.stopped[b]) == (i is not None)
        np.testing.assert_array_equal(out.mask[b], (np.arange(N) < n).astype(np.int32))
        np.testing.assert_array_equal(out.tokens[b, :n], ref[b, :n])
        np.testing.assert_array_equal(out.tokens[b, n:], 63)
        np.testing.assert_array_equal(out.logprobs[b, n:], 0.0)
        # Finished rows do not advance: the stop token is in the cache, nothing after it.
        assert int(out.cache.lengths[b]) == len(PROMPTS[b]) + n


def test_stop_sequences(model):
    ref = np.asarray(run(model, PROMPTS).tokens)
    seq = [int(ref[2, 3]), int(ref[2, 4])]
    out = run(model, PROMPTS, stop_sequences=[[-1, -1, 60], [-1] + seq])  # left-padded with -1
    for b in range(3):
        g = ref[b].tolist()
        hits = [i for i in range(N) if (i >= 1 and g[i - 1:i + 1] == seq) or g[i] == 60]
        n = hits[0] + 1 if hits else N
        assert int(out.num_generated[b]) == n, (b, g, seq)
    assert bool(out.stopped[2])


def test_inactive_rows_untouched(model):
    out = run(model, PROMPTS, active=jnp.array([True, False, True]))
    np.testing.assert_array_equal(out.mask[1], 0)
    assert int(out.cache.lengths[1]) == len(PROMPTS[1]) and not bool(out.stopped[1])


def test_continuation_equals_decoding_concatenated_prompt(model):
    """Turn 2 = prefill only the new tokens into the returned cache, then decode: must equal decoding
    prompt + turn-1 output + new tokens from scratch (stopped rows included)."""
    cfg, m = model
    ref = np.asarray(run(model, PROMPTS).tokens)
    eos = int(ref[1, 3])  # row 1 stops early in turn 1
    turn1 = run(model, PROMPTS, eos=eos)
    appended = [[20, 21, 22], [30], [40, 41, 42, 43, 44]]
    tok, ln = S.make_batch(appended)
    ll, cache, lv = S.prefill(m, tok, ln, turn1.cache, last_logits=turn1.last_logits, last_values=turn1.last_values,
                              return_values=True)
    turn2 = S.decode(m, cache, ll, jax.random.key(1), max_new_tokens=N, last_values=lv,
                     params=S.SamplingParams.greedy())
    n1 = np.asarray(turn1.num_generated)
    assert n1[1] < N
    concat = [PROMPTS[b] + np.asarray(turn1.tokens[b, :n1[b]]).tolist() + appended[b] for b in range(3)]
    scratch = run(model, concat)
    np.testing.assert_array_equal(turn2.tokens, scratch.tokens)
    np.testing.assert_allclose(turn2.logprobs, scratch.logprobs, atol=2e-4)
    np.testing.assert_allclose(turn2.values, scratch.values, atol=2e-4)
    np.testing.assert_array_equal(turn2.cache.lengths, [len(c) + N for c in concat])


def test_attend_buckets_equal_full_window(model):
    """Prefill in the 16-key window, decode across the 16 -> 32 window boundary: same results as full 64."""
    full = run(model, PROMPTS, max_new=N, attend_buckets=(64,))
    win = run(model, PROMPTS, max_new=N, attend_buckets=(16, 32, 64))
    np.testing.assert_array_equal(full.tokens, win.tokens)
    np.testing.assert_allclose(full.logprobs, win.logprobs, atol=1e-5)
    np.testing.assert_array_equal(full.cache.lengths, win.cache.lengths)
    np.testing.assert_allclose(full.cache.stacked().k, win.cache.stacked().k, atol=1e-5)


def test_legacy_cache_layout_and_plain_apply_fn_give_same_results(model):
    """A "bskd" cache (built directly, as hand-made caches are) and an apply_fn without `logits_at`
    (prefill then gathers from the full logits) give the same tokens / log-probs / values."""
    cfg, (gd, st) = model
    ref = run(model, PROMPTS, attend_buckets=(16, 32, 64))
    tok, ln = S.make_batch(PROMPTS)
    plain = lambda t, c, n: apply(gd, st, t, c, n)  # no logits_at keyword
    init = KVCache.init(cfg, 3, CACHE, layout="bskd", per_layer=False)  # also the stacked storage

    @jax.jit
    def go(cache):
        ll, cache, lv = S.prefill_fn(plain, tok, ln, KVCache(k=cache.k, v=cache.v, lengths=cache.lengths),
                                     attend_buckets=(16, 32, 64))
        return S.decode_fn(plain, cache, ll, jax.random.key(0), max_new_tokens=N, params=S.SamplingParams.greedy(),
                           last_values=lv, attend_buckets=(16, 32, 64))

    out = go(init)
    assert out.cache.layout == "bskd" and out.cache.k.shape[2] == CACHE
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
    np.testing.assert_allclose(out.values, ref.values, atol=1e-5)
    np.testing.assert_allclose(out.last_logits, ref.last_logits, atol=1e-4)
    # "bskd" [L, B, S, KV, Dh] against "bkds" (k [L, B, KV, Dh, S], v [L, B, KV, S, Dh]). The layouts
    # reassociate float32 sums: differences up to ~5e-6 of the cache's largest entry (|k|, |v| reach
    # ~100 in this random model), so the bound is relative to that scale, not to each entry.
    for got, want in ((out.cache.k.transpose(0, 1, 3, 4, 2), ref.cache.stacked().k),
                      (jnp.swapaxes(out.cache.v, 2, 3), ref.cache.stacked().v)):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(jnp.abs(want).max()))
    np.testing.assert_array_equal(out.cache.lengths, ref.cache.lengths)


def test_top_k_1_equals_greedy_and_params_do_not_recompile(model):
    greedy = run(model, PROMPTS)
    sizes = S._decode_split._cache_size()
    for params, key in [(S.SamplingParams(0.7, 1, 1.0), 3), (S.SamplingParams(1.3, 1, 0.5), 4)]:
        out = run(model, PROMPTS, params=params, key=jax.random.key(key))
        np.testing.assert_array_equal(out.tokens, greedy.tokens)
        np.testing.assert_allclose(out.logprobs, greedy.logprobs, atol=1e-5)  # policy logprobs: raw logits
        np.testing.assert_allclose(out.sample_logprobs, 0.0, atol=1e-5)  # top-1 set: probability one
    run(model, PROMPTS, params=S.SamplingParams(jnp.float32(0.9), jnp.int32(5), jnp.float32(0.8)))
    assert S._decode_split._cache_size() == sizes  # traced knobs: no new compilation


def test_sample_logits_respects_top_k_top_p_single_trace():
    logits = jax.random.normal(jax.random.key(0), (4, 50)) * 3
    f = jax.jit(jax.vmap(chex.assert_max_traces(S.sample_logits, n=1), in_axes=(0, None, None)))
    keys = jax.random.split(jax.random.key(1), 200)
    p = np.asarray(jax.nn.softmax(logits, -1))
    order = np.argsort(-p, -1)
    rows = np.arange(4)
    tk, lp, slp = (np.asarray(x) for x in f(keys, logits, S.SamplingParams(1.0, 5, 1.0)))  # [200,4]
    tp, _, _ = (np.asarray(x) for x in f(keys, logits, S.SamplingParams(1.0, 0, 0.6)))
    tt, _, slp_t = (np.asarray(x) for x in f(keys, logits, S.SamplingParams(0.5, 0, 1.0)))
    for b in range(4):
        topk = set(order[b, :5])
        nucleus = set(order[b, : int(np.searchsorted(np.cumsum(p[b, order[b]]), 0.6)) + 1])
        assert set(tk[:, b]) <= topk and len(set(tk[:, b])) > 1
        assert set(tp[:, b]) <= nucleus
    np.testing.assert_allclose(lp, np.log(p[rows, tk]), atol=1e-5)  # raw policy log-probs
    assert np.all(slp >= lp - 1e-5)  # renormalised over the top-k set
    # temperature only: sample_logprobs = log_softmax(logits / T)
    ref = np.asarray(jax.nn.log_softmax(logits / 0.5, -1))
    np.testing.assert_allclose(slp_t, ref[rows, tt], atol=1e-5)
    # greedy rows mixed with sampled rows in one batch (per-row [B] params: a second signature)
    g = jax.jit(S.sample_logits)
    tok, _, _ = g(keys[1], logits, S.SamplingParams(jnp.array([0.0, 1.0, 0.0, 1.0]), 0, 1.0))
    np.testing.assert_array_equal(np.asarray(tok)[[0, 2]], np.argmax(p, -1)[[0, 2]])


def test_sampling_frequencies_match_distribution():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    draw = jax.jit(jax.vmap(lambda k: S.sample_logits(k, logits, S.SamplingParams(1.0, 0, 1.0))[0][0]))
    toks = np.asarray(draw(jax.random.split(jax.random.key(2), 4000)))
    freq = np.bincount(toks, minlength=4) / len(toks)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    draw_p = jax.jit(jax.vmap(lambda k: S.sample_logits(k, logits, S.SamplingParams(1.0, 0, 0.7))[0][0]))
    toks = np.asarray(draw_p(jax.random.split(jax.random.key(3), 2000)))
    freq = np.bincount(toks, minlength=4) / len(toks)  # nucleus {0, 1}, renormalised 5/8, 3/8
    np.testing.assert_allclose(freq, [0.625, 0.375, 0, 0], atol=0.04)


def test_generate_helper_and_value_head_requirement(model):
    cfg, m = model
    res = S.generate(m, [[1, 2, 3], [4]], max_new_tokens=5, params=S.SamplingParams.greedy(), eos=[])
    assert [len(t) for t in res.tokens] == [5, 5] and len(res.logprobs[0]) == 5
    tok, ln = S.make_batch(PROMPTS)
    ll, cache = S.prefill(m, tok, ln, KVCache.init(cfg, 3, CACHE))
    with pytest.raises(ValueError, match="last_values"):
        S.decode(m, cache, ll, jax.random.key(0), max_new_tokens=N)


@pytest.mark.parametrize("per_layer", [True, False])
def test_bfloat16_cache_under_float32_model_multiplies_in_bfloat16(model, per_layer):
    """A bfloat16 cache under a float32 model: the attention products read the cache as bfloat16 (the
    queries rounded down, float32 accumulation) instead of widening it, which XLA:CPU does not fuse into
    the dot; the result stays close to the float32 cache's."""
    cfg, (gd, st) = model
    tok, ln = S.make_batch(PROMPTS)
    greedy = S.SamplingParams.greedy()

    def go(dtype):
        cache = KVCache.init(cfg, 3, CACHE, dtype, per_layer=per_layer)
        ll, cache, lv = S.prefill((gd, st), tok, ln, cache, return_values=True)
        return S.decode((gd, st), cache, ll, jax.random.key(0), max_new_tokens=N, params=greedy, last_values=lv)

    ref, bf = go(jnp.float32), go(jnp.bfloat16)
    assert jax.tree.leaves(bf.cache.k)[0].dtype == jnp.bfloat16
    np.testing.assert_array_equal(bf.tokens, ref.tokens)
    np.testing.assert_allclose(bf.logprobs, ref.logprobs, atol=0.05)
    np.testing.assert_allclose(bf.values, ref.values, atol=0.05, rtol=0.02)

    # One decode step's program: no cache-sized widening to float32, bfloat16 products accumulated in float32.
    cache = KVCache.init(cfg, 3, CACHE, jnp.bfloat16, per_layer=per_layer)
    cache_shapes = {tuple(x.shape) for x in jax.tree.leaves((cache.k, cache.v))}
    jaxpr = jax.make_jaxpr(lambda c: apply(gd, st, tok[:, :1], c, jnp.ones((3,), jnp.int32)).logits)(cache)
    eqns = []

    def walk(jp):
        for e in jp.eqns:
            eqns.append(e)
            for sub in jax.core.jaxprs_in_params(e.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    widen = [e for e in eqns if e.primitive.name == "convert_element_type" and e.params["new_dtype"] == jnp.float32
             and tuple(e.invars[0].aval.shape) in cache_shapes]
    assert not widen
    dots = [e for e in eqns if e.primitive.name == "dot_general"
            and all(v.aval.dtype == jnp.bfloat16 for v in e.invars) and e.outvars[0].aval.dtype == jnp.float32]
    assert len(dots) >= 2 * cfg.num_layers


@pytest.mark.parametrize("per_layer", [True, False])
def test_shared_head_prefill_equals_prefilling_whole_prompts(model, per_layer):
    """A common head prefilled once at batch 1 and copied to every row, then each row's own tokens: the same
    cache, last logits / values and greedy continuation as prefilling head + row tokens row by row."""
    cfg, m = model
    head = [3, 1, 4, 1, 5, 9, 2]
    init = lambda b, s: KVCache.init(cfg, b, s, per_layer=per_layer)
    apply_fn = lambda t, c, n, logits_at=None: apply(*m, t, c, n, logits_at=logits_at)
    tok, ln = S.make_batch(PROMPTS)
    ll, cache, lv = jax.jit(lambda t, n: S.prefill_shared_head_fn(apply_fn, jnp.asarray(head), t, n, init, CACHE))(
        tok, ln)
    whole = [head + p for p in PROMPTS]
    wt, wl = S.make_batch(whole)
    ll_ref, cache_ref, lv_ref = S.prefill(m, wt, wl, init(3, CACHE), return_values=True)
    np.testing.assert_array_equal(cache.lengths, [len(w) for w in whole])
    np.testing.assert_allclose(ll, ll_ref, atol=1e-4)
    np.testing.assert_allclose(lv, lv_ref, atol=1e-4)
    k, k_ref = np.asarray(cache.stacked().k), np.asarray(cache_ref.stacked().k)  # [L, B, KV, Dh, S]
    for b, w in enumerate(whole):
        np.testing.assert_allclose(k[:, b, ..., : len(w)], k_ref[:, b, ..., : len(w)], rtol=1e-4, atol=1e-4)
    out = S.decode(m, cache, ll, jax.random.key(0), max_new_tokens=N, last_values=lv, params=S.SamplingParams.greedy())
    np.testing.assert_array_equal(out.tokens, run(model, whole).tokens)
    with pytest.raises(ValueError, match="batch-1 cache"):
        S.broadcast_cache(init(2, CACHE), 3)
