"""Sokoban: pure-JAX env, in-JAX reverse-play level generator, exact BFS oracle."""

from envs_jax.sokoban.env import (
    ACTION_NAMES, GLYPHS, GLYPH_MEANINGS, Sokoban, SokobanParams, SokobanState, parse_level,
    state_from_level)
from envs_jax.sokoban.generator import Level, fallback_level, generate_level
from envs_jax.sokoban.oracle import solve, solve_state, solve_text

__all__ = [
    "Sokoban", "SokobanParams", "SokobanState", "Level", "generate_level", "fallback_level",
    "state_from_level", "parse_level", "solve", "solve_state", "solve_text", "ACTION_NAMES",
    "GLYPHS", "GLYPH_MEANINGS",
]
