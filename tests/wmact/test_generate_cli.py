"""`python -m wmact_jax.generate` on a tiny Hugging Face folder written by transformers itself.

Greedy output must equal transformers' PyTorch `generate` on the same folder (torch is a test-only
reference), stdout must hold only the continuation, and a missing model must fail clearly.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = [f"w{i}" for i in range(58)]
SPECIALS = ["<unk>", "<eos>", "<|im_start|>", "<|im_end|>", "user", "assistant"]
CHAT = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
        "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = str(tmp_path_factory.mktemp("tiny_llama"))
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}  # 64 ids
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<eos>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHAT
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      initializer_range=0.3, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    return folder, model, tok


def run_cli(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "wmact_jax.generate", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def test_cli_greedy_matches_transformers(hf_folder):
    import torch

    folder, model, tok = hf_folder
    prompt = "w3 w7 w11 w2"
    ids = tok.encode(prompt, return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=1, pad_token_id=0)
    gen = ref[0, ids.shape[1]:].tolist()
    if 1 in gen:  # the CLI drops a final EOS from the printed text
        gen = gen[: gen.index(1)]
    expected = tok.decode(gen, skip_special_tokens=True)
    assert expected  # a non-trivial continuation
    r = run_cli("--model", folder, "--prompt", prompt, "--max-new-tokens", "6", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected + "\n", (r.stdout, expected, r.stderr[-2000:])


def test_cli_missing_model_and_chat_sampling(hf_folder):
    from wmact_jax import generate

    folder, _, _ = hf_folder
    r = run_cli("--model", "/nonexistent/model", "--prompt", "hi", timeout=120)
    assert r.returncode != 0 and r.stdout == ""
    assert "/nonexistent/model" in r.stderr and "error" in r.stderr.lower()
    # In-process (no second interpreter start): --chat with sampling prints some words of the vocabulary.
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = generate.main(["--model", folder, "--prompt", "w1 w2", "--chat", "--max-new-tokens", "4",
                            "--temperature", "0.8", "--top-k", "10", "--top-p", "0.9", "--seed", "3"])
    assert rc == 0
    words = buf.getvalue().split()
    assert 0 < len(words) <= 4 and all(w in WORDS + SPECIALS for w in words), buf.getvalue()
