"""Sharded forward on 8 simulated CPU devices == single device (logits and greedy tokens).

XLA_FLAGS must be set before jax initialises its backend, hence a subprocess.
"""

import os
import subprocess
import sys
import textwrap

from .subprocess_env import subprocess_env

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from wmact_jax.models import ModelConfig, Transformer, KVCache, apply
    from wmact_jax.models import sharding as sh

    assert jax.device_count() == 8, jax.devices()
    cfg = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, tie_word_embeddings=False, value_head=True, attention_bias=True,
                      architecture="qwen2")
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    # Non-trivial value head so its sharding is exercised too.
    state["value_head"]["kernel"] = state["value_head"]["kernel"].replace(
        jax.random.normal(jax.random.key(1), (64, 1)) * 0.1)
    fwd = jax.jit(apply, static_argnums=0)
    tokens = np.random.default_rng(0).integers(0, 128, size=(4, 10)).astype(np.int32)
    lens = np.array([10, 6, 8, 3], np.int32)

    def run(state, put_batch, put_cache):
        out = fwd(graphdef, state, put_batch(tokens))
        cache = put_cache(KVCache.init(cfg, 4, 32))
        o = fwd(graphdef, state, put_batch(tokens), cache, put_batch(lens))
        toks, cache = [], o.cache
        nxt = jnp.argmax(o.logits[jnp.arange(4), lens - 1], -1).astype(jnp.int32)[:, None]
        for _ in range(8):
            toks.append(np.asarray(nxt[:, 0]))
            o = fwd(graphdef, state, nxt, cache)
            cache = o.cache
            nxt = jnp.argmax(o.logits[:, -1], -1).astype(jnp.int32)[:, None]
        return np.asarray(out.logits), np.asarray(out.values), np.stack(toks, 1), np.asarray(o.logits), cache

    single = run(state, lambda x: x, lambda c: c)
    mesh = sh.make_mesh(data=2, fsdp=2, tp=2)
    sstate = sh.shard_state(state, mesh)
    # Params really are split: wq [L, D, H, Dh] is ('layers','embed','q_heads','head_dim') -> (None,'fsdp','tp',None).
    assert sstate["layers"]["wq"].value.sharding.spec == P(None, "fsdp", "tp", None), sstate["layers"]["wq"].value.sharding
    assert sstate["embed"].value.sharding.spec == P("tp", "fsdp")
    sharded = run(sstate, lambda x: sh.shard_batch(x, mesh), lambda c: sh.shard_cache(c, mesh))
    np.testing.assert_allclose(sharded[0], single[0], atol=1e-5)
    np.testing.assert_allclose(sharded[1], single[1], atol=1e-5)
    np.testing.assert_array_equal(sharded[2], single[2])
    np.testing.assert_allclose(sharded[3], single[3], atol=1e-5)
    # Uneven dims (e.g. 3 kv heads on tp=2) fall back to replication instead of failing.
    assert sh.logical_to_spec(("embed", "kv_heads"), (64, 3), mesh) == P("fsdp", None)
    try:
        sh.shard_batch(np.zeros((3, 2)), mesh)
        raise AssertionError("expected ValueError")
    except ValueError as e:
        assert "divisible" in str(e)
    print("SHARDING_OK")
""")


def test_sharded_equals_single_device():
    env = subprocess_env(devices=8, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "SHARDING_OK" in r.stdout, r.stdout[-3000:] + r.stderr[-5000:]
