"""WMAct on Taxi-v3 with SmolLM2-135M-Instruct (for GPU/TPU); see configs/_smollm2.py."""
from configs._smollm2 import smollm2_config


def get_config():
    return smollm2_config("Taxi-v3", max_actions=60)
