"""Environment demo: thousands of vmapped episodes per environment, played by the oracle and by a
uniformly random policy; prints success rate, mean steps, steps/s and one rendered level each.

    python -m envs_jax.demo [--episodes 2048] [--envs Sokoban-6x6-1,Maze-7x7,Taxi-v3]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import envs_jax
from envs_jax.oracles import optimal_actions


def random_play(env, params, episodes: int, max_steps: int, seed: int = 0):
    """Each episode runs until done or max_steps (no auto-reset): (success rate, mean steps, steps/s)."""

    @jax.jit
    def run(key):
        k0, k1 = jax.random.split(key)
        _, st = jax.vmap(env.reset_env, in_axes=(0, None))(jax.random.split(k0, episodes), params)

        def body(carry, k):
            st, done, succ, steps = carry
            ka, ks = jax.random.split(k)
            a = jax.random.randint(ka, (episodes,), 0, env.num_actions)
            _, st2, r, d, info = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))(
                jax.random.split(ks, episodes), st, a, params)
            live = ~done
            st = jax.tree.map(lambda x, y: jnp.where(live.reshape((-1,) + (1,) * (x.ndim - 1)), x, y), st2, st)
            return (st, done | d, succ | (live & info.success), steps + live), None

        init = (st, jnp.zeros(episodes, bool), jnp.zeros(episodes, bool), jnp.zeros(episodes, jnp.int32))
        (st, done, succ, steps), _ = jax.lax.scan(body, init, jax.random.split(k1, max_steps))
        return succ, steps

    jax.block_until_ready(run(jax.random.PRNGKey(seed + 1)))
    t0 = time.perf_counter()
    succ, steps = jax.block_until_ready(run(jax.random.PRNGKey(seed)))
    dt = time.perf_counter() - t0
    return float(succ.mean()), float(steps.mean()), float(episodes * max_steps / dt)


def oracle_play(env, params, episodes: int, seed: int = 0):
    """Plays the oracle's plan of each level in the vmapped env: (success rate, mean steps, plans/s)."""
    keys = jax.random.split(jax.random.PRNGKey(seed), episodes)
    _, st = jax.jit(jax.vmap(env.reset_env, in_axes=(0, None)))(keys, params)
    host = jax.device_get(st)
    level = lambda i: jax.tree.map(lambda x: x[i], host)
    optimal_actions(env, level(0), params)  # warm-up: Maze/Taxi oracles compile on first use
    t0 = time.perf_counter()
    plans = [optimal_actions(env, level(i), params) for i in range(episodes)]
    t_plan = time.perf_counter() - t0
    L = max([len(p) for p in plans if p] + [1])  # >= 1: the replay scan indexes acts[:, t]
    acts = np.zeros((episodes, L), np.int32)
    lens = np.zeros(episodes, np.int32)
    for i, p in enumerate(plans):
        if p:
            acts[i, : len(p)] = p
            lens[i] = len(p)

    @jax.jit
    def replay(st, acts, lens):
        def body(carry, t):
            st, succ = carry
            live = t < lens
            _, st2, r, d, info = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))(
                jax.random.split(jax.random.PRNGKey(0), episodes), st, acts[:, t], params)
            st = jax.tree.map(lambda x, y: jnp.where(live.reshape((-1,) + (1,) * (x.ndim - 1)), x, y), st2, st)
            return (st, succ | (live & info.success)), None

        (st, succ), _ = jax.lax.scan(body, (st, jnp.zeros(episodes, bool)), jnp.arange(L))
        return succ

    succ = replay(st, jnp.asarray(acts), jnp.asarray(lens))
    return float(succ.mean()), float(lens.mean()), episodes / t_plan


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=2048)
    ap.add_argument("--oracle-episodes", type=int, default=256, help="Sokoban's oracle is a host BFS")
    ap.add_argument("--envs", default="Sokoban-6x6-1,Sokoban-Standard,Maze-7x7,Maze-11x11,Taxi-v3")
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()}")
    rows = []
    for name in args.envs.split(","):
        env, params = envs_jax.make(name)
        _, st = env.reset(jax.random.PRNGKey(0), params)
        print(f"\n{name}: {env.grid_shape[0]}x{env.grid_shape[1]} glyphs, actions {env.action_names}")
        print(env.render_text(st))
        max_steps = int(getattr(params, "max_steps", 100))
        rs, rl, rsps = random_play(env, params, args.episodes, max_steps)
        n_or = args.oracle_episodes if name.startswith("Sokoban") else args.episodes
        os_, ol, ops = oracle_play(env, params, n_or)
        rows.append((name, rs, rl, rsps, os_, ol, ops, n_or))
    print("\n| env | random: success | random: mean steps | random: steps/s | oracle: success | oracle: mean steps | oracle plans/s |")
    print("|---|---|---|---|---|---|---|")
    for name, rs, rl, rsps, os_, ol, ops, n_or in rows:
        print(f"| {name} | {rs:.3f} | {rl:.1f} | {rsps / 1e6:.2f}M | {os_:.3f} ({n_or} levels) | {ol:.1f} | {ops:,.0f} |")


if __name__ == "__main__":
    main()
