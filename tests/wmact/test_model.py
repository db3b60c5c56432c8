"""Model tests: parity with transformers' PyTorch Llama/Qwen2, KV-cache correctness, HF names, configs."""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wmact_jax.models import (HFTensorError, KVCache, ModelConfig, Transformer, apply, from_hf_tensors,
                              hf_shapes, load_model, to_hf_tensors)
from wmact_jax.models.llama import layer_weights, rope_cos_sin

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 16}
CASES = {
    "llama_untied_llama3": ("llama", dict(tie_word_embeddings=False, rope_scaling=LLAMA3_SCALING, rope_theta=500.0)),
    "llama_tied_linear": ("llama", dict(tie_word_embeddings=True, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "qwen2_tied": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1e6)),
}


def _perturb(model, seed):
    """HF inits norms to 1 and biases to 0: randomise everything so the parity test sees every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.1 * noise)
    return model


@functools.lru_cache(maxsize=None)
def hf_case(case):
    arch, extra = CASES[case]
    kw = {**SMALL, **extra}
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw, rms_norm_eps=1e-5))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw, rms_norm_eps=1e-6))
    model = _perturb(model.eval(), seed=len(case))
    if kw["tie_word_embeddings"]:
        model.tie_weights()
    tensors = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    config = ModelConfig.from_hf_dict(model.config.to_dict())
    return model, config, tensors


@functools.lru_cache(maxsize=None)
def jitted():
    return jax.jit(apply, static_argnums=0)


def run(model_or_split, tokens, cache=None, num_new=None):
    graphdef, state = model_or_split
    return jitted()(graphdef, state, jnp.asarray(tokens, jnp.int32), cache, num_new)


def split_of(config, tensors):
    return nnx.split(load_model(config, tensors))


def greedy_cached(split, config, prompt, steps, max_len=64):
    """Greedy decode one row with the KV cache (prefill, then one token per call)."""
    cache = KVCache.init(config, 1, max_len)
    out = run(split, np.asarray(prompt)[None], cache)
    toks = []
    for _ in range(steps):
        nxt = int(jnp.argmax(out.logits[0, -1]))
        toks.append(nxt)
        out = run(split, np.array([[nxt]]), out.cache)
    return toks


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_transformers(case):
    model, config, tensors = hf_case(case)
    assert config.architecture == CASES[case][0]
    split = split_of(config, tensors)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 24))
    with torch.no_grad():
        ref = model(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(run(split, tokens).logits)
    assert ours.dtype == np.float32 and ours.shape == (2, 24, config.vocab_size)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)
    # Greedy tokens over 10 steps (our KV-cached decode vs transformers.generate).
    prompt = tokens[0, :7]
    with torch.no_grad():
        ref_gen = model.generate(torch.tensor(prompt[None]), max_new_tokens=10, do_sample=False,
                                 pad_token_id=0, eos_token_id=None)
    ref_toks = ref_gen[0, 7:].tolist()
    assert greedy_cached(split, config, prompt, 10) == ref_toks


def test_export_loads_in_transformers():
    """to_hf_dict + to_hf_tensors: transformers rebuilds the same model from our export."""
    _, config, tensors = hf_case("llama_untied_llama3")
    state = from_hf_tensors(config, tensors)
    d = config.to_hf_dict()
    assert ModelConfig.from_hf_dict(d) == config
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**d)).eval()
    missing, unexpected = hf.load_state_dict({k: torch.tensor(v) for k, v in to_hf_tensors(config, state).items()},
                                             strict=False)
    assert not missing and not unexpected
    tokens = np.arange(20)[None] % config.vocab_size
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(run(split_of(config, tensors), tokens).logits), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["llama_untied_llama3", "qwen2_tied"])
def test_roundtrip_names(case):
    _, config, tensors = hf_case(case)
    back = to_hf_tensors(config, from_hf_tensors(config, tensors))
    expect = {k: v for k, v in tensors.items() if not (config.tie_word_embeddings and k == "lm_head.weight")}
    assert set(back) == set(expect) == set(hf_shapes(config))
    for k in expect:
        np.testing.assert_array_equal(back[k], expect[k], err_msg=k)


def test_value_head_absent_is_zero_and_exported():
    _, config, tensors = hf_case("qwen2_tied")
    cfg = config.replace(value_head=True)
    split = split_of(cfg, tensors)
    out = run(split, np.arange(5)[None])
    assert out.values.shape == (1, 5) and out.values.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out.values), 0.0)
    exported = to_hf_tensors(cfg, split[1])
    assert exported["value_head.weight"].shape == (1, cfg.hidden_size) and exported["value_head.bias"].shape == (1,)
    assert run(split_of(config, tensors), np.arange(5)[None]).values is None


def test_cached_decoding_equals_full_recompute():
    _, config, tensors = hf_case("llama_untied_llama3")
    split = split_of(config, tensors)
    seq = np.random.default_rng(1).integers(0, config.vocab_size, size=(2, 12))
    full = np.asarray(run(split, seq).logits)
    cache = KVCache.init(config, 2, 32)
    out = run(split, seq[:, :5], cache)  # prefill 5
    got = [np.asarray(out.logits)]
    cache = out.cache
    for t in range(5, 12, 1):  # then one token at a time
        out = run(split, seq[:, t:t + 1], cache)
        cache = out.cache
        got.append(np.asarray(out.logits))
    np.testing.assert_allclose(np.concatenate(got, axis=1), full, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(cache.lengths), [12, 12])


@pytest.mark.parametrize("layout", ["bkds", "bskd"])
def test_two_turn_cached_continuation_equals_full_recompute(layout):
    """Prefill, decode, prefill a multi-token chunk on top of the history (old keys + causal new keys),
    decode again: every step's logits equal one full causal forward of the whole sequence (both layouts)."""
    _, config, tensors = hf_case("qwen2_tied")
    split = split_of(config, tensors)
    seq = np.random.default_rng(3).integers(0, config.vocab_size, size=(2, 16))
    full = np.asarray(run(split, seq).logits)
    cache = KVCache.init(config, 2, 32, layout=layout)
    assert cache.layout == layout and cache.max_len == 32 and cache.batch == 2
    got, t = [], 0
    for n in (6, 1, 1, 5, 1, 2):  # turn 1 prompt, 2 decode steps, turn 2 prompt, 1 decode step, 2 more
        out = run(split, seq[:, t:t + n], cache)
        cache, t = out.cache, t + n
        got.append(np.asarray(out.logits))
    assert t == 16
    np.testing.assert_allclose(np.concatenate(got, axis=1), full, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(cache.lengths), [16, 16])


def test_logits_at_equals_full_logits_gathered():
    """logits_at [B]: logits / values only at one position per row, equal to the full output gathered there
    (cache-free and cached paths)."""
    _, config, tensors = hf_case("llama_untied_llama3")
    cfg = config.replace(value_head=True)
    graphdef, state = split_of(cfg, tensors)
    state = jax.tree.map(lambda x: x + 0.05, state)  # non-zero value head
    seq = jnp.asarray(np.random.default_rng(4).integers(0, cfg.vocab_size, size=(3, 9)), jnp.int32)
    at = jnp.array([8, 0, 4], jnp.int32)
    fwd = jax.jit(functools.partial(apply, graphdef))
    full, part = fwd(state, seq), fwd(state, seq, logits_at=at)
    assert part.logits.shape == (3, 1, cfg.vocab_size) and part.values.shape == (3, 1)
    rows = np.arange(3)
    np.testing.assert_allclose(np.asarray(part.logits[:, 0]), np.asarray(full.logits)[rows, at], atol=1e-5)
    np.testing.assert_allclose(np.asarray(part.values[:, 0]), np.asarray(full.values)[rows, at], atol=1e-5)
    cache = KVCache.init(cfg, 3, 16)
    c_full = fwd(state, seq, cache, jnp.array([9, 1, 5]))
    c_part = fwd(state, seq, KVCache.init(cfg, 3, 16), jnp.array([9, 1, 5]), logits_at=at)
    np.testing.assert_allclose(np.asarray(c_part.logits[:, 0]), np.asarray(c_full.logits)[rows, at], atol=1e-5)
    np.testing.assert_allclose(np.asarray(c_part.values[:, 0]), np.asarray(c_full.values)[rows, at], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(c_part.cache.k), np.asarray(c_full.cache.k))
    np.testing.assert_array_equal(np.asarray(c_part.cache.lengths), [9, 1, 5])


def test_kv_cache_layouts_and_windows():
    """Both layouts, per-layer or stacked: shapes, max_len / batch, prefix + with_prefix round trip;
    writes past max_len are dropped."""
    _, config, tensors = hf_case("qwen2_tied")
    L, KV, Dh = config.num_layers, config.num_kv_heads, config.head_dim
    a, b = KVCache.init(config, 2, 12), KVCache.init(config, 2, 12, layout="bskd")
    assert a.layout == "bkds" and a.per_layer and len(a.k) == L
    assert a.k[0].shape == (2, KV, Dh, 12) and a.v[0].shape == (2, KV, 12, Dh)  # keys transposed
    assert a.k_shape == (L, 2, KV, Dh, 12) and a.v_shape == (L, 2, KV, 12, Dh)
    assert b.k_shape == b.v_shape == (L, 2, 12, KV, Dh)
    assert a.stacked().k.shape == a.k_shape and a.stacked().v.shape == a.v_shape and not a.stacked().per_layer
    stacked = KVCache.init(config, 2, 12, per_layer=False)
    assert (stacked.k.shape, stacked.v.shape) == (a.k_shape, a.v_shape)
    sb = b.stacked()
    assert KVCache(k=sb.k, v=sb.v, lengths=b.lengths).layout == "bskd"  # direct construction: legacy layout
    for c in (a, b, a.stacked(), b.stacked()):
        assert (c.max_len, c.batch) == (12, 2)
        small = c.prefix(5)
        assert small.max_len == 5 and small.layout == c.layout and small.per_layer == c.per_layer
        plus1 = lambda t: jax.tree.map(lambda x: x + 1, t)
        back = c.with_prefix(small.replace(k=plus1(small.k), v=plus1(small.v), lengths=small.lengths + 3))
        assert back.max_len == 12 and int(back.lengths[0]) == 3 and back.per_layer == c.per_layer
        for buf, ax in ((back.stacked().k, c.k_seq_axis), (back.stacked().v, c.v_seq_axis)):
            np.testing.assert_array_equal(np.asarray(jax.lax.slice_in_dim(buf, 0, 5, axis=ax)), 1.0)
            np.testing.assert_array_equal(np.asarray(jax.lax.slice_in_dim(buf, 5, 12, axis=ax)), 0.0)
    # A row whose cache is full: the (ignored) write of a num_new=0 step must not clobber the last position.
    split = split_of(config, tensors)
    seq = np.random.default_rng(5).integers(0, config.vocab_size, size=(1, 4))
    out = run(split, seq, KVCache.init(config, 1, 4))
    out2 = run(split, seq[:, :1], out.cache, jnp.zeros((1,), jnp.int32))
    np.testing.assert_array_equal(np.asarray(out2.cache.k), np.asarray(out.cache.k))
    # Hoisted layer weights are only read with a per-layer cache: anything else is a clear error.
    lws = layer_weights(*split)
    for bad in (None, KVCache.init(config, 1, 4, per_layer=False)):
        with pytest.raises(ValueError, match="per-layer KV cache"):
            apply(*split, jnp.asarray(seq), bad, layer_weights=lws)
    # Fused projections (wq|wk|wv, w_gate|w_up) give the same prefill and decode step as separate ones.
    seq = np.random.default_rng(6).integers(0, config.vocab_size, size=(2, 5))
    outs = []
    for fused in (False, True):
        lw = layer_weights(*split, fused=fused)
        assert ("wqkv" in lw[0]) == fused and ("wq" in lw[0]) != fused
        o1 = apply(*split, jnp.asarray(seq[:, :4]), KVCache.init(config, 2, 8), layer_weights=lw)
        o2 = apply(*split, jnp.asarray(seq[:, 4:]), o1.cache, layer_weights=lw)
        outs.append((o1.logits, o2.logits))
    for a, b in zip(*outs):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_ragged_rows_equal_rows_alone():
    """Rows with different prompt lengths in one batch == each row decoded alone."""
    _, config, tensors = hf_case("qwen2_tied")
    split = split_of(config, tensors)
    rng = np.random.default_rng(2)
    lens = np.array([3, 7, 5], np.int32)
    prompts = rng.integers(1, config.vocab_size, size=(3, 7))
    padded = np.where(np.arange(7)[None] < lens[:, None], prompts, 0)
    out = run(split, padded, KVCache.init(config, 3, 32), jnp.asarray(lens))
    np.testing.assert_array_equal(np.asarray(out.cache.lengths), lens)
    last = [np.asarray(out.logits[b, lens[b] - 1]) for b in range(3)]
    cache, steps = out.cache, []
    for _ in range(4):
        nxt = np.array([[int(np.argmax(x))] for x in last])
        steps.append(nxt[:, 0])
        out = run(split, nxt, cache)
        cache = out.cache
        last = [np.asarray(out.logits[b, 0]) for b in range(3)]
    batch_toks = np.stack(steps, 1)
    for b in range(3):
        # Alone: batch of 1, same padded prompt width (one compiled shape), valid length lens[b].
        out1 = run(split, padded[b:b + 1], KVCache.init(config, 1, 32), jnp.asarray(lens[b:b + 1]))
        alone, nxt = [], int(np.argmax(np.asarray(out1.logits[0, lens[b] - 1])))
        for _ in range(4):
            alone.append(nxt)
            out1 = run(split, np.array([[nxt]]), out1.cache)
            nxt = int(np.argmax(np.asarray(out1.logits[0, -1])))
        assert list(batch_toks[b]) == alone, b
        np.testing.assert_allclose(last[b], np.asarray(out1.logits[0, -1]), atol=1e-5, rtol=1e-5)
        # And against a cache-free full forward (right padding does not affect earlier positions).
        seq = np.zeros((1, 11), np.int64)
        seq[0, :lens[b] + 4] = np.concatenate([prompts[b, :lens[b]], batch_toks[b]])
        full = np.asarray(run(split, seq).logits[0, lens[b] + 3])
        np.testing.assert_allclose(last[b], full, atol=1e-5, rtol=1e-5)


def test_decode_step_does_not_recompile():
    _, config, tensors = hf_case("llama_tied_linear")
    graphdef, state = split_of(config, tensors)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, tok, cache):
        out = apply(graphdef, state, tok, cache)
        return jnp.argmax(out.logits[:, -1], -1).astype(jnp.int32)[:, None], out.cache

    tok, cache = jnp.ones((2, 1), jnp.int32), KVCache.init(config, 2, 16)
    for _ in range(6):
        tok, cache = step(state, tok, cache)
    np.testing.assert_array_equal(np.asarray(cache.lengths), [6, 6])


def _computations_with(hlo: str, op: str) -> int:
    """How many computations of compiled HLO text contain an `op(` instruction."""
    return sum(f" {op}(" in body for body in re.findall(r"^%\S+ .*?\{\n(.*?)^\}", hlo, re.M | re.S))


@pytest.mark.parametrize("case", sorted(CASES))
def test_rope_table_equals_direct_rope_and_is_computed_once(case):
    _, config, tensors = hf_case(case)
    pos = jnp.asarray(np.random.default_rng(0).integers(0, 40, (3, 7)), jnp.int32)
    for a, b in zip(rope_cos_sin(config, pos), rope_cos_sin(config, pos, num_positions=40)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same float ops, then a gather
    # XLA:CPU fuses a directly computed cos into every layer's RoPE multiply (per head, per layer); the
    # table is computed in one place, however many layers read it (2 layers x q, k would give 4).
    graphdef, state = split_of(config, tensors)
    tok = jnp.ones((2, 8), jnp.int32)
    forward = jax.jit(lambda s, t: apply(graphdef, s, t).logits).lower(state, tok).compile().as_text()
    cached = jax.jit(lambda s, t, c: apply(graphdef, s, t, c).logits).lower(
        state, tok, KVCache.init(config, 2, 16)).compile().as_text()
    for hlo in (forward, cached):
        assert _computations_with(hlo, "cosine") == 1 and _computations_with(hlo, "sine") == 1


def test_training_path_grad_and_mask():
    """Cache-free path: gradients flow to every param; a padding-key mask matches the unpadded run."""
    config = ModelConfig.tiny(64, num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
    graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(3)))
    tokens = jnp.arange(8)[None] % 64

    @jax.jit
    def grad(s):
        return jax.grad(lambda s: (lambda o: o.logits.mean() + o.values.mean())(apply(graphdef, s, tokens)))(s)

    grads = grad(state)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    # Left padding: 3 pad tokens masked out, positions shifted -> same logits as the unpadded sequence.
    padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), tokens], 1)
    mask = jnp.arange(11)[None] >= 3
    pos = jnp.maximum(jnp.arange(11)[None] - 3, 0)
    fwd = jax.jit(functools.partial(apply, graphdef))
    a = fwd(state, padded, positions=pos, attention_mask=mask).logits[:, 3:]
    np.testing.assert_allclose(np.asarray(a), np.asarray(fwd(state, tokens).logits), atol=1e-5)


def test_detached_value_head_trains_only_the_head():
    """detach_value_head: the same outputs, but a value loss moves the value head alone (not the trunk)."""
    config = ModelConfig.tiny(64, num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
    model = Transformer(config, rngs=nnx.Rngs(3))
    model.value_head.kernel[...] = jax.random.normal(jax.random.PRNGKey(0), model.value_head.kernel.shape)  # 0-init
    graphdef, state = nnx.split(model)
    tokens = jnp.arange(8)[None] % 64

    def value_grads(detach):
        return jax.grad(lambda s: apply(graphdef, s, tokens, detach_value_head=detach).values.mean())(state)

    a, b = apply(graphdef, state, tokens), apply(graphdef, state, tokens, detach_value_head=True)
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))
    np.testing.assert_array_equal(np.asarray(a.values), np.asarray(b.values))
    attached, detached = value_grads(False), value_grads(True)
    trunk = lambda g: [np.abs(np.asarray(x)).max() for p, x in jax.tree_util.tree_leaves_with_path(g)  # noqa: E731
                       if "value_head" not in jax.tree_util.keystr(p)]
    assert max(trunk(attached)) > 0  # a shared critic's loss reaches the trunk ...
    assert max(trunk(detached)) == 0  # ... a detached one does not
    head = lambda g: np.abs(np.asarray(g["value_head"]["bias"][...])).max()  # noqa: E731
    assert head(detached) == head(attached) > 0


def test_bfloat16_compute_close_to_float32():
    _, config, tensors = hf_case("llama_untied_llama3")
    tokens = np.arange(10)[None]
    f32 = np.asarray(run(split_of(config, tensors), tokens).logits)
    bf = run(split_of(config.replace(dtype="bfloat16"), tensors), tokens).logits
    assert bf.dtype == jnp.float32
    assert np.abs(np.asarray(bf) - f32).max() < 0.1 * np.abs(f32).max()
    assert KVCache.init(config.replace(dtype="bfloat16"), 1, 4).dtype == jnp.bfloat16


def test_missing_and_misshaped_tensor_errors():
    _, config, tensors = hf_case("qwen2_tied")
    bad = dict(tensors)
    del bad["model.layers.1.mlp.up_proj.weight"]
    bad["model.layers.0.self_attn.k_proj.weight"] = np.zeros((3, 64), np.float32)
    bad["model.layers.0.self_attn.extra.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(HFTensorError) as e:
        from_hf_tensors(config, bad)
    msg = str(e.value)
    assert "model.layers.1.mlp.up_proj.weight" in msg
    assert "model.layers.0.self_attn.k_proj.weight: expected (32, 64), got (3, 64)" in msg
    assert "model.layers.0.self_attn.extra.weight" in msg
    tied_diff = dict(tensors, **{"lm_head.weight": tensors["model.embed_tokens.weight"] + 1})
    with pytest.raises(HFTensorError, match="lm_head.weight"):
        from_hf_tensors(config, tied_diff)


def test_config_errors_and_presets():
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig(vocab_size=10, hidden_size=64, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="hidden_size"):
        ModelConfig(vocab_size=10, hidden_size=0, intermediate_size=64, num_layers=1, num_heads=4)
    with pytest.raises(ValueError, match="mistral"):
        ModelConfig.from_hf_dict({"model_type": "mistral", **SMALL})
    with pytest.raises(ValueError, match="num_hidden_layers"):
        ModelConfig.from_hf_dict({"model_type": "llama", **{k: v for k, v in SMALL.items() if k != "num_hidden_layers"}})
    with pytest.raises(ValueError, match="yarn"):
        ModelConfig.from_hf_dict({"model_type": "llama", **SMALL, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    # transformers 4.x style config.json (rope_theta / rope_scaling with 'type') still parses.
    c = ModelConfig.from_hf_dict({"architectures": ["LlamaForCausalLM"], **SMALL, "rope_theta": 5e5,
                                  "rope_scaling": {"type": "linear", "factor": 4.0}, "eos_token_id": [1, 2]})
    assert c.rope_type == "linear" and c.rope_theta == 5e5 and c.eos_token_ids == (1, 2)
    hash(c)
    tiny = ModelConfig.tiny(256)
    assert 1_000_000 <= tiny.num_params() <= 5_000_000
    n = sum(x.size for x in jax.tree.leaves(nnx.state(nnx.eval_shape(lambda: Transformer(tiny)), nnx.Param)))
    assert n == tiny.num_params()


@pytest.mark.parametrize("T", [48, 100, 128])  # several blocks with a ragged last one, and exact multiples
def test_causal_attention_by_blocks_equals_masked_attention(T):
    """causal_attention_chunked = attention with a causal mask, outputs and gradients (GQA: 4 heads, 2 KV)."""
    from wmact_jax.models.llama import attention, causal_attention_chunked

    kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(kq, (2, T, 4, 8))
    k, v = jax.random.normal(kk, (2, T, 2, 8)), jax.random.normal(kv, (2, T, 2, 8))
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (2, T, T))
    full = jax.jit(lambda q, k, v: attention(q, k, v, causal))  # jitted: quicker than op by op
    blocks = jax.jit(lambda q, k, v: causal_attention_chunked(q, k, v, chunk=32))
    np.testing.assert_allclose(np.asarray(blocks(q, k, v)), np.asarray(full(q, k, v)), atol=1e-5)
    w = jax.random.normal(jax.random.PRNGKey(1), (2, T, 4, 8))
    g_full = jax.jit(jax.grad(lambda *a: jnp.sum(full(*a) * w), argnums=(0, 1, 2)))(q, k, v)
    g_blocks = jax.jit(jax.grad(lambda *a: jnp.sum(blocks(*a) * w), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g_blocks, g_full):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_training_forward_past_one_attention_block_equals_masked_forward(monkeypatch):
    """The model's cache-free forward switches to blocks past ATTENTION_CHUNK tokens: same logits."""
    from wmact_jax.models import llama

    config = ModelConfig.tiny(64, num_layers=2, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
    graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(5)))
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 40), 0, 64)
    monkeypatch.setattr(llama, "ATTENTION_CHUNK", 1 << 30)
    whole = apply(graphdef, state, tokens).logits
    monkeypatch.setattr(llama, "ATTENTION_CHUNK", 16)
    blocked = apply(graphdef, state, tokens).logits
    np.testing.assert_allclose(np.asarray(blocked), np.asarray(whole), atol=1e-5)


@pytest.mark.parametrize("H", [5, 23])  # a head within one attention block and one across blocks
def test_shared_head_forward_equals_plain_forward_with_gradients(monkeypatch, H):
    """shared_head=H (rows share their first H tokens: the head runs once at batch 1) gives the plain
    forward's logits, values and parameter gradients; an offset block-causal attention covers the rows."""
    from wmact_jax.models import llama

    monkeypatch.setattr(llama, "ATTENTION_CHUNK", 16)
    config = ModelConfig.tiny(64, num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64,
                              value_head=True)
    graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(3)))
    state = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(x.size), x.shape), state)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (3, 45), 0, 64)
    tokens = tokens.at[:, :H].set(tokens[0, :H])  # the shared head
    w = jax.random.normal(jax.random.PRNGKey(4), (3, 45, 64))

    def loss(st, shared):
        out = apply(graphdef, st, tokens, shared_head=shared)
        return jnp.sum(out.logits * w) + jnp.sum(jnp.sin(out.values)), out

    # Jitted: one compile each is quicker than running the two backward passes op by op.
    (l0, plain), g0 = jax.jit(jax.value_and_grad(lambda st: loss(st, 0), has_aux=True))(state)
    (l1, shared), g1 = jax.jit(jax.value_and_grad(lambda st: loss(st, H), has_aux=True))(state)
    np.testing.assert_allclose(np.asarray(shared.logits), np.asarray(plain.logits), atol=1e-4)
    np.testing.assert_allclose(np.asarray(shared.values), np.asarray(plain.values), atol=1e-4)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-3)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g0)) > 1e-2  # not vacuous
    with pytest.raises(ValueError, match="shared_head"):
        apply(graphdef, state, tokens, shared_head=H, logits_at=jnp.zeros((3,), jnp.int32))
