"""The environment interface shared by Sokoban, Maze and Taxi (gymnax-style).

Every environment is a Python object holding only *static* facts (grid size, number of boxes,
glyph table, action names); everything that may vary between runs or be vmapped lives in a
`flax.struct` params dataclass, and every episode's data lives in a `flax.struct` state.
All methods but `render_text` are pure functions of arrays, safe under `jit` and `vmap`.

Two ways to auto-reset:
- `env.step` (gymnax semantics): after a terminal step the returned state is a *fresh level*.
  Under `vmap` the level generator runs for every episode at every step (a `select` over both
  branches), which is fine for cheap resets (Taxi) and small batches.
- `envs_jax.wrappers.LevelQueueAutoReset`: a batch wrapper that keeps a queue of pre-generated
  levels and generates only a few new ones per step; this is what throughput studies should use.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Generic, Tuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

TEnvState = TypeVar("TEnvState")
TEnvParams = TypeVar("TEnvParams")


class EnvError(ValueError):
    """Bad environment name, impossible size or override: raised before anything is traced."""


@struct.dataclass
class StepInfo:
    """What every environment reports about one step (all scalars per episode).

    effective: the action changed the environment state (the player/taxi moved, a box was pushed,
      a passenger was picked up or dropped). WMAct's reward rescaling counts these.
    success: the puzzle is solved after this step.
    truncated: the episode ended on the step limit without success.
    """

    effective: jax.Array  # bool []
    success: jax.Array  # bool []
    truncated: jax.Array  # bool []


class Environment(Generic[TEnvState, TEnvParams]):
    """Base class. Subclasses implement `default_params`, `reset_env`, `step_env`,
    `render_glyphs`, and set `name`, `action_names`, `glyphs`, `glyph_meanings`, `grid_shape`,
    `rules_text`.

    Observations are the glyph grid itself: an int32 array `[rows, cols]` of indices into
    `self.glyphs` (what `render_glyphs` returns), so a text codec can turn it into tokens in-graph.
    """

    name: str = "Environment"
    action_names: Tuple[str, ...] = ()
    glyphs: Tuple[str, ...] = ()  # glyph index -> one printable character
    glyph_meanings: Tuple[str, ...] = ()  # glyph index -> what the symbol means (for prompts/docs)
    grid_shape: Tuple[int, int] = (0, 0)  # static shape of render_glyphs(state)
    rules_text: str = ""

    # ---- to implement -------------------------------------------------------------------------
    @property
    def default_params(self) -> TEnvParams:
        raise NotImplementedError

    def reset_env(self, key: jax.Array, params: TEnvParams) -> Tuple[jax.Array, TEnvState]:
        """A fresh level at step 0: (obs, state)."""
        raise NotImplementedError

    def step_env(
        self, key: jax.Array, state: TEnvState, action: jax.Array, params: TEnvParams
    ) -> Tuple[jax.Array, TEnvState, jax.Array, jax.Array, StepInfo]:
        """One step with no auto-reset: (obs, state, reward, done, info)."""
        raise NotImplementedError

    def render_glyphs(self, state: TEnvState) -> jax.Array:
        """int32 [rows, cols] glyph indices (jittable)."""
        raise NotImplementedError

    def enumerate_grids(self) -> np.ndarray | None:
        """Every grid this environment can render (int32 [n, rows, cols]), or None when there are
        too many to list (the default).

        A text codec verifies its per-cell token tables on these instead of on random glyph grids:
        a glyph pair that never stands side by side in a real grid (Taxi's two walls `||`, which a
        tokenizer may hold as one token) then does not force a separator between cells.
        """
        return None

    # ---- provided -----------------------------------------------------------------------------
    @property
    def num_actions(self) -> int:
        return len(self.action_names)

    def get_obs(self, state: TEnvState) -> jax.Array:
        return self.render_glyphs(state)

    def reset(self, key: jax.Array, params: TEnvParams | None = None):
        if params is None:
            params = self.default_params
        return self.reset_env(key, params)

    def step(self, key: jax.Array, state: TEnvState, action: jax.Array, params: TEnvParams | None = None):
        """gymnax-style auto-reset: a terminal step returns the first state of a fresh level.

        The reward, done and info still describe the terminal step itself.
        """
        if params is None:
            params = self.default_params
        key_step, key_reset = jax.random.split(key)
        obs_st, state_st, reward, done, info = self.step_env(key_step, state, action, params)
        obs_re, state_re = self.reset_env(key_reset, params)
        state = jax.tree.map(lambda r, s: jax.lax.select(done, r, s), state_re, state_st)
        obs = jax.lax.select(done, obs_re, obs_st)
        return obs, state, reward, done, info

    def glyphs_to_text(self, grid: np.ndarray, sep: str = "") -> str:
        """Host-side: a glyph grid (any array-like) -> rows joined by newlines."""
        grid = np.asarray(grid)
        return "\n".join(sep.join(self.glyphs[int(g)] for g in row) for row in grid)

    def render_text(self, state: TEnvState, sep: str = "") -> str:
        """Host-side text of one (unbatched) state, e.g. for a prompt or a transcript."""
        return self.glyphs_to_text(np.asarray(jax.device_get(self.render_glyphs(state))), sep=sep)

    def legend_text(self) -> str:
        """One line per symbol, e.g. '# : wall'."""
        return "\n".join(f"{g} : {m}" for g, m in zip(self.glyphs, self.glyph_meanings))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, grid_shape={self.grid_shape})"


def replace_params(params: Any, overrides: Dict[str, Any], env_name: str) -> Any:
    """`params.replace(**overrides)` with a clear error naming any unknown field."""
    fields = {f.name for f in dataclasses.fields(params)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise EnvError(
            f"{env_name}: unknown parameter(s) {unknown}; valid parameters are {sorted(fields)}"
        )
    return params.replace(**overrides)
