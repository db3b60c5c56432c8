"""WMAct on a 7x7 perfect maze, small model from scratch (CPU-sized); see configs/_scratch.py."""
from configs._scratch import scratch_config


def get_config():
    return scratch_config("Maze-7x7", max_actions=40, l0=8, max_actions_per_turn=14)
