"""Model size and cost: parameter count, multiply-accumulates, and a per-layer table.

`layer_table` traces one inference forward pass of one example to a jaxpr (nothing is
compiled or allocated) and walks it. Every conv and dense layer, normalization layer, pool and
global pool becomes a row named by its module path (flax runs module methods under
`jax.named_scope`), with its output shape, its parameters, its MACs (conv: output elements x
kernel volume x input channels per group; dense: outputs x inputs) and the theoretical
receptive field of one output position in input pixels along each spatial dim. The
receptive field follows the data flow (branches, concatenations and residual sums take the
largest of their inputs), so it is right for Inception, ResNet and DenseNet too.

`--mode=summary` (analysis/summary.py) prints this table for a config without data files.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp



def count_params(params) -> int:
  """Number of scalars in a parameter tree."""
  return int(sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def layer_order(model: nn.Module, variables, input_shape: Sequence[int]) -> list[str]:
  """The top-level modules holding parameters, in the order the forward pass calls them
  (parameter dicts may come back from a checkpoint sorted by name: ConvNormAct_10 before _2).
  The last one is the classifier head."""
  order = []

  def interceptor(next_fun, args, kwargs, context):
    path = context.module.path
    if len(path) == 1 and path[0] in variables['params'] and path[0] not in order:
      order.append(path[0])
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return order + [n for n in variables['params'] if n not in order]


def _variables(model: nn.Module, input_shape: Sequence[int]):
  x = jnp.zeros((1, *input_shape), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def param_count(model: nn.Module, input_shape: Sequence[int]) -> int:
  """Trainable parameters of `model` on one example of `input_shape`, from shapes alone (no
  compilation, nothing allocated): cheap enough to call dozens of times to solve a budget."""
  return count_params(_variables(model, input_shape)['params'])


def flops(compiled) -> float:
  """XLA's FLOP count of a compiled computation (cost_analysis() is a dict or a list of one)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0))


def params_and_macs(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
  """(trainable parameters, MACs of one example's inference forward pass).

  Parameters come from `jax.eval_shape` (nothing is allocated); MACs from XLA's cost analysis
  of the compiled forward pass (flops / 2). That counts every arithmetic op, including
  normalization and activations, so it is a little above `layer_table`'s conv + dense MACs.
  """
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  variables = _variables(model, input_shape)
  fwd = jax.jit(lambda v, inp: model.apply(v, inp, train=False))
  return count_params(variables['params']), int(round(flops(fwd.lower(variables, x).compile()) / 2))


# ----------------------------------------------------------------------------- layer table


@dataclasses.dataclass
class Row:
  """One line of the table."""
  name: str
  kind: str
  shape: tuple[int, ...] = ()
  params: int = 0
  macs: int = 0
  receptive_field: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class _Flow:
  """What is known of an array computed from the input: where each input spatial dim now sits
  (None once pooled away or flattened), and the receptive field and jump (input pixels between
  neighbouring positions) along it."""
  axes: tuple[int | None, ...]
  rf: tuple[int, ...]
  jump: tuple[int, ...]

  def merge(self, other: '_Flow | None') -> '_Flow':
    if other is None:
      return self
    return _Flow(self.axes, tuple(map(max, self.rf, other.rf)), tuple(map(max, self.jump, other.jump)))

  def windowed(self, windows: dict[int, tuple[int, int, int]],
               axes: tuple[int | None, ...] | None = None) -> '_Flow':
    """After a window op: `windows` maps a current axis to (window, dilation, stride)."""
    rf, jump = list(self.rf), list(self.jump)
    for k, p in enumerate(self.axes):
      if p in windows:
        w, d, s = windows[p]
        rf[k] += (w - 1) * d * jump[k]
        jump[k] *= s
    return _Flow(self.axes if axes is None else axes, tuple(rf), tuple(jump))

  def mixed(self, shape: Sequence[int], dims: Sequence[int] | None = None) -> '_Flow':
    """After an op that mixes all positions of `dims` (default: every spatial dim)."""
    dims = [p for p in self.axes if p is not None] if dims is None else dims
    windows = {p: (shape[p], 1, 1) for p in dims}
    axes = tuple(None if p in dims else p for p in self.axes)
    return self.windowed(windows, axes)


_POOL_KINDS = {'reduce_window_max': 'max_pool', 'reduce_window_sum': 'avg_pool',
               'reduce_window_min': 'min_pool', 'reduce_window': 'pool'}
_REDUCE_KINDS = {'reduce_max': 'global_max_pool', 'reduce_sum': 'global_avg_pool',
                 'reduce_min': 'global_min_pool', 'argmax': 'global_argmax'}


class _Walker:
  """Walks a jaxpr, propagating `_Flow`s and filling the table's rows."""

  def __init__(self, params: dict, top: str):
    self.top = top
    self.params = {}  # module path -> number of its own parameters
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      module = '/'.join(str(getattr(p, 'key', p)) for p in path[:-1])
      self.params[module] = self.params.get(module, 0) + math.prod(leaf.shape)
    self.rows: dict[str, Row] = {}
    self.flow: dict[Any, _Flow] = {}

  def _module(self, scope: str) -> str:
    parts = scope.split('/')
    return '/'.join(parts[1:] if parts and parts[0] == self.top else parts)

  def _row(self, key: str, kind: str) -> Row:
    if key not in self.rows:
      module = self._module(key)
      self.rows[key] = Row(name=module or self.top, kind=kind, params=self.params.get(module, 0))
    return self.rows[key]

  def _get(self, v) -> _Flow | None:
    return None if isinstance(v, jex.core.Literal) else self.flow.get(v)

  def walk(self, jaxpr, prefix: str = '') -> None:
    for eqn in jaxpr.eqns:
      scope = '/'.join(s for s in (prefix, str(eqn.source_info.name_stack)) if s)
      self._eqn(eqn, scope)

  def _sub(self, eqn, scope: str) -> bool:
    """Recurses into a higher-order primitive (jit, custom_jvp, ...); False if there is none."""
    for key in ('jaxpr', 'call_jaxpr', 'fun_jaxpr'):
      sub = eqn.params.get(key)
      if sub is None or callable(sub) and not hasattr(sub, 'eqns'):
        continue
      inner = getattr(sub, 'jaxpr', sub)
      if not hasattr(inner, 'eqns'):
        continue
      for outer, inv in zip(eqn.invars[len(eqn.invars) - len(inner.invars):], inner.invars):
        if self._get(outer) is not None:
          self.flow[inv] = self._get(outer)
      self.walk(inner, scope)
      for outer, outv in zip(eqn.outvars, inner.outvars):
        if self._get(outv) is not None:
          self.flow[outer] = self._get(outv)
      return True
    return False

  def _eqn(self, eqn, scope: str) -> None:
    name, out = eqn.primitive.name, eqn.outvars[0]
    ins = [self._get(v) for v in eqn.invars]
    if self._sub(eqn, scope) or all(f is None for f in ins):
      return
    row, macs = None, 0
    if name == 'conv_general_dilated':
      (flow, macs), row = self._conv(eqn, ins[0]), self._row(scope, 'conv')
    elif name == 'dot_general':
      (flow, macs), row = self._dot(eqn, ins), self._row(scope, 'dense')
    elif name in _POOL_KINDS:
      p = eqn.params
      flow = ins[0].windowed({i: wds for i, wds in enumerate(
          zip(p['window_dimensions'], p['window_dilation'], p['window_strides']))})
      key = f'{scope}/{_POOL_KINDS[name]}'
      n = sum(k == key or k.startswith(key + '_') for k in self.rows)
      row = self._row(f'{key}_{n}' if n else key, _POOL_KINDS[name])
    elif name in _REDUCE_KINDS:
      reduced = eqn.params['axes']
      flow = ins[0].mixed(eqn.invars[0].aval.shape, reduced)
      flow = dataclasses.replace(flow, axes=tuple(
          None if a is None else a - sum(r < a for r in reduced) for a in flow.axes))
      if any(a is not None for a in ins[0].axes) and all(a is None for a in flow.axes):
        row = self._row(f'{scope}/global_pool', _REDUCE_KINDS[name])
    else:
      flow = self._other(eqn, ins)
    for v in eqn.outvars:
      self.flow[v] = flow
    if row is None and self._module(scope) in self.params:
      row = self.rows.get(scope) or self._row(scope, 'norm')  # its own params, no conv/dense
    if row is not None:
      row.macs += macs
      row.shape = tuple(out.aval.shape[1:])
      row.receptive_field = flow.rf

  def _conv(self, eqn, f: _Flow) -> tuple[_Flow, int]:
    p, (_, rhs), out = eqn.params, eqn.invars, eqn.outvars[0].aval
    dn = p['dimension_numbers']
    lhs_sp, rhs_sp, out_sp = dn.lhs_spec[2:], dn.rhs_spec[2:], dn.out_spec[2:]
    windows = {lhs_sp[j]: (rhs.aval.shape[rhs_sp[j]], p['rhs_dilation'][j], p['window_strides'][j])
               for j in range(len(lhs_sp))}
    axes = tuple(None if a is None else out_sp[lhs_sp.index(a)] for a in f.axes)
    # rhs in-feature dim = input channels / groups
    macs = (math.prod(out.shape) // out.shape[dn.out_spec[0]]
            * math.prod(rhs.aval.shape[d] for d in rhs_sp) * rhs.aval.shape[dn.rhs_spec[1]])
    return f.windowed(windows, axes), macs

  def _dot(self, eqn, ins: list) -> tuple[_Flow, int]:
    (lc, _), (lb, _) = eqn.params['dimension_numbers']
    lhs, rhs, out = eqn.invars[0].aval, eqn.invars[1].aval, eqn.outvars[0].aval
    macs = math.prod(out.shape[1:]) * math.prod(lhs.shape[d] for d in lc)
    if ins[0] is None:  # the data is the right operand: just mix what it knew
      return ins[1].mixed(rhs.shape), macs
    f = ins[0].mixed(lhs.shape, [d for d in lc if d in ins[0].axes])
    free = [d for d in range(lhs.ndim) if d not in lc and d not in lb]
    axes = tuple(None if a is None else len(lb) + free.index(a) for a in f.axes)
    return dataclasses.replace(f, axes=axes), macs

  def _other(self, eqn, ins: list) -> _Flow:
    name, out = eqn.primitive.name, eqn.outvars[0].aval
    informed = [(v.aval, f) for v, f in zip(eqn.invars, ins) if f is not None]
    aval, f = informed[0]
    for _, g in informed[1:]:
      f = f.merge(g)
    p = eqn.params
    if name == 'transpose':
      perm = list(p['permutation'])
      return dataclasses.replace(f, axes=tuple(None if a is None else perm.index(a) for a in f.axes))
    if name == 'broadcast_in_dim':
      bd = p['broadcast_dimensions']
      return dataclasses.replace(f, axes=tuple(None if a is None else bd[a] for a in f.axes))
    if name == 'slice' and p.get('strides'):
      return f.windowed({i: (1, 1, s) for i, s in enumerate(p['strides'])})
    if len(out.shape) == len(aval.shape) and name != 'reshape':
      return f
    if name in ('reshape', 'squeeze', 'expand_dims'):
      src = [d for d in range(len(aval.shape)) if aval.shape[d] != 1]
      dst = [d for d in range(len(out.shape)) if out.shape[d] != 1]
      if [aval.shape[d] for d in src] == [out.shape[d] for d in dst]:
        where = dict(zip(src, dst))
        return dataclasses.replace(f, axes=tuple(where.get(a) for a in f.axes))
    return f.mixed(aval.shape)


def layer_table(model: nn.Module, input_shape: Sequence[int]) -> tuple[list[Row], int, int]:
  """(rows, trainable parameters, MACs) of one example's inference forward pass.

  Parameters that the inference pass does not use (e.g. GoogLeNet's auxiliary heads) are
  listed in a last row so the rows always add up to the total.
  """
  variables = _variables(model, input_shape)
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  with nn.override_named_call(True):
    jaxpr = jax.make_jaxpr(lambda v, inp: model.apply(v, inp, train=False))(variables, x)
  walker = _Walker(variables['params'], type(model).__name__)
  nd = len(input_shape) - 1
  walker.flow[jaxpr.jaxpr.invars[-1]] = _Flow(tuple(range(1, nd + 1)), (1,) * nd, (1,) * nd)
  walker.walk(jaxpr.jaxpr)
  rows = list(walker.rows.values())
  total = count_params(variables['params'])
  unused = total - sum(r.params for r in rows)
  if unused:
    rows.append(Row(name='(not used by inference)', kind='-', params=unused))
  return rows, total, sum(r.macs for r in rows)


def _rf_text(rf: tuple[int, ...]) -> str:
  return '' if not rf else str(rf[0]) if len(set(rf)) == 1 else 'x'.join(map(str, rf))


def format_table(rows: list[Row], num_params: int, macs: int) -> str:
  """The table as text: one line per row, then the totals."""
  header = ('layer', 'kind', 'output', 'params', 'MACs', 'RF')
  lines = [(r.name, r.kind, 'x'.join(map(str, r.shape)), f'{r.params:,}', f'{r.macs:,}',
            _rf_text(r.receptive_field)) for r in rows]
  widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
            for i, h in enumerate(header)]
  fmt = lambda cols: '  '.join(c.ljust(w) if i < 3 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cols, widths)))
  rule = '-' * len(fmt(header))
  return '\n'.join([fmt(header), rule, *map(fmt, lines), rule,
                    f'total: {num_params:,} trainable parameters, {macs:,} MACs '
                    f'({macs / 1e9:.3f} GMACs) per example'])
