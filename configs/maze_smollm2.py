"""WMAct on Maze-9x9 with SmolLM2-135M-Instruct (for GPU/TPU); see configs/_smollm2.py."""
from configs._smollm2 import smollm2_config


def get_config():
    return smollm2_config("Maze-9x9", max_actions=100)
