"""The analysis modes main.py's table points at; light to import (work loads inside)."""

from __future__ import annotations


def summary(config, workdir: str) -> None:
  """`--mode=summary`: the per-layer table of a config's model (analysis/summary.py)."""
  from analysis import summary as summary_lib
  summary_lib.summarize(config, workdir)
