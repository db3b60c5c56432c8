"""Checkpointing: save / kill / resume gives bit-identical training; half-written steps are ignored;
shape-changing config changes are refused. Uses `FakeTrainer`, a Trainer-shaped toy (also used by
test_main.py) so these tests do not depend on the real trainer."""
import functools
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from configs import base
from wmact_jax.checkpointing import Checkpointer, CheckpointError, config_differences


class FakeAnneal(struct.PyTreeNode):
    l_max: jax.Array
    turn_sum: jax.Array


class FakeState(struct.PyTreeNode):
    params: Any
    opt_state: Any
    anneal: FakeAnneal
    key: jax.Array
    iteration: jax.Array


def _loss(params, x):
    y = jnp.sin(x[:, :4])
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


# Module-level jitted functions (static lr / sizes): every FakeTrainer instance shares one compile.
@functools.partial(jax.jit, static_argnums=(1,), donate_argnums=0)
def _fake_iteration(state, lr):
    tx = optax.adam(lr)
    hidden = state.params["w"].shape[0]
    key, k = jax.random.split(state.key)
    x = jax.random.normal(k, (16, hidden))
    loss, g = jax.value_and_grad(_loss)(state.params, x)
    updates, opt_state = tx.update(g, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    turns = 1.0 + jax.random.uniform(k, ()) * state.anneal.l_max
    anneal = FakeAnneal(jnp.maximum((state.anneal.l_max + turns) / 2, 1.0),
                        state.anneal.turn_sum + turns)
    metrics = {"loss": loss, "success_rate": jnp.exp(-loss), "mean_turns": turns,
               "generated_tokens": jnp.float32(1234.0), "turn_hist": jnp.arange(3.0)}
    return state.replace(params=params, opt_state=opt_state, anneal=anneal, key=key,
                         iteration=state.iteration + 1), metrics


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _fake_init(key, hidden, lr, l0):
    k1, k2 = jax.random.split(key)
    params = {"w": jax.random.normal(k1, (hidden, 4)) * 0.1, "b": jnp.zeros((4,), jnp.float32)}
    return FakeState(params=params, opt_state=optax.adam(lr).init(params),
                     anneal=FakeAnneal(jnp.float32(l0), jnp.float32(0)),
                     key=k2, iteration=jnp.zeros((), jnp.int32))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _fake_evaluate(state, num_levels, greedy, single_turn):
    x = jax.random.normal(jax.random.key(7), (num_levels, state.params["w"].shape[0]))
    loss = _loss(state.params, x)
    return {"success_rate": jnp.exp(-loss), "mean_turns": jnp.float32(2.0 if greedy else 3.0),
            "turn_cap": jnp.float32(1.0 if single_turn else state.anneal.l_max)}


class FakeTrainer:
    """The shape of `wmact_jax.train.Trainer` with a toy regression model (hidden = model size)."""

    def __init__(self, config, workdir):
        self.config = config
        self.workdir = workdir
        self.calls = {"init": 0, "warmstart": 0, "iteration": 0, "evaluate": 0}

    def init_state(self, key):
        self.calls["init"] += 1
        c = self.config
        return _fake_init(key, c.model.hidden_size, c.ppo.lr, float(c.anneal.l0))

    def warmstart(self, state):
        self.calls["warmstart"] += 1
        params = jax.tree.map(lambda p: p * 0.5, state.params)
        return state.replace(params=params), {"loss": jnp.float32(1.0)}

    def iteration(self, state):
        self.calls["iteration"] += 1
        return _fake_iteration(state, self.config.ppo.lr)

    def evaluate(self, state, num_levels=None, greedy=True, single_turn=False, transcripts=0):
        self.calls["evaluate"] += 1
        m = _fake_evaluate(state, num_levels or self.config.train.eval_levels, greedy, single_turn)
        mode = "greedy" if greedy else "sampled"
        return m, [f"transcript {i} ({mode})" for i in range(transcripts)]


def small_config(**over):
    c = base.get_config()
    c.model.hidden_size = 8
    for k, v in over.items():
        section, field = k.split("__")
        c[section][field] = v
    return c


def leaves(state):
    """Host copies of every leaf, PRNG keys as raw data: for bit-exact comparison."""
    def host(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)
    return [host(x) for x in jax.tree.leaves(state)]


def assert_identical(a, b):
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def run_iterations(trainer, state, n):
    for _ in range(n):
        state, _ = trainer.iteration(state)
    return state


def test_resume_is_bit_identical(tmp_path):
    config = small_config()
    key = jax.random.key(0)
    ref_trainer = FakeTrainer(config, str(tmp_path))
    reference = run_iterations(ref_trainer, ref_trainer.init_state(key), 6)

    # First "process": 4 iterations, a checkpoint every 2, then it dies (no close()).
    t1 = FakeTrainer(config, str(tmp_path))
    c1 = Checkpointer(str(tmp_path / "ckpt"), config, save_interval_steps=2, max_to_keep=2)
    state = t1.init_state(key)
    for step in range(1, 5):
        state, _ = t1.iteration(state)
        c1.save(step, state)
    c1.wait_until_finished()
    assert c1.all_steps() == [2, 4]
    del c1, t1, state

    # Second process: new objects, restore from an abstract target, finish.
    t2 = FakeTrainer(config, str(tmp_path))
    c2 = Checkpointer(str(tmp_path / "ckpt"), config, save_interval_steps=2)
    assert c2.latest_step() == 4
    restored = c2.restore(jax.eval_shape(t2.init_state, key))
    assert isinstance(restored, FakeState) and int(restored.iteration) == 4
    assert jnp.issubdtype(restored.key.dtype, jax.dtypes.prng_key)
    resumed = run_iterations(t2, restored, 2)
    c2.close()
    assert_identical(resumed, reference)


def test_half_written_step_is_ignored(tmp_path):
    config = small_config()
    t = FakeTrainer(config, str(tmp_path))
    d = tmp_path / "ckpt"
    c = Checkpointer(str(d), config)
    state = t.init_state(jax.random.key(1))
    c.save(3, state)
    c.close()
    # A kill during the save of step 5: Orbax's temporary folder, partly written.
    tmp = d / "5.orbax-checkpoint-tmp-1234567890"
    shutil.copytree(d / "3", tmp)
    shutil.rmtree(tmp / "state")
    (tmp / "state").mkdir()
    (tmp / "state" / "garbage").write_bytes(b"\x00" * 10)
    c2 = Checkpointer(str(d), config)
    assert c2.latest_step() == 3
    assert_identical(c2.restore(jax.eval_shape(t.init_state, jax.random.key(1))), state)
    c2.close()
    assert not tmp.exists()  # cleaned up on start (cleanup_tmp_directories)


def test_shape_changing_config_refused(tmp_path):
    config = small_config()
    t = FakeTrainer(config, str(tmp_path))
    c = Checkpointer(str(tmp_path / "ckpt"), config)
    c.save(1, t.init_state(jax.random.key(0)))
    c.close()
    for over in ({"model__hidden_size": 16}, {"env__name": "Maze-7x7"},
                 {"rollout__context_len": 2048}):
        new = small_config(**over)
        c2 = Checkpointer(str(tmp_path / "ckpt"), new)
        with pytest.raises(CheckpointError) as e:
            c2.restore(jax.eval_shape(FakeTrainer(new, "").init_state, jax.random.key(0)))
        field = next(iter(over)).replace("__", ".")
        assert field in str(e.value) and "--workdir" in str(e.value)
        c2.close()
    # A learning-rate change is fine (and reported as a difference).
    new = small_config(ppo__lr=3e-4)
    c3 = Checkpointer(str(tmp_path / "ckpt"), new)
    assert any(s.startswith("ppo.lr") for s in c3.check_compatible())
    c3.restore(jax.eval_shape(t.init_state, jax.random.key(0)))
    c3.close()


def test_structure_mismatch_is_clear(tmp_path):
    config = small_config()
    t = FakeTrainer(config, str(tmp_path))
    c = Checkpointer(str(tmp_path / "ckpt"), config)
    c.save(1, t.init_state(jax.random.key(0)))
    c.wait_until_finished()
    wrong = {"params": jax.ShapeDtypeStruct((3,), jnp.float32)}
    with pytest.raises(CheckpointError, match="does not match the current train state"):
        c.restore(wrong)
    c.close()


def test_saved_config_and_keep(tmp_path):
    config = small_config()
    t = FakeTrainer(config, str(tmp_path))
    c = Checkpointer(str(tmp_path / "ckpt"), config, max_to_keep=2)
    s = t.init_state(jax.random.key(0))
    for step in (1, 2, 3):
        c.save(step, s)
    assert not c.save(3, s, force=True)  # already there
    c.wait_until_finished()
    assert c.all_steps() == [2, 3]
    saved = c.saved_config()
    assert saved["model"]["hidden_size"] == 8 and saved["env"]["eval_names"] == []
    assert config_differences(saved, small_config()) == ([], [])
    c.close()
