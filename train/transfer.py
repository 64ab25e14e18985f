"""Learning from another run: initialization from a trained run (`init_from`), frozen layers and
per-layer learning rates (`finetune.freeze`, `finetune.lr_multipliers`), the source task
evaluated while fine-tuning (forgetting, `finetune.eval_source`), and progressive networks
(Rusu et al. 2016, `finetune.progressive`).

Layers are a model's top-level modules holding parameters, named as Flax names them
(`ConvNormAct_0`, `Block_3`, `Dense_0`; `--mode=summary` lists them), in forward order; the last
one is the head. A layer list (`finetune.reinit`, `finetune.freeze`, the patterns of
`lr_multipliers`) is comma-separated names or shell patterns (`Block_*`), or `head` (the last
layer), `body` (all but the head) or `first:K` (the first K layers: a prefix of the network).

A fine-tuned run normalizes its inputs as its source did (the loaded filters were trained on
that scale). Frozen layers get exactly zero updates; their batch-norm running statistics keep
tracking the new data in train mode (as a PyTorch layer with requires_grad=False does) unless
`finetune.freeze_batch_stats`, which keeps them bit for bit too.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data import sources
from errors import UserError
from kernels import convolutions
from models import summary
from store import checkpoints, runs
from train import distributed

# --------------------------------------------------------------------------- layer lists


def select(spec: str, order: list[str], key: str) -> list[str]:
  """The layers of `order` that the layer list `spec` names (see the module docstring)."""
  chosen: list[str] = []
  for item in (s.strip() for s in str(spec).split(',') if s.strip()):
    if item == 'head':
      found = order[-1:]
    elif item == 'body':
      found = order[:-1]
    elif item.startswith('first:'):
      try:
        k = int(item[len('first:'):])
      except ValueError:
        k = -1
      if not 0 < k <= len(order):
        raise UserError(f'{key}: {item!r} needs 1 <= K <= {len(order)} (the model has '
                        f'{len(order)} layers)')
      found = order[:k]
    else:
      found = [n for n in order if fnmatch.fnmatchcase(n, item)]
    if not found:
      raise UserError(f'{key}: {item!r} matches no layer; the layers are {", ".join(order)} '
                      '(or head, body, first:K)')
    chosen += [n for n in found if n not in chosen]
  return chosen


def parse_multipliers(text: str) -> list[tuple[str, float]]:
  """'head=10,Block_*=0.1' -> [(pattern, factor)], factors >= 0 (0 = frozen)."""
  out = []
  for item in (s.strip() for s in str(text).split(',') if s.strip()):
    pattern, _, value = item.partition('=')
    try:
      factor = float(value)
    except ValueError:
      factor = -1.0
    if not pattern or factor < 0:
      raise UserError('finetune.lr_multipliers must be LAYERS=FACTOR items like '
                      "'head=10,body=0.1' "
                      f'with factors >= 0, got {item!r}')
    out.append((pattern.strip(), factor))
  return out


def layer_factors(config, order: list[str]) -> dict[str, float]:
  """Learning-rate factor of every layer: 0 for frozen ones, else the first matching
  `lr_multipliers` pattern's factor, else 1."""
  f = config.finetune
  factors = {n: 1.0 for n in order}
  seen: set[str] = set()
  for pattern, factor in parse_multipliers(f.lr_multipliers):
    for n in select(pattern, order, 'finetune.lr_multipliers'):
      if n not in seen:
        factors[n] = factor
        seen.add(n)
  for n in frozen_layers(config, order):
    factors[n] = 0.0
  return factors


def frozen_layers(config, order: list[str]) -> list[str]:
  names = select(config.finetune.freeze, order, 'finetune.freeze')
  if config.finetune.progressive:  # the source column never changes
    names = ['column_a'] + [n for n in names if n != 'column_a']
  return names


def optimizer_groups(factors: dict[str, float]):
  """(groups function for optim.create, {group: factor}); None when every factor is 1."""
  if all(v == 1.0 for v in factors.values()):
    return None, None
  name = lambda v: f'x{v:g}'
  by_layer = {n: name(v) for n, v in factors.items()}

  def groups(params):
    return {n: jax.tree_util.tree_map(lambda _, g=by_layer.get(n, 'x1'): g, sub)
            for n, sub in params.items()}

  return groups, {name(v): v for v in {*factors.values(), 1.0}}


# --------------------------------------------------------------------------- checks


def check(config, info) -> None:
  """The fine-tuning settings, and the source run against this run's data (from its
  config.json: nothing is loaded or compiled)."""
  f = config.finetune
  parse_multipliers(f.lr_multipliers)
  if not config.init_from:
    needs = [k for k in ('eval_source', 'progressive') if f[k]]
    if needs:
      raise UserError(f'finetune.{needs[0]} needs a source run: set --config.init_from=WORKDIR')
    return
  runs.check_run(config.init_from, 'init_from', info.shape)
  source = checkpoints.load_config(config.init_from)
  step = None if config.init_from_step < 0 else config.init_from_step
  checkpoints.step_dir(config.init_from, step)  # the checkpoint exists
  if f.progressive:
    if config.int8_qat:
      raise UserError('finetune.progressive and int8_qat cannot be combined')
    if source.model.to_dict() != config.model.to_dict():
      raise UserError('finetune.progressive adds a column of the source\'s architecture: use the '
                      f'source run\'s model block (model.name={source.model.name})')


# --------------------------------------------------------------------------- initialization


def _shapes(tree) -> Any:
  return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


def same_classes(a: dict, b: dict) -> bool:
  """Whether two runs' dataset identities (datasets.identity) have the same classes."""
  keys = ('name', 'num_classes', 'classes', 'data_dir')
  # Runs recorded before a dataset's names were known have none: absent names are no difference.
  names = a.get('class_names') and b.get('class_names')
  return all(a.get(k) == b.get(k) for k in keys) and (
      not names or a['class_names'] == b['class_names'])


def initial_variables(config, model, example_shape, key, source, this_dataset: dict,
                      order: list[str] | None = None) -> tuple[dict, dict]:
  """(variables, record): fresh variables of `model` with every layer of the source run whose
  name and shapes match loaded, except the re-initialized ones (`finetune.reinit`, and the head
  when the classes differ: in count, or in which classes of which dataset). `this_dataset` is
  this run's datasets.identity; `order` the model's layer_order when the caller has it.
  record = results.json's `init_from`."""
  fresh = convolutions.run_once(lambda k: model.init({'params': k, 'dropout': k},
                                                    jnp.zeros((1, *example_shape), jnp.float32),
                                                    train=False), key)
  fresh = {'params': fresh['params'], 'batch_stats': fresh.get('batch_stats', {})}
  src = {'params': source.variables['params'], 'batch_stats': source.variables['batch_stats']}
  if config.finetune.progressive:  # column A is the source network, whole
    if _shapes(src['params']) != _shapes(fresh['params']['column_a']):
      raise UserError(f'init_from {source.workdir}: its parameters do not fit column A')
    params = {**fresh['params'], 'column_a': src['params']}
    stats = dict(fresh['batch_stats'])
    if src['batch_stats']:
      stats['column_a'] = src['batch_stats']
    loaded = ['column_a']
    reinit = [n for n in params if n != 'column_a']
    return ({'params': params, 'batch_stats': stats},
            _record(source, loaded, reinit))
  order = order or summary.layer_order(model, fresh, example_shape)
  reinit = select(config.finetune.reinit, order, 'finetune.reinit')
  head = order[-1]
  if head not in reinit and (source.info.num_classes != _head_classes(fresh['params'][head])
                             or not same_classes(source.dataset, this_dataset)):
    reinit.append(head)  # its outputs would mean the source's classes
  params, stats, loaded = {}, {}, []
  for n in order:
    take = n not in reinit and n in src['params']
    if take and _shapes(src['params'][n]) != _shapes(fresh['params'][n]):
      raise UserError(f'init_from {source.workdir}: layer {n} has shapes '
                      f'{_shapes(src["params"][n])} there and {_shapes(fresh["params"][n])} here; '
                      f're-initialize it with --config.finetune.reinit={n} or use a source with '
                      'the same architecture')
    if not take and n not in reinit:
      reinit.append(n)  # a layer the source does not have
    params[n] = src['params'][n] if take else fresh['params'][n]
    if n in fresh['batch_stats']:
      own = take and n in src['batch_stats']
      stats[n] = src['batch_stats'][n] if own else fresh['batch_stats'][n]
    if take:
      loaded.append(n)
  reinit = [n for n in order if n in reinit]
  return {'params': params, 'batch_stats': stats}, _record(source, loaded, reinit)


def _head_classes(head_params) -> int:
  return int(jax.tree_util.tree_leaves(head_params)[0].shape[-1])


def _record(source, loaded: list[str], reinit: list[str]) -> dict:
  return {'workdir': os.path.abspath(source.workdir), 'step': source.step,
          'source_model': source.config.model.name, 'source_dataset': source.dataset,
          'loaded': loaded, 'reinitialized': reinit}


def load_source(config):
  """The source run (runs.Run) of `init_from`, or None."""
  if not config.init_from:
    return None
  return runs.load_run(config.init_from,
                       None if config.init_from_step < 0 else config.init_from_step)


# --------------------------------------------------------------------------- forgetting


def source_variables(config, variables: dict, task: 'SourceTask') -> dict:
  """The fine-tuned network as a network for the source task: the current layers with the
  source run's head kept aside (progressive: column A itself)."""
  if config.finetune.progressive:
    return {'params': variables['params']['column_a'],
            'batch_stats': variables['batch_stats'].get('column_a', {})}
  params = {**variables['params'], **task.head['params']}
  stats = {**variables['batch_stats'], **task.head['batch_stats']}
  return {'params': params, 'batch_stats': stats}


@dataclasses.dataclass
class SourceTask:
  """The source task's test split, an eval step of the source model on it, and the source
  run's head ({'params': {name: ...}, 'batch_stats': ...}, on the run's devices)."""
  source: Any   # runs.Run
  eval_source: Any
  eval_step: Any
  num_examples: int
  head: dict


def source_task(config, source, mesh, make_eval_step) -> SourceTask:
  """The source run's test split and head, with `make_eval_step(model, eval source)` (the
  task's eval step) of the source model on it."""
  test = source.test_split()
  eval_source = sources.InMemoryEval(test, config.eval_batch_size, mesh)
  step = make_eval_step(source.model, eval_source)
  name = summary.layer_order(source.model, source.variables, source.info.shape)[-1]
  head = {part: {name: source.variables[part][name]} if name in source.variables[part] else {}
          for part in ('params', 'batch_stats')}
  return SourceTask(source, eval_source, step, len(test), distributed.replicate_tree(head, mesh))


def summary_line(record: dict, factors: dict[str, float]) -> str:
  """One log line per kind: what was loaded, re-initialized, frozen and scaled."""
  scaled = {n: v for n, v in factors.items() if v not in (0.0, 1.0)}
  frozen = [n for n, v in factors.items() if v == 0.0]
  return (f'init_from {record["workdir"]} step {record["step"]}: loaded {len(record["loaded"])} '
          f'layers ({", ".join(record["loaded"])}); re-initialized '
          f'{", ".join(record["reinitialized"]) or "none"}; frozen {", ".join(frozen) or "none"}; '
          f'lr multipliers {", ".join(f"{n} x{v:g}" for n, v in scaled.items()) or "none"}')


def stats_mask(frozen: list[str], batch_stats) -> Any:
  """True for the running statistics kept unchanged (those of frozen layers)."""
  return {n: jax.tree_util.tree_map(lambda _, keep=n in frozen: keep, sub)
          for n, sub in batch_stats.items()}


def num_trainable(params, factors: dict[str, float]) -> int:
  return int(sum(np.prod(a.shape) for n, sub in params.items() if factors.get(n, 1.0) != 0
                 for a in jax.tree_util.tree_leaves(sub)))



def results(config, meta: dict, init_record: dict | None, factors: dict[str, float],
            params) -> dict:
  """results.json's `init_from` (the source, what was loaded and re-initialized, and the
  source task's accuracy before and after, when evaluated) and `finetune`."""
  record = None
  if init_record is not None or 'init_from' in meta:
    record = dict(meta.get('init_from') or init_record)
    hist = [h['source_test_accuracy'] for h in meta['history'] if 'source_test_accuracy' in h]
    if hist:
      record['source_test_accuracy'] = hist[-1]
      record['forgetting'] = record['source_test_accuracy_before'] - hist[-1]
  return {'init_from': record,
          'finetune': {'frozen': [n for n, v in factors.items() if v == 0],
                       'lr_multipliers': {n: v for n, v in factors.items() if v not in (0, 1)},
                       'trainable_params': num_trainable(params, factors),
                       'freeze_batch_stats': bool(config.finetune.freeze_batch_stats),
                       'progressive': bool(config.finetune.progressive)}}
