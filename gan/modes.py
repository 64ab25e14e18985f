"""`--mode=gan` (light to import: the work loads inside the mode)."""

from __future__ import annotations


def gan(config, workdir: str) -> None:
  """`--mode=gan`: trains the DCGAN config in `workdir` (resuming) and writes `W/gan/`."""
  from gan import train
  train.train(config, workdir)
