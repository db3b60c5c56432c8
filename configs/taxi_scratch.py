"""WMAct on Gymnasium Taxi-v3, small model from scratch (CPU-sized); see configs/_scratch.py."""
from configs._scratch import scratch_config


def get_config():
    return scratch_config("Taxi-v3", max_actions=40, l0=8, max_actions_per_turn=18)
