"""Taxi: Gymnasium Taxi-v3 dynamics in pure JAX, larger generated maps, and a BFS oracle."""

from envs_jax.taxi.env import Taxi, TaxiParams, TaxiState
from envs_jax.taxi.oracle import solve
from envs_jax.taxi import maps

__all__ = ["Taxi", "TaxiParams", "TaxiState", "solve", "maps"]
