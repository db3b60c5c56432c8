"""The host-loop baseline of benchmarks/train_iteration.py plays the same episodes as the in-graph rollout.

Same params, same key: the host loop (regex parsing, per-episode jitted env steps, text feedback tokenized
by the tokenizer, jitted sampler with the KV cache on device) must give the in-graph `Rollout`'s batch
field for field. A scripted bigram policy (exact logits, so sampling matches bit for bit) covers valid and
malformed answers; a tiny Trainer checks the `from_trainer` wiring with a real transformer (greedy).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))

from host_loop_rollout import HostLoopRollout  # noqa: E402
from wmact_jax.sampler import SamplingParams  # noqa: E402

from tests.wmact.test_rollout import (K, bigram_apply, bigram_table, fake_cache, make_rollout,  # noqa: E402,F401
                                     with_turns_left)
from wmact_jax.models.kv_cache import KVCache  # noqa: E402
from tests.wmact.test_rollout import setup  # noqa: E402,F401  (pytest fixture)

FIELDS = ("tokens", "loss_mask", "turn_id", "length", "turn_valid", "turn_actions", "turn_revisit", "success", "turns",
          "n_actions", "n_effective", "format_errors", "end_reason", "level_id", "generated")


def fake_cache_distinct(batch, max_len):
    """fake_cache with k and v in separate buffers (the host loop donates the cache to its jitted calls)."""
    z = lambda: jnp.zeros((1, batch, max_len, 1, 1), jnp.float32)
    return KVCache(k=z(), v=z(), lengths=jnp.zeros((batch,), jnp.int32))


def _assert_same(a, b):
    a, b = jax.device_get(a), jax.device_get(b)
    for f in FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)), err_msg=f)
    for f in ("turn_rewards", "env_return"):
        np.testing.assert_allclose(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)), atol=1e-5, err_msg=f)
    for f in ("logprobs", "values"):  # sampling-time numbers (float round-off between the two programs)
        if hasattr(a, f):
            np.testing.assert_allclose(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)), atol=2e-3, err_msg=f)


@pytest.mark.parametrize("cap,turns_left", [(1, False), (3, False), (3, True)])
def test_host_loop_equals_in_graph_bigram(setup, cap, turns_left):
    if turns_left:
        setup = with_turns_left(setup)
    env, params, tok, grid, conv, answer = setup
    table = bigram_table(tok)
    roll = make_rollout(setup, lambda p, t, c, n: bigram_apply(p, t, c, n), fake_cache, levels=4, group=2)
    host = HostLoopRollout(env, params, conv, tok, lambda p, t, c, n: bigram_apply(p, t, c, n), roll.cfg,
                           fake_cache_distinct, roll.stop_token_ids, roll.eos_id, roll.pad_id)
    sampling = SamplingParams(temperature=jnp.float32(1.0), top_k=jnp.int32(0), top_p=jnp.float32(1.0))
    key = jax.random.PRNGKey(3)
    want = jax.jit(lambda p, k, c: roll.run(p, k, c, sampling)[0])(table, key, cap)
    got = host.run(table, key, cap, sampling)
    _assert_same(want, got)
    b = jax.device_get(want)
    assert b.format_errors.sum() > 0 and b.n_actions.sum() > 0  # both paths are exercised


def test_host_loop_equals_in_graph_trainer():
    from configs.base import get_config
    from wmact_jax.train import Trainer

    c = get_config()
    c.warmstart.enabled = False
    c.model.hidden_size, c.model.intermediate_size, c.model.num_layers = 32, 64, 1
    c.rollout.levels_per_iteration, c.rollout.group_size = 2, 2
    c.rollout.max_turn_tokens = 8
    c.rollout.system_prompt = "compact"
    c.rollout.context_len = 512
    c.anneal.l0 = 2
    tr = Trainer(c)
    host = HostLoopRollout.from_trainer(tr)
    state = tr.init_state(jax.random.PRNGKey(0))
    greedy = SamplingParams(temperature=jnp.float32(0.0), top_k=jnp.int32(0), top_p=jnp.float32(1.0))
    key = jax.random.PRNGKey(1)
    params = state.ppo.params
    want = jax.jit(lambda p, k: tr.rollout.run(p, k, 2, greedy)[0])(params, key)
    got = host.run(params, key, 2, greedy)
    _assert_same(want, got)
