"""envs_jax.make / list_envs / register: every preset builds and resets; overrides are routed to the
constructor (static) or the params (traced); bad names, keys and sizes raise EnvError."""

import jax
import numpy as np
import pytest

import envs_jax
from envs_jax import registry
from envs_jax.core import Environment, EnvError


def test_list_envs_is_sorted_and_complete():
    names = envs_jax.list_envs()
    assert names == sorted(registry.PRESETS)
    for required in ("Sokoban-6x6-1", "Sokoban-Standard", "Sokoban-Hard-1", "Sokoban-Hard-2",
                     "Maze-5x5", "Maze-7x7", "Taxi-v3"):
        assert required in names


@pytest.mark.parametrize("name", sorted(registry.PRESETS))
def test_every_preset_builds_and_resets(name):
    env, params = envs_jax.make(name)
    assert isinstance(env, Environment)
    assert env.num_actions >= 4
    obs, state = jax.jit(env.reset_env)(jax.random.key(0), params)
    obs = np.asarray(obs)
    assert obs.shape == tuple(env.grid_shape) and obs.dtype == np.int32
    assert obs.min() >= 0 and obs.max() < len(env.glyphs)
    assert int(state.step_count) == 0
    np.testing.assert_array_equal(obs, np.asarray(env.render_glyphs(state)))


def test_preset_static_arguments():
    env, _ = envs_jax.make("Sokoban-Hard-2")
    assert env.dim_room == (7, 7) and env.num_boxes == 3
    env, _ = envs_jax.make("Sokoban-Hard-1")
    assert env.dim_room == (10, 10) and env.num_boxes == 2
    env, _ = envs_jax.make("Taxi-7x7")
    assert env.rows == 7 and env.cols == 7


def test_unknown_name_suggests_close_match():
    with pytest.raises(EnvError, match="Did you mean 'Maze-7x7'"):
        envs_jax.make("Maze-7x8")
    with pytest.raises(EnvError, match="Sokoban-Standard"):
        envs_jax.make("sokoban-standard")
    with pytest.raises(EnvError, match="unknown environment"):
        envs_jax.make("Chess")


def test_unknown_override_is_named():
    with pytest.raises(EnvError, match="max_stepz"):
        envs_jax.make("Maze-7x7", max_stepz=10)
    with pytest.raises(EnvError, match="num_box"):
        envs_jax.make("Sokoban-Standard", num_box=3)


def test_static_override_changes_shape():
    env, params = envs_jax.make("Maze-5x5", size=9)
    assert env.grid_shape == (9, 9) and env.size == 9
    assert params.max_steps == env.default_params.max_steps
    env, _ = envs_jax.make("Sokoban-Standard", dim_room=(8, 9))
    assert env.grid_shape == (8, 9) and env.num_boxes == 2
    env, _ = envs_jax.make("Taxi-v3", map="10x10")
    assert env.rows == 10
    # The presets themselves are not modified by an override.
    assert envs_jax.make("Maze-5x5")[0].grid_shape == (5, 5)


def test_params_override_reaches_params():
    env, params = envs_jax.make("Maze-7x7", max_steps=17, step_reward=-0.01)
    assert params.max_steps == 17 and params.step_reward == -0.01
    env, params = envs_jax.make("Taxi-v3", max_steps=5)
    assert params.max_steps == 5
    # ...and the env honours it (truncation at max_steps).
    _, st = env.reset_env(jax.random.key(0), params)
    for t in range(5):
        _, st, _, done, info = env.step_env(jax.random.key(0), st, 1, params)
    assert bool(done) and bool(info.truncated)
    # Static and params overrides together.
    env, params = envs_jax.make("Sokoban-6x6-1", num_boxes=1, dim_room=(6, 7), max_steps=30)
    assert env.dim_room == (6, 7) and params.max_steps == 30


@pytest.mark.parametrize("overrides", [
    dict(dim_room=(3, 3)),
    dict(dim_room=(4, 4), num_boxes=3),
    dict(num_boxes=0),
    dict(num_boxes=40),
    dict(dim_room=7),
    dict(dim_room="big"),
])
def test_impossible_sokoban_sizes(overrides):
    with pytest.raises(EnvError):
        envs_jax.make("Sokoban-Standard", **overrides)


@pytest.mark.parametrize("name,overrides", [
    ("Maze-5x5", dict(size=6)),
    ("Maze-5x5", dict(size=3)),
    ("Maze-5x5", dict(goal_placement="nowhere")),
    ("Taxi-v3", dict(map="3x3")),
])
def test_impossible_static_options(name, overrides):
    with pytest.raises(EnvError):
        envs_jax.make(name, **overrides)


def test_register_and_duplicate():
    from envs_jax.maze import Maze

    name = "Test-Maze-13x13-registry"
    try:
        envs_jax.register(name, lambda: Maze, static=dict(size=13), params=dict(max_steps=77))
        assert name in envs_jax.list_envs()
        env, params = envs_jax.make(name)
        assert env.grid_shape == (13, 13) and params.max_steps == 77
        env, params = envs_jax.make(name, max_steps=5)  # overrides beat the preset's params
        assert params.max_steps == 5
        with pytest.raises(EnvError, match="already registered"):
            envs_jax.register(name, lambda: Maze)
        with pytest.raises(EnvError, match="already registered"):
            envs_jax.register("Maze-7x7", lambda: Maze)
    finally:
        registry.PRESETS.pop(name, None)
