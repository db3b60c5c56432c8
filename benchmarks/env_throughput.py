"""Environment throughput: env steps/s with auto-reset and fresh levels, levels generated/s.

Every figure is a jitted `lax.scan` of uniformly random actions over a batch of episodes with
`LevelQueueAutoReset` (fresh generated levels flow in as episodes end), timed after a warm-up
compile. Side by side in the same run: the naive gymnax-style auto-reset (`env.step`, which runs
the generator for every episode at every step), Jumanji's Maze with its auto-reset wrapper, and
Gymnasium's Python Taxi.

    python benchmarks/env_throughput.py            # full table (a few minutes on 2 cores)
    python benchmarks/env_throughput.py --quick    # 1024 episodes only
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import envs_jax  # noqa: E402


def _time(fn, *args, repeats=3):
    out = fn(*args)
    jax.block_until_ready(out)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - t0)
    return best, out


def queue_steps_per_s(name, batch, steps, refill=None):
    env, params = envs_jax.make(name)
    wrapper = envs_jax.LevelQueueAutoReset(env, batch, refill=refill)

    _, qs0 = jax.jit(wrapper.reset)(jax.random.PRNGKey(0), params)

    @jax.jit
    def run(qs, key):
        def body(carry, k):
            qs, done_count = carry
            ka, ks = jax.random.split(k)
            actions = jax.random.randint(ka, (batch,), 0, env.num_actions)
            _, qs, reward, done, info = wrapper.step(ks, qs, actions, params)
            return (qs, done_count + jnp.sum(done)), None

        (qs, dones), _ = jax.lax.scan(body, (qs, jnp.zeros((), jnp.int32)), jax.random.split(key, steps))
        return dones, qs.reused, qs.served

    # Only the stepping scan is timed (the initial fill of the batch and the ring is not).
    t, (dones, reused, served) = _time(run, qs0, jax.random.PRNGKey(1))
    return batch * steps / t, int(dones), int(reused), int(served)


def naive_steps_per_s(name, batch, steps):
    env, params = envs_jax.make(name)

    _, state0 = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(jax.random.split(jax.random.PRNGKey(0), batch), params)

    @jax.jit
    def run(state, key):
        def body(state, k):
            ka, ks = jax.random.split(k)
            actions = jax.random.randint(ka, (batch,), 0, env.num_actions)
            _, state, reward, done, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(ks, batch), state, actions, params)
            return state, jnp.sum(done)

        _, dones = jax.lax.scan(body, state, jax.random.split(key, steps))
        return dones.sum()

    t, _ = _time(run, state0, jax.random.PRNGKey(1))
    return batch * steps / t


def levels_per_s(name, batch):
    env, params = envs_jax.make(name)
    gen = jax.jit(lambda k: jax.vmap(env.reset_env, in_axes=(0, None))(jax.random.split(k, batch), params)[0])
    t, _ = _time(gen, jax.random.PRNGKey(1))
    return batch / t


def jumanji_maze_steps_per_s(batch, steps, size=10):
    try:
        import jumanji
        from jumanji.environments import Maze
        from jumanji.environments.routing.maze.generator import RandomGenerator
        from jumanji.wrappers import AutoResetWrapper
    except Exception as e:  # pragma: no cover - optional comparison
        return f"n/a ({type(e).__name__})"
    env = AutoResetWrapper(Maze(generator=RandomGenerator(num_rows=size, num_cols=size)))

    state0, _ = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), batch))

    @jax.jit
    def run(state, key):
        def body(state, k):
            actions = jax.random.randint(k, (batch,), 0, 4)
            state, ts = jax.vmap(env.step)(state, actions)
            return state, ts.reward.sum()

        _, r = jax.lax.scan(body, state, jax.random.split(key, steps))
        return r.sum()

    t, _ = _time(run, state0, jax.random.PRNGKey(1))
    return batch * steps / t


def gymnasium_taxi_steps_per_s(steps=20000):
    try:
        import gymnasium as gym
    except Exception as e:  # pragma: no cover
        return f"n/a ({type(e).__name__})"
    name = "Taxi-v3" if "Taxi-v3" in gym.registry else "Taxi-v4"
    env = gym.make(name)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 6, steps)
    t0 = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(int(a))
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1024 episodes only")
    ap.add_argument("--steps", type=int, default=200, help="scan length per timed run")
    args = ap.parse_args()

    batches = [1024] if args.quick else [1, 256, 1024, 4096, 16384]
    names = ["Sokoban-6x6-1", "Sokoban-Standard", "Sokoban-Hard-1", "Sokoban-Hard-2",
             "Maze-7x7", "Maze-11x11", "Maze-21x21", "Taxi-v3"]
    names += [n for n in envs_jax.list_envs() if n.startswith("Taxi") and n != "Taxi-v3"]
    print(f"# setup: jax {jax.__version__}, devices {jax.devices()}, cpu cores {os.cpu_count()}, "
          f"python {platform.python_version()}, {args.steps} random steps per timed scan, best of 3")
    print("\n## Env steps/s with LevelQueueAutoReset (fresh levels; refill = ceil(B/32) per step)\n")
    print("| env | " + " | ".join(f"B={b}" for b in batches) + " | levels reused at B=1024 |")
    print("|---|" + "---|" * (len(batches) + 1))
    for name in names:
        row, reused_txt = [], "-"
        for b in batches:
            sps, dones, reused, served = queue_steps_per_s(name, b, args.steps)
            row.append(f"{sps / 1e6:.2f}M")
            if b == 1024:
                reused_txt = f"{reused}/{served}"
        print(f"| {name} | " + " | ".join(row) + f" | {reused_txt} |", flush=True)

    print("\n## Same at B=1024, side by side\n")
    print("| what | steps/s |")
    print("|---|---|")
    for name in ["Maze-11x11", "Sokoban-Standard", "Taxi-v3"]:
        print(f"| wmact-jax {name}, naive vmapped env.step auto-reset | "
              f"{naive_steps_per_s(name, 1024, args.steps) / 1e6:.3f}M |", flush=True)
    for name in ["Maze-11x11", "Sokoban-Standard", "Taxi-v3"]:
        print(f"| wmact-jax {name}, LevelQueueAutoReset | "
              f"{queue_steps_per_s(name, 1024, args.steps)[0] / 1e6:.3f}M |", flush=True)
    jm = jumanji_maze_steps_per_s(1024, args.steps)
    print(f"| Jumanji Maze 10x10 + AutoResetWrapper | {jm / 1e6:.3f}M |" if isinstance(jm, float)
          else f"| Jumanji Maze | {jm} |", flush=True)
    gt = gymnasium_taxi_steps_per_s()
    print(f"| Gymnasium Taxi (Python, 1 env) | {gt / 1e6:.4f}M |" if isinstance(gt, float)
          else f"| Gymnasium Taxi | {gt} |", flush=True)

    print("\n## Levels generated per second (vmapped reset_env, 1024 keys)\n")
    print("| env | levels/s |")
    print("|---|---|")
    for name in ["Sokoban-6x6-1", "Sokoban-Standard", "Sokoban-Hard-1", "Sokoban-Hard-2",
                 "Maze-7x7", "Maze-11x11", "Maze-21x21"]:
        print(f"| {name} | {levels_per_s(name, 1024):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
