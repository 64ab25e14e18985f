"""Shared protocol of the architecture studies (depth_budget, one_by_one_budget, width,
architectures): see docs/architecture_studies.md for why these numbers."""

import ml_collections

SEEDS = (0, 1, 2)


def architecture_protocol(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fashion-MNIST's first 1,000 training images per class (10,000), all 10,000 test images,
  10 epochs of configs/default.py's recipe, the test set every 2 epochs (the curves). The full
  60,000 for 10 epochs x 3 seeds would take about 50 hours of this 2-core machine for the four
  studies; the subset keeps them to about 9."""
  c.dataset.per_class = 1000
  c.num_epochs = 10
  c.eval_every_epochs = 2
  return c
