"""`make run`: WMAct on Sokoban 6x6 with one box, a ~1M-parameter model from scratch, sized for 2 CPU
cores (about 10 minutes): a supervised warm start on oracle demonstrations, then WMAct PPO.

The paper's settings (turn cap 30 annealed every 100 iterations, 256 episodes per iteration, an 8B
model) are for accelerators; here the cap starts at 5 and is annealed every 5 iterations.
"""
from configs import base


def get_config():
    c = base.get_config()
    c.env.name = "Sokoban-6x6-1"
    c.rollout.system_prompt = "compact"
    c.rollout.levels_per_iteration, c.rollout.group_size = 8, 4
    c.rollout.context_len = 512
    c.rollout.max_turn_tokens = 24
    c.rollout.max_actions_per_turn = 4
    c.rollout.max_actions = 20
    c.anneal.l0, c.anneal.tau = 6, 5
    c.ppo.epochs, c.ppo.minibatches = 2, 2
    c.ppo.lr = 5e-4
    c.warmstart.steps, c.warmstart.batch_size, c.warmstart.num_levels = 150, 16, 800
    c.warmstart.plan_fraction = 0.7
    c.train.iterations = 40
    c.train.eval_every = 20
    c.train.eval_levels = 64
    c.train.checkpoint_every = 10
    return c
