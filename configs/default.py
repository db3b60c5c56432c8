"""`make run`: the small default of base.py (WMAct on Sokoban 6x6 with one box, scratch model)."""
from configs import base


def get_config():
    return base.get_config()
