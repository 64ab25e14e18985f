"""`--mode=summary`: parameters, MACs and receptive field of every layer of a config's model,
from its dataset's example shape alone (no data files). Writes `workdir/summary.json`."""

from __future__ import annotations

import os

import models
import util
from data import datasets
from errors import UserError
from models import summary


def summarize(config, workdir: str) -> dict:
  """Prints the per-layer table and writes `workdir/summary.json` (model, dataset, input shape,
  num_params, macs, per-layer rows)."""
  if not workdir:
    raise UserError('--workdir is required: summary.json is written there')
  info = datasets.info(config.dataset)
  model = models.create(config.model, info.num_classes, 'float32')
  rows, num_params, macs = summary.layer_table(model, info.shape)
  result = {
      'model': config.model.name, 'dataset': info.name, 'input_shape': list(info.shape),
      'num_classes': info.num_classes, 'num_params': num_params, 'macs': macs,
      'layers': [{'name': r.name, 'kind': r.kind, 'output_shape': list(r.shape),
                  'params': r.params, 'macs': r.macs,
                  'receptive_field': list(r.receptive_field)} for r in rows],
  }
  os.makedirs(workdir, exist_ok=True)
  util.write_json(os.path.join(workdir, 'summary.json'), result)
  print(f'{config.model.name} on {info.name} {info.shape}, {info.num_classes} classes')
  print(summary.format_table(rows, num_params, macs))
  return result
