"""The warm starts kept in experiments/results (`warmstart/` folders with their weights) still serve the
current code: a later round trains further methods and seeds from them (`--set warmstart.init=...` or
`warmstart.path=...`), which is only sound if they load into the model their record describes and the
code still writes prompts with the very token ids they were trained on."""

import glob
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEPT = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(ROOT, "experiments", "results", "**", "warmstart.json"),
                                                      recursive=True)
              if os.path.isdir(os.path.join(os.path.dirname(p), "params")))


def test_some_warm_starts_are_kept():
    assert len(KEPT) >= 2, KEPT


@pytest.mark.parametrize("folder", KEPT, ids=[os.path.relpath(k, os.path.join(ROOT, "experiments", "results"))
                                              for k in KEPT])
def test_a_kept_warm_start_loads_and_speaks_the_current_tokens(folder):
    import jax
    from flax import nnx

    from wmact_jax.checkpoints.export import load_orbax
    from wmact_jax.tokenization import load_tokenizer
    from wmact_jax.tokenization.scratch import build_scratch_tokenizer

    record = json.load(open(os.path.join(folder, "warmstart.json")))
    model = record["config"]["model"]
    assert model["source"] == "scratch"  # the only kind kept so far; a pretrained one would name its file
    cfg, policy = load_orbax(folder)
    for k in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
        assert getattr(cfg, k) == model[k], k
    leaves = jax.tree.leaves(nnx.state(policy, nnx.Param))
    assert leaves and all(bool(np.isfinite(np.asarray(x)).all()) for x in leaves)
    # The tokenizer saved beside the weights is the one the current code builds for a model from scratch.
    saved, current = load_tokenizer(folder), build_scratch_tokenizer()
    assert saved.get_vocab() == current.get_vocab() and cfg.vocab_size == len(current)
    text = "Turns left: 3\n#####\n#P_X#\n<answer>Up, Left, Pickup</answer> Reward: -1"
    assert saved(text)["input_ids"] == current(text)["input_ids"]
