"""Maze: random perfect mazes generated in JAX, with a BFS oracle."""

from envs_jax.maze.env import Maze, MazeParams, MazeState
from envs_jax.maze.generator import generate, bfs_distances
from envs_jax.maze.oracle import solve

__all__ = ["Maze", "MazeParams", "MazeState", "generate", "bfs_distances", "solve"]
