"""`make run`: WMAct on a 5x5 perfect maze, a ~1M-parameter model from scratch, sized for 2 CPU cores
(about 10 minutes): a supervised warm start on oracle demonstrations, then WMAct PPO.

Why this puzzle: a model from scratch has to learn to read the grid before RL can do anything, and
that costs compute. On these 2 cores the 5x5 maze is learned in a ~6-minute warm start (83% greedy
success on 64 held-out levels after 600 steps, measured); 7x7 mazes and Sokoban 6x6 were not, within
budgets of that size (see README, "Status and limits").

The paper's settings (turn cap 30 annealed every 100 iterations, 256 episodes per iteration, an 8B
model) are for accelerators; here the cap starts at 5 and is annealed every 5 iterations.
"""
from configs import base
from configs._scratch import turn_tokens


def get_config():
    c = base.get_config()
    c.env.name = "Maze-5x5"
    c.rollout.system_prompt = "minimal"
    c.rollout.levels_per_iteration, c.rollout.group_size = 8, 4
    c.rollout.context_len = 512
    c.rollout.max_actions_per_turn = 8  # a whole optimal plan (<= 6 moves on 5x5) fits in one answer
    c.rollout.max_turn_tokens = turn_tokens(c.rollout.max_actions_per_turn)  # 32
    c.rollout.max_actions = 16
    c.anneal.l0, c.anneal.tau = 5, 5
    c.ppo.epochs, c.ppo.minibatches = 2, 2
    c.ppo.lr = 1e-4
    c.warmstart.steps, c.warmstart.batch_size, c.warmstart.num_levels = 600, 32, 3000
    c.warmstart.curriculum = 0.5  # 300 one-action steps: the model left its plateau after 150-250 (lr 1e-3)
    c.warmstart.lr, c.warmstart.noise, c.warmstart.plan_fraction = 1e-3, 0.05, 0.3
    c.train.iterations = 30
    c.train.eval_every = 10
    c.train.eval_levels = 64
    c.train.checkpoint_every = 10
    return c
