"""envs_jax.oracles: the plan of `optimal_actions`, replayed in the env, solves the level in exactly
`optimal_length` steps, and that length matches an independent host BFS."""

from collections import deque
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from envs_jax.oracles import optimal_actions, optimal_length

N_LEVELS = 4
DELTAS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # Up, Down, Left, Right (Sokoban and Maze)


@lru_cache(maxsize=None)
def _make(name):
    """One env per preset with its jitted batch reset and step (compiled once per file)."""
    env, params = envs_jax.make(name)
    reset = jax.jit(jax.vmap(env.reset_env, in_axes=(0, None)))
    return env, params, reset, jax.jit(env.step_env)


def _row(tree, i):
    return jax.tree.map(lambda x: np.asarray(x)[i], tree)


def _levels(name, n, seed):
    env, params, reset, _ = _make(name)
    keys = jax.random.split(jax.random.key(seed), n)
    _, st = reset(keys, params)
    st = jax.device_get(st)
    return [_row(st, i) for i in range(n)]


def _replay(name, state, plan):
    """Plays `plan`; asserts the episode is not over before the last action and succeeds on it."""
    env, params, _, step = _make(name)
    for t, a in enumerate(plan):
        _, state, _, done, info = step(jax.random.key(t), state, jnp.int32(a), params)
        last = t == len(plan) - 1
        assert bool(info.success) == last, (t, len(plan))
        assert bool(done) == last
        assert bool(info.effective)  # an optimal plan never wastes a step
    return state


def _sokoban_bfs(s):
    """Independent host BFS over (player, box set) for a generated Sokoban level."""
    walls, targets = np.asarray(s.walls), np.asarray(s.targets)
    start = (tuple(int(x) for x in s.player), frozenset(map(tuple, np.argwhere(np.asarray(s.boxes)))))
    goal = frozenset(map(tuple, np.argwhere(targets)))
    dist = {start: 0}
    queue = deque([start])
    while queue:
        st = queue.popleft()
        (r, c), boxes = st
        if boxes == goal:
            return dist[st]
        for dr, dc in DELTAS:
            p1 = (r + dr, c + dc)
            if walls[p1]:
                continue
            nb = boxes
            if p1 in boxes:
                p2 = (r + 2 * dr, c + 2 * dc)
                if walls[p2] or p2 in boxes:
                    continue
                nb = (boxes - {p1}) | {p2}
            nxt = (p1, nb)
            if nxt not in dist:
                dist[nxt] = dist[st] + 1
                queue.append(nxt)
    return None


def _maze_bfs(s):
    walls = np.asarray(s.walls)
    src, goal = tuple(int(x) for x in s.pos), tuple(int(x) for x in s.goal)
    dist = {src: 0}
    queue = deque([src])
    while queue:
        r, c = queue.popleft()
        for dr, dc in DELTAS:
            n = (r + dr, c + dc)
            if not walls[n] and n not in dist:
                dist[n] = dist[(r, c)] + 1
                queue.append(n)
    return dist.get(goal)


def _taxi_bfs(env, s):
    return int(env._host_distances()[int(env.state_index(s))])


@pytest.mark.parametrize("name,seed", [("Sokoban-6x6-1", 0), ("Maze-7x7", 1), ("Taxi-v3", 2)])
def test_optimal_plan_solves_in_exactly_its_length(name, seed):
    env, params, _, _ = _make(name)
    for s in _levels(name, N_LEVELS, seed):
        plan = optimal_actions(env, s, params)
        assert plan is not None and len(plan) > 0
        assert all(isinstance(a, int) and 0 <= a < env.num_actions for a in plan)
        assert optimal_length(env, s, params) == len(plan)
        if name.startswith("Sokoban"):
            ref = _sokoban_bfs(s)
        elif name.startswith("Maze"):
            ref = _maze_bfs(s)
        else:
            ref = _taxi_bfs(env, s)
        assert len(plan) == ref
        _replay(name, s, plan)


def test_oracle_from_a_mid_episode_state():
    """The oracle plans from the state's current position, not from the level's start."""
    env, params, _, step = _make("Maze-7x7")
    s = _levels("Maze-7x7", N_LEVELS, 3)[0]
    plan = optimal_actions(env, s)
    _, s1, _, _, _ = step(jax.random.key(0), s, jnp.int32(plan[0]), params)
    s1 = jax.device_get(s1)
    assert optimal_length(env, s1) == len(plan) - 1 == _maze_bfs(s1)


def test_solved_and_unsolvable_sokoban():
    env, params = envs_jax.make("Sokoban-6x6-1")
    solved = env.from_text("######\n#√P__#\n#____#\n#____#\n#____#\n######")
    assert optimal_actions(env, solved) == []
    assert optimal_length(env, solved) == 0
    stuck = env.from_text("######\n#XP__#\n#____#\n#____#\n#___O#\n######")  # box in a corner
    assert optimal_actions(env, stuck) is None
    assert optimal_length(env, stuck) is None


def test_unknown_env_raises():
    class Other:
        pass

    with pytest.raises(TypeError):
        optimal_actions(Other(), None)
