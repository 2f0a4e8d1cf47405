"""Bucket sampling in proportion to bucket size (the classic cumulative scale).

The draw for a step is a pure function of (seed, step), so a resumed run draws
exactly what the interrupted one would have: the sampler's state is the global
step, restored with the checkpoint.
"""

import numpy as np


class BucketSampler:

  def __init__(self, sizes, seed):
    """sizes: pairs per bucket; empty buckets are never drawn."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.sum() <= 0:
      raise ValueError("every bucket is empty")
    self.scale = np.cumsum(sizes) / sizes.sum()  # cumulative share, last entry 1.0
    self.seed = seed

  def draw(self, step):
    """The bucket index for global step `step`."""
    u = np.random.default_rng([self.seed, step]).random()
    return int(np.searchsorted(self.scale, u, side="right"))
