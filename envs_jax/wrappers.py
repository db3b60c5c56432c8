"""Batch auto-reset that keeps fresh levels flowing without generating one per episode per step.

The usual vmapped auto-reset (`env.step`) computes `select(done, reset(key), stepped)` for every
episode at every step, so the level generator (a bounded loop for Sokoban and Maze) dominates the
cost of a step. A `lax.map` of resets avoids the waste but serialises the generator.

`LevelQueueAutoReset` instead owns the whole batch: it keeps a ring buffer of pre-generated
levels (initial states). At each step, the episodes that finish take the next levels from the ring
in order (a cumsum over the done mask gives each its slot), and the generator runs for a fixed,
small number of new levels (`refill`) that are written behind the last unread level. Levels are
fresh as long as the generator keeps up with the demand (`refill` >= episodes finishing per step,
on average); if the ring runs dry, already-served levels are served again and counted in
`QueueState.reused`, so a study can check its levels were fresh.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import struct

from envs_jax.core import Environment, EnvError


@struct.dataclass
class QueueState:
    env_state: Any  # batched env state, leading axis [num_envs]
    queue: Any  # batched env state at step 0, leading axis [queue_size]
    head: jax.Array  # int32: read pointer (slot = head % queue_size), kept in [0, queue_size)
    tail: jax.Array  # int32: write pointer (slot = tail % queue_size); tail - head = unread levels
    reused: jax.Array  # int32: levels served that had been served before (ring ran dry)
    served: jax.Array  # int32: levels served by resets so far


class LevelQueueAutoReset:
    """Auto-resetting batch of `num_envs` episodes fed by a ring of pre-generated levels.

    Args:
      env: the environment.
      num_envs: static batch size.
      queue_size: ring capacity (default: num_envs).
      refill: levels generated per step (default: ceil(num_envs / 32)); set it to at least the
        expected number of episodes ending per step (num_envs / mean episode length).
    """

    def __init__(self, env: Environment, num_envs: int, queue_size: Optional[int] = None,
                 refill: Optional[int] = None):
        if num_envs < 1:
            raise EnvError(f"num_envs must be >= 1, got {num_envs}")
        self.env = env
        self.num_envs = int(num_envs)
        self.queue_size = int(queue_size if queue_size is not None else num_envs)
        self.refill = int(refill if refill is not None else math.ceil(num_envs / 32))
        if self.queue_size < 1 or self.refill < 1:
            raise EnvError(f"queue_size and refill must be >= 1, got {self.queue_size}, {self.refill}")
        if self.refill > self.queue_size:
            raise EnvError(f"refill ({self.refill}) cannot exceed queue_size ({self.queue_size})")

    def _generate(self, key, n, params):
        keys = jax.random.split(key, n)
        _, states = jax.vmap(self.env.reset_env, in_axes=(0, None))(keys, params)
        return states

    def reset(self, key: jax.Array, params=None):
        """Fresh levels for the batch and a full ring: (obs [num_envs, ...], QueueState)."""
        params = self.env.default_params if params is None else params
        k_env, k_queue = jax.random.split(key)
        env_state = self._generate(k_env, self.num_envs, params)
        queue = self._generate(k_queue, self.queue_size, params)
        zero = jnp.zeros((), jnp.int32)
        qs = QueueState(env_state=env_state, queue=queue, head=zero,
                        tail=jnp.asarray(self.queue_size, jnp.int32), reused=zero, served=zero)
        return jax.vmap(self.env.get_obs)(env_state), qs

    def step(self, key: jax.Array, qs: QueueState, actions: jax.Array, params=None):
        """One step of every episode; finished ones restart on the next queued level.

        Returns (obs, QueueState, reward [B], done [B], info); reward/done/info describe the step
        taken, the returned state/obs are those of the new level where done.
        """
        params = self.env.default_params if params is None else params
        k_step, k_gen = jax.random.split(key)
        step_keys = jax.random.split(k_step, self.num_envs)
        _, stepped, reward, done, info = jax.vmap(
            self.env.step_env, in_axes=(0, 0, 0, None))(step_keys, qs.env_state, actions, params)

        # Serve queued levels to finished episodes, in order.
        n_done = jnp.sum(done.astype(jnp.int32))
        rank = jnp.cumsum(done.astype(jnp.int32)) - 1  # [B]: k-th finished episode gets slot head+k
        slot = (qs.head + jnp.maximum(rank, 0)) % self.queue_size
        fresh = jax.tree.map(lambda q: q[slot], qs.queue)
        env_state = jax.tree.map(
            lambda f, s: jnp.where(done.reshape((-1,) + (1,) * (s.ndim - 1)), f, s), fresh, stepped)
        available = qs.tail - qs.head
        reused = qs.reused + jnp.maximum(n_done - available, 0)
        head = qs.head + n_done
        head = jnp.maximum(head, qs.tail - self.queue_size)  # never more than a ring behind

        # Refill behind the last unread level, never overwriting unread ones.
        new_levels = self._generate(k_gen, self.refill, params)
        free = self.queue_size - jnp.maximum(qs.tail - head, 0)
        n_write = jnp.minimum(self.refill, free)
        base = jnp.maximum(qs.tail, head)  # if the ring ran dry, head passed tail
        write_pos = (base + jnp.arange(self.refill)) % self.queue_size
        write_ok = jnp.arange(self.refill) < n_write
        # Masked rows scatter to an out-of-range index and are dropped.
        write_pos = jnp.where(write_ok, write_pos, self.queue_size)
        queue = jax.tree.map(lambda q, n: q.at[write_pos].set(n, mode="drop"), qs.queue, new_levels)
        tail = base + n_write
        # Rebase both pointers by whole rings (slots are unchanged) so the int32 pointers never
        # overflow: head stays in [0, queue_size) and tail in [head, head + queue_size].
        shift = (head // self.queue_size) * self.queue_size
        head, tail = head - shift, tail - shift

        qs = QueueState(env_state=env_state, queue=queue, head=head, tail=tail, reused=reused,
                        served=qs.served + n_done)
        obs = jax.vmap(self.env.get_obs)(env_state)
        return obs, qs, reward, done, info
