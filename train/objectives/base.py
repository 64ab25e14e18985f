"""What an objective does when it has nothing to add: no step arguments, nothing prepared
outside the gradient, the augmented batch as the model input, no results fields."""

from __future__ import annotations


class Objective:
  """Base of the objectives: a subclass defines `__init__(config, num_classes)` and `loss`."""

  @staticmethod
  def check(config) -> None:
    """The objective's own config settings, before anything is compiled."""

  def step_args(self, mesh) -> tuple:
    return ()

  def prepare(self, view, x, y):
    return None

  def model_input(self, x, aux):
    return x

  def record(self) -> dict:
    return {}
