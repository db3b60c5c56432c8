"""Sokoban: dynamics vs. a plain-Python reference, generator validity (oracle-checked), oracle
optimality on hand levels, vmap/determinism/no-retrace. Small batches: the suite runs in CI."""

from functools import lru_cache

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs_jax.core import EnvError
from envs_jax.sokoban import (Sokoban, SokobanParams, SokobanState, fallback_level, generate_level,
                              parse_level, solve, solve_state, solve_text, state_from_level)

PRESETS = [((6, 6), 1), ((7, 7), 2), ((10, 10), 2), ((7, 7), 3)]
DELTAS = [(-1, 0), (1, 0), (0, -1), (0, 1)]

# 7x7 hand levels with 2 boxes (one env / one compilation for all of them).
LEVEL_PUSH = """
#######
#_____#
#_PX_O#
#_____#
#__X__#
#___O_#
#######"""
LEVEL_ON_TARGET = """
#######
#_____#
#_P√_O#
#_X___#
#_____#
#_____#
#######"""
LEVEL_BLOCKED = """
#######
#PXX_O#
#_____#
#_____#
#O____#
#_____#
#######"""
HAND_LEVELS = [LEVEL_PUSH, LEVEL_ON_TARGET, LEVEL_BLOCKED]


@lru_cache(maxsize=None)
def env_fns(dim, nb):
    """One env + its jitted functions per size (shared by tests: compile once)."""
    env = Sokoban(dim, nb)
    params = env.default_params
    step = jax.jit(env.step_env)
    gen = jax.jit(jax.vmap(env.generate, in_axes=(0, None)))  # (keys [N], params) -> Level [N]

    def rollout(state, actions):
        def body(s, a):
            obs, s2, r, d, info = env.step_env(jax.random.key(0), s, a, params)
            return s2, (s2, obs, r, d, info)
        return jax.lax.scan(body, state, actions)

    return env, params, step, gen, jax.jit(rollout), jax.jit(jax.vmap(rollout))


def ref_step(walls, targets, boxes, player, a, step_count, max_steps, nb):
    """Plain-Python gym-sokoban rules: (boxes, player, reward, done, success, effective)."""
    boxes = boxes.copy()
    dr, dc = DELTAS[a]
    r1, c1 = player[0] + dr, player[1] + dc
    before = int((boxes & targets).sum())
    moved = False
    if not walls[r1, c1]:
        if boxes[r1, c1]:
            r2, c2 = r1 + dr, c1 + dc
            if not walls[r2, c2] and not boxes[r2, c2]:
                boxes[r1, c1], boxes[r2, c2] = False, True
                moved = True
        else:
            moved = True
    if moved:
        player = (r1, c1)
    after = int((boxes & targets).sum())
    reward = -0.1 + (1.0 if after > before else 0.0) - (1.0 if after < before else 0.0)
    success = after == nb
    if success:
        reward += 10.0
    done = success or step_count + 1 >= max_steps
    return boxes, player, reward, done, success, moved


# ---- sizes and errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("dim,nb", [((5, 5), 6), ((3, 7), 1), ((4, 4), 1), ((7, 7), 0), ((5, 5), 4),
                                    ((7, 33), 1)])
def test_impossible_sizes_raise(dim, nb):
    with pytest.raises(EnvError):
        Sokoban(dim, nb)


def test_from_text_checks_shape_and_glyphs():
    env = Sokoban((7, 7), 2)
    with pytest.raises(EnvError):
        env.from_text("#####\n#PXO#\n#####")
    with pytest.raises(EnvError):
        parse_level("####\n#PZ#\n####")


def test_static_facts():
    env = Sokoban((7, 7), 2)
    assert env.action_names == ("Up", "Down", "Left", "Right")
    assert env.glyphs == ("#", "_", "O", "√", "X", "P", "S")
    assert len(env.glyph_meanings) == len(env.glyphs) and env.grid_shape == (7, 7)


# ---- hand-made dynamics -------------------------------------------------------------------------
def test_push_wall_bump_on_off_target_and_finish():
    env, params, step, *_ = env_fns((7, 7), 2)
    k = jax.random.key(0)
    s = env.from_text(LEVEL_PUSH)
    assert env.render_text(s) == LEVEL_PUSH.strip()
    # Right: push box (2,3)->(2,4), not onto target yet
    _, s, r, d, info = step(k, s, 3, params)
    assert bool(s.boxes[2, 4]) and not bool(s.boxes[2, 3]) and tuple(s.player) == (2, 3)
    assert np.isclose(r, -0.1) and bool(info.effective) and not bool(d)
    # Right again: box onto target (2,5): +1
    _, s, r, d, info = step(k, s, 3, params)
    assert np.isclose(r, 0.9) and int(s.boxes_on_target) == 1
    # Right again: box blocked by the wall, nothing changes
    _, s2, r, d, info = step(k, s, 3, params)
    assert np.isclose(r, -0.1) and not bool(info.effective)
    assert tuple(s2.player) == tuple(s.player) and int(s2.step_count) == 3
    # Walk to push the other box Down onto (5,4): Left, Down, (at (3,3)), Down pushes (4,3)->(5,3)?
    # Use the oracle for the rest and check the finishing reward.
    length, actions = solve_state(env, s2)
    total = 0.0
    for a in actions:
        _, s2, r, d, info = step(k, s2, a, params)
        total += float(r)
    assert bool(info.success) and bool(d) and not bool(info.truncated)
    assert np.isclose(total, -0.1 * length + 1 + 10)
    assert env.render_text(s2).count("√") == 2


def test_box_off_target_and_blocked_push():
    env, params, step, *_ = env_fns((7, 7), 2)
    k = jax.random.key(0)
    s = env.from_text(LEVEL_ON_TARGET)
    assert int(s.boxes_on_target) == 1
    _, s, r, _, info = step(k, s, 3, params)  # push the box off its target
    assert np.isclose(r, -1.1) and int(s.boxes_on_target) == 0 and bool(info.effective)
    s = env.from_text(LEVEL_BLOCKED)
    for a in (3, 0, 2):  # box into box (Right), wall Up, wall Left
        _, s2, r, _, info = step(k, s, a, params)
        assert not bool(info.effective) and np.isclose(r, -0.1)
        assert np.array_equal(s2.boxes, s.boxes) and tuple(s2.player) == (1, 1)


def test_truncation_at_max_steps():
    env, params, step, *_ = env_fns((7, 7), 2)
    s = env.from_text(LEVEL_BLOCKED)
    p = params.replace(max_steps=3)
    for i in range(3):
        _, s, r, d, info = step(jax.random.key(0), s, 0, p)
    assert bool(d) and bool(info.truncated) and not bool(info.success)


@settings(max_examples=12, deadline=None)
@given(level=st.sampled_from(HAND_LEVELS), actions=st.lists(st.integers(0, 3), min_size=24, max_size=24))
def test_matches_python_reference(level, actions):
    env, params, _, _, rollout, _ = env_fns((7, 7), 2)
    s0 = env.from_text(level)
    _, (states, obs, rew, done, info) = rollout(s0, jnp.asarray(actions, jnp.int32))
    walls, targets, boxes, player = parse_level(level)
    player = tuple(player)
    for t, a in enumerate(actions):
        boxes, player, r, d, succ, eff = ref_step(walls, targets, boxes, player, a, t, 100, 2)
        st_t = jax.tree.map(lambda x: x[t], states)
        assert np.array_equal(np.asarray(st_t.boxes), boxes)
        assert tuple(np.asarray(st_t.player)) == player
        assert np.isclose(float(rew[t]), r, atol=1e-6)
        assert bool(info.effective[t]) == eff and bool(info.success[t]) == succ
        if succ:
            break


# ---- generator ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dim,nb", PRESETS)
def test_generated_levels_valid_unsolved_and_solvable(dim, nb):
    env, params, step, gen, *_ = env_fns(dim, nb)
    lv = jax.device_get(gen(jax.random.split(jax.random.key(7), 24), params))
    H, W = dim
    for i in range(24):
        walls, targets, boxes, player = lv.walls[i], lv.targets[i], lv.boxes[i], lv.player[i]
        assert walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()
        assert boxes.sum() == nb and targets.sum() == nb
        assert not (boxes & walls).any() and not (targets & walls).any()
        assert not walls[player[0], player[1]] and not boxes[player[0], player[1]]
        assert not (boxes & targets).any(), "no box may start on a target"
        res = solve(walls, targets, boxes, player)
        assert res is not None and res[0] >= 1
        if i < 3:  # replay the oracle's plan in the env: success at exactly its length
            s = state_from_level(walls, targets, boxes, player)
            for j, a in enumerate(res[1]):
                _, s, r, d, info = step(jax.random.key(0), s, a, params)
                assert bool(d) == (j == res[0] - 1)
            assert bool(info.success)
    assert lv.fallback.mean() <= 0.2


@pytest.mark.parametrize("dim,nb", PRESETS)
def test_generator_many_levels_structure_and_fallback_rate(dim, nb):
    """256 levels per preset (no oracle: structure only; solvability is checked above): valid
    layouts, no box on a target, and the fixed fallback level stays rare."""
    env, params, _, gen, *_ = env_fns(dim, nb)
    lv = jax.device_get(gen(jax.random.split(jax.random.key(3), 256), params))
    B = np.arange(256)
    assert (lv.boxes.sum((1, 2)) == nb).all() and (lv.targets.sum((1, 2)) == nb).all()
    assert not (lv.boxes & lv.targets).any() and not (lv.boxes & lv.walls).any()
    assert not (lv.targets & lv.walls).any()
    assert not lv.walls[B, lv.player[:, 0], lv.player[:, 1]].any()
    assert not lv.boxes[B, lv.player[:, 0], lv.player[:, 1]].any()
    assert lv.walls[:, 0].all() and lv.walls[:, -1].all()
    assert lv.walls[:, :, 0].all() and lv.walls[:, :, -1].all()
    assert lv.fallback.mean() <= 0.02, lv.fallback.mean()
    assert (lv.score[~lv.fallback] > 0).all()
    # not all levels alike (6x6 rooms repeat more often)
    assert len({lv.walls[i].tobytes() + lv.boxes[i].tobytes() for i in range(256)}) > 128


def test_generator_budget_knobs():
    """attempts / rounds / walk length are static knobs; more rounds never raise the fallback."""
    keys = jax.random.split(jax.random.key(4), 64)
    params = Sokoban((7, 7), 3).default_params
    out = {}
    for rounds in (1, 3):
        env = Sokoban((7, 7), 3, attempts_per_round=2, max_rounds=rounds)
        lv = jax.device_get(jax.jit(jax.vmap(env.generate, in_axes=(0, None)))(keys, params))
        assert not (lv.boxes & lv.targets).any()
        assert (lv.attempts <= 2 * rounds).all() and (lv.attempts % 2 == 0).all()
        out[rounds] = lv.fallback.mean()
    assert out[3] <= out[1]


@pytest.mark.parametrize("dim,nb", [((6, 6), 1), ((7, 7), 3), ((5, 9), 2), ((9, 5), 3)])
def test_fallback_level_is_valid(dim, nb):
    walls, targets, boxes, player = fallback_level(dim, nb)
    assert walls.shape == dim and boxes.sum() == nb and not (boxes & targets).any()
    assert solve(walls, targets, boxes, player) is not None


def test_fallback_used_when_no_attempt_can_succeed():
    env, params, _, gen, *_ = env_fns((6, 6), 1)
    p = params.replace(reverse_steps=0)  # no pulls: every attempt scores 0
    lv = jax.device_get(gen(jax.random.split(jax.random.key(0), 24), p))
    assert lv.fallback.all()
    fb = fallback_level((6, 6), 1)
    assert np.array_equal(lv.boxes[0], fb[2]) and np.array_equal(lv.walls[0], fb[0])


def test_determinism_and_vmap_equals_loop():
    env, params, _, gen, rollout, vrollout = env_fns((7, 7), 2)
    keys = jax.random.split(jax.random.key(7), 24)  # same shapes as above: no recompilation
    a = jax.device_get(gen(keys, params))
    chex.assert_trees_all_equal(a, jax.device_get(gen(keys, params)))
    c = gen(jax.random.split(jax.random.key(8), 24), params)
    assert not np.array_equal(a.walls, c.walls)
    reset = jax.jit(env.reset_env)
    states = [reset(k, params)[1] for k in keys[:3]]
    for i, s in enumerate(states):
        assert np.array_equal(s.boxes, a.boxes[i]) and np.array_equal(s.player, a.player[i])
        assert np.array_equal(s.walls, a.walls[i]) and int(s.step_count) == 0
    acts = jax.random.randint(jax.random.key(5), (3, 16), 0, 4)
    batched = jax.tree.map(lambda *x: jnp.stack(x), *states)
    _, vout = vrollout(batched, acts)
    for i, s in enumerate(states):
        _, out = rollout(s, acts[i])
        chex.assert_trees_all_equal(out, jax.tree.map(lambda x: x[i], vout))


# ---- random rollouts ----------------------------------------------------------------------------
def test_random_rollout_invariants():
    env, params, _, gen, _, vrollout = env_fns((7, 7), 2)
    B, T = 24, 40
    lv = gen(jax.random.split(jax.random.key(11), B), params)
    s0 = jax.vmap(state_from_level)(lv.walls, lv.targets, lv.boxes, lv.player)
    acts = jax.random.randint(jax.random.key(12), (B, T), 0, 4)
    _, (states, obs, rew, done, info) = jax.device_get(vrollout(s0, acts))
    s0 = jax.device_get(s0)
    render = jax.jit(jax.vmap(jax.vmap(env.render_glyphs)))
    assert np.array_equal(render(states), obs)
    for b in range(B):
        walls, targets = s0.walls[b], s0.targets[b]
        prev_boxes, prev_player = s0.boxes[b], tuple(s0.player[b])
        for t in range(T):
            boxes, player = states.boxes[b, t], tuple(states.player[b, t])
            assert not walls[player] and not boxes[player]
            assert not (boxes & walls).any() and boxes.sum() == 2
            n_on = int((boxes & targets).sum())
            assert n_on == int(states.boxes_on_target[b, t])
            n_prev = int((prev_boxes & targets).sum())
            succ = n_on == 2
            want = -0.1 + (n_on > n_prev) - (n_on < n_prev) + 10 * succ
            assert np.isclose(rew[b, t], want, atol=1e-6)
            changed = player != prev_player or not np.array_equal(boxes, prev_boxes)
            assert bool(info.effective[b, t]) == changed
            assert bool(info.success[b, t]) == succ and bool(done[b, t]) == (succ or t + 1 >= 100)
            if succ:
                break
            prev_boxes, prev_player = boxes, player


def test_no_retrace_across_steps():
    env, params, *_ = env_fns((7, 7), 2)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(key, state, action):
        return env.step_env(key, state, action, params)

    s = env.from_text(LEVEL_PUSH)
    for i in range(8):
        _, s, r, d, info = step(jax.random.key(i), s, jnp.int32(i % 4))
    assert int(s.step_count) == 8


# ---- oracle -------------------------------------------------------------------------------------
def test_oracle_known_levels():
    assert solve_text("######\n#P_XO#\n######") == (2, [3, 3])
    assert solve_text("#####\n#P√_#\n#####") == (0, [])
    assert solve_text("######\n#XP_O#\n######") is None  # box against the left wall: dead
    # needs a detour: walk around the box to push it up
    res = solve_text("#####\n#_O_#\n#_X_#\n#_P_#\n#####")
    assert res == (1, [0])
    res = solve_text("######\n#O___#\n#_X__#\n#__P_#\n######")
    assert res is not None and res[0] == 5  # two pushes + three repositioning moves
