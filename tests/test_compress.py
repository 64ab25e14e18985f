"""Deep Compression, distillation and int8: pruning masks, weight sharing, the Huffman file,
the distillation loss, bad settings, and --mode=compress end to end on a small trained run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from compress import codec, pipeline, prune, share
from train.objectives import distill
from conftest import run_main
from errors import UserError


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {'Conv_0': {'kernel': jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.float32),
                     'bias': jnp.asarray(rng.normal(size=8), jnp.float32)},
          'Conv_1': {'kernel': jnp.asarray(rng.normal(size=(3, 3, 8, 16)), jnp.float32)},
          'Dense_0': {'kernel': jnp.asarray(rng.normal(size=(64, 10)), jnp.float32),
                      'bias': jnp.zeros(10, jnp.float32)}}


def _run_optimizer(tx, params, steps=5, seed=1):
  """`steps` updates of `tx` with random gradients (what a train step does to the weights)."""
  state = tx.init(params)
  update = jax.jit(tx.update)
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    grads = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype),
                                   params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


def _sgd_with_decay_and_momentum():
  # The run's own optimizer factory: SGD, Nesterov momentum 0.9, coupled weight decay.
  from configs import default
  from train import optim
  return optim.create(default.get_config(), steps_per_epoch=10, total_steps=50)


@pytest.mark.parametrize('scope', ['layer', 'global'])
def test_masks_reach_the_sparsity_exactly_and_pruned_weights_stay_zero(scope):
  params = _params()
  sparsity = prune.parse_spec('conv=0.7,dense=0.9,Conv_0=0.5', 'sparsity', params)
  assert sparsity == {'Conv_0/kernel': 0.5, 'Conv_1/kernel': 0.7, 'Dense_0/kernel': 0.9}
  masks = prune.magnitude_masks(params, sparsity, scope)
  if scope == 'layer':
    for n, m in masks.items():
      assert m.size - m.sum() == round(sparsity[n] * m.size), n
  else:  # one threshold per kind: the conv layers together lose the conv sparsity (Conv_0's)
    conv = np.concatenate([masks[n].ravel() for n in ('Conv_0/kernel', 'Conv_1/kernel')])
    assert conv.size - conv.sum() == round(0.5 * conv.size)
  start = prune.apply_masks(params, masks)
  trained = _run_optimizer(prune.masked(_sgd_with_decay_and_momentum(), masks), start)
  flat = prune.flatten(trained)
  for n, m in masks.items():
    assert np.all(np.asarray(flat[n])[~m] == 0), n        # exactly zero, every one
    assert np.all(np.asarray(flat[n])[m] != np.asarray(prune.flatten(start)[n])[m])
  rows = {r['layer']: r for r in prune.report(trained)}
  assert rows['Dense_0/kernel']['nonzero'] == masks['Dense_0/kernel'].sum()
  # A later round keeps what an earlier one removed.
  again = prune.magnitude_masks(trained, {n: 0.95 for n in masks}, scope, previous=masks)
  assert all(not again[n][~masks[n]].any() for n in masks)


def test_weight_sharing_moves_centroids_never_single_weights():
  params = _params()
  masks = prune.magnitude_masks(params, {n: 0.5 for n in prune.kernels(params)})
  bits = {'Conv_0/kernel': 2, 'Conv_1/kernel': 3, 'Dense_0/kernel': 4}
  shared_params, centroids, assign = share.cluster(params, masks, bits)
  c, a = share.kmeans(np.array([0.0, 0.1, 0.9, 1.0, 5.0]), 4)  # linear init spans the range
  assert set(np.round(c, 3)) >= {5.0} and len(c) <= 4 and a[-1] == len(c) - 1
  trained = _run_optimizer(share.shared(_sgd_with_decay_and_momentum(), assign), shared_params)
  flat, start = prune.flatten(trained), prune.flatten(shared_params)
  moved = share.extract(trained, assign)
  for n, b in bits.items():
    w = np.asarray(flat[n])
    assert len(np.unique(w[masks[n]])) <= 2 ** b
    assert np.all(w[~masks[n]] == 0)
    np.testing.assert_array_equal(w, share.expand(moved[n], assign[n]))  # every member = centroid
    assert not np.allclose(moved[n], centroids[n])                        # the centroids moved
  # Unshared leaves (biases) train as usual.
  assert not np.allclose(np.asarray(flat['Conv_0/bias']), np.asarray(start['Conv_0/bias']))
  # The centroid gradient is the sum over the cluster: one SGD step of lr 1 moves a centroid by
  # minus its members' summed gradient.
  tx = share.shared(optax.sgd(1.0), {'Dense_0/kernel': assign['Dense_0/kernel']})
  p = {'Dense_0': {'kernel': jnp.asarray(share.expand(centroids['Dense_0/kernel'],
                                                       assign['Dense_0/kernel']))}}
  g = {'Dense_0': {'kernel': jnp.ones((64, 10))}}
  u, _ = tx.update(g, tx.init(p), p)
  counts = np.bincount(assign['Dense_0/kernel'][assign['Dense_0/kernel'] >= 0])
  dense = {'Dense_0/kernel': assign['Dense_0/kernel']}
  np.testing.assert_allclose(share.extract(optax.apply_updates(p, u), dense)['Dense_0/kernel'],
                             centroids['Dense_0/kernel'] - counts, rtol=1e-6)


def test_huffman_round_trips_and_is_optimal():
  import dahuffman
  rng = np.random.default_rng(0)
  symbols = np.minimum(rng.geometric(0.3, 5000) - 1, 20)
  counts = np.bincount(symbols, minlength=22)  # symbol 21 unused
  lengths = codec.code_lengths(counts)
  data = codec.huffman_encode(symbols, lengths)
  np.testing.assert_array_equal(codec.huffman_decode(data, lengths, len(symbols)), symbols)
  assert len(data) == -(-int((lengths * counts).sum()) // 8)
  # Same total length as an independent Huffman coder (dahuffman adds an end symbol of count 1).
  ours = codec.code_lengths(np.append(counts, 1))
  table = dahuffman.HuffmanCodec.from_frequencies(
      {int(s): int(c) for s, c in enumerate(counts) if c}).get_code_table()
  theirs = sum(int(counts[s]) * table[s][0] for s in table if s != dahuffman.huffmancodec._EOF)
  assert int((ours[:-1] * counts).sum()) + ours[-1] == theirs + table[dahuffman.huffmancodec._EOF][0]
  # Relative indices with filler entries: long zero runs survive a 2-bit index.
  mask = np.zeros(200, bool)
  mask[[0, 1, 9, 150, 199]] = True
  gaps, pos = codec.relative_indices(mask, 2)
  assert gaps.max() <= 3 and len(gaps) > mask.sum()
  np.testing.assert_array_equal(codec.positions_from_gaps(gaps), pos)
  assert set(np.flatnonzero(mask)) <= set(pos)


def test_compressed_file_decodes_to_the_quantized_network(tmp_path):
  import models
  from configs import common
  model = models.create(common.model_config('lenet5'), 10, 'float32')
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 28, 28, 1)), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  params = variables['params']
  masks = prune.magnitude_masks(params, {n: 0.8 for n in prune.kernels(params)})
  q, cents, assign = share.cluster(prune.apply_masks(params, masks), masks,
                                   {n: 4 for n in masks})
  arrays = {'params/' + n: np.asarray(v) for n, v in prune.flatten(q).items()}
  pre = lambda d: {'params/' + n: v for n, v in d.items()}
  sizes = {}
  for enc in codec.ENCODINGS:
    path = str(tmp_path / f'{enc}.cnnz')
    sizes[enc] = codec.write(path, arrays, enc, masks=pre(masks), index_bits=pre(
        {n: 5 for n in masks}), centroids=pre(cents), assignments=pre(assign))
    assert sizes[enc] == os.path.getsize(path)
    decoded, _ = codec.read(path)
    for n, v in arrays.items():
      np.testing.assert_array_equal(decoded[n], v)
  assert sizes['raw'] > sizes['sparse'] > sizes['shared'] > sizes['huffman']
  decoded = prune.unflatten({n[len('params/'):]: jnp.asarray(v) for n, v in decoded.items()})
  apply = jax.jit(lambda p: model.apply({'params': p}, x, train=False))
  np.testing.assert_array_equal(np.asarray(apply(decoded)), np.asarray(apply(q)))
  with pytest.raises(UserError, match='not a compressed model'):
    (tmp_path / 'bad.cnnz').write_bytes(b'nope')
    codec.read(str(tmp_path / 'bad.cnnz'))


def test_distillation_loss_is_hintons_formula():
  s = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
  t = np.array([[3.0, 0.0, -1.0], [-2.0, 1.0, 2.5]])
  y = np.array([0, 2])
  temp, w = 3.0, 0.7

  def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  p_t, p_s = softmax(t / temp), softmax(s / temp)
  soft = temp ** 2 * (p_t * (np.log(p_t) - np.log(p_s))).sum(-1)
  hard = -np.log(softmax(s)[np.arange(2), y])
  np.testing.assert_allclose(distill.loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), temp, w),
                             w * soft + (1 - w) * hard, rtol=1e-5)
  # The soft term's gradient keeps its scale as T grows (the reason for T^2): ~ (s - t) / N.
  g = jax.grad(lambda z: distill.loss(z, jnp.asarray(t), jnp.asarray(y), 50.0, 1.0).sum())(
      jnp.asarray(s))
  centred = lambda z: z - z.mean(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(g), (centred(s) - centred(t)) / 3, atol=0.02)


def test_bad_settings_fail_with_one_line_before_compiling(small_trained_net):
  import ml_collections
  params = _params()
  o = pipeline.Options
  for bad, match in ((o(sparsity='conv=1.0,dense=0.5'), r'in \[0, 1\)'),
                     (o(sparsity='conv=-0.1,dense=0.5'), r'in \[0, 1\)'),
                     (o(bits='conv=0,dense=5'), 'bits'),
                     (o(sparsity='conv=0.5'), 'no value for the dense'),
                     (o(sparsity='conv=0.5,dense=0.5,Nope_3=0.1'), 'names no prunable'),
                     (o(stages=('share', 'huffman', 'zip')), 'unknown compress stage'),
                     (o(stages=('prune', 'huffman')), 'add share')):
    with pytest.raises(UserError, match=match):
      pipeline.check_options(bad, params)
  d = ml_collections.ConfigDict({'teacher': small_trained_net[0], 'temperature': 4.0,
                                 'weight': 0.9})
  with pytest.raises(UserError, match='16x16x1, 10 classes.*32x32x3'):
    distill.load_teacher(d, (32, 32, 3), 10)
  with pytest.raises(UserError, match='classes'):
    distill.load_teacher(d, (16, 16, 1), 7)
  d.temperature = 0.0
  with pytest.raises(UserError, match='temperature'):
    distill.check(d)


def test_compress_mode_end_to_end_and_resume(small_trained_net, tmp_path):
  import shutil
  workdir = str(tmp_path / 'run')
  shutil.copytree(small_trained_net[0], workdir)
  args = ['--mode=compress', f'--workdir={workdir}', '--compress_iterations=2',
          '--compress_retrain_epochs=0.25', '--compress_finetune_epochs=0.25',
          '--compress_sparsity=conv=0.5,dense=0.8', '--compress_bits=conv=4,dense=3',
          '--compress_calibration=64']
  run_main(args)
  out = os.path.join(workdir, 'compress')
  with open(os.path.join(out, 'results.json')) as f:
    r = json.load(f)
  stages = {s['stage']: s for s in r['stages']}
  assert list(stages) == ['fp32', 'pruned', 'quantized', 'huffman', 'int8']
  for s in r['stages']:
    assert set(pipeline.STAGE_COLUMNS) <= set(s)
    assert s['bytes'] == os.path.getsize(os.path.join(workdir, s['file']))
    assert 0 <= s['test_accuracy'] <= 1
  assert stages['huffman']['decoded_logits_equal'] is True
  assert stages['huffman']['test_accuracy'] == stages['quantized']['test_accuracy']
  print({k: s['bytes'] for k, s in stages.items()})
  assert stages['fp32']['bytes'] > stages['quantized']['bytes'] > stages['huffman']['bytes']
  for layer in r['layers']:
    assert layer['distinct_values'] <= 2 ** layer['bits']
  # Each retraining is a normal run: checkpoints, TensorBoard, results.json.
  for stage in ('prune_1', 'prune_2', 'share'):
    for f in ('results.json', 'checkpoints', 'tensorboard', 'config.json'):
      assert os.path.exists(os.path.join(out, stage, f)), (stage, f)
  for f in ('results.md', 'compression.png', 'model.cnnz', 'int8.npz'):
    assert os.path.exists(os.path.join(out, f))
  assert r['int8']['int8_accuracy'] >= r['int8']['fp32_accuracy'] - 0.1
  for speed in (r['int8']['speed'], r['int8']['speed_xla_default_flags']):
    assert speed['int8_xla'] > 0 and speed['fp32_xla'] > 0
  # Again: every stage is found finished, and the numbers are the same.
  run_main(args)
  with open(os.path.join(out, 'results.json')) as f:
    again = json.load(f)
  strip = lambda rows: [{k: v for k, v in s.items() if k != 'seconds'} for s in rows]
  assert strip(again['stages'])[:4] == strip(r['stages'])[:4]
  bad = run_main(['--mode=compress', f'--workdir={workdir}', '--compress_sparsity=conv=1.5'],
                 check=False)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'Traceback' not in bad.stderr
  assert os.path.exists(os.path.join(out, 'model.cnnz'))


def test_qat_model_fake_quantizes_close_to_fp32():
  import models
  from models import quantized
  from configs import common
  cfg = common.model_config('simplenet')
  cfg.layers = '8,p,16'
  model = models.create(cfg, 10, 'float32')
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 1)), jnp.float32)
  v = model.init(jax.random.key(0), x, train=False)
  qat = quantized.qat_model(model)
  ref, q = model.apply(v, x, train=False), qat.apply(v, x, train=False)
  assert not np.array_equal(np.asarray(q), np.asarray(ref))
  np.testing.assert_allclose(np.asarray(q), np.asarray(ref), atol=0.05 * float(jnp.abs(ref).max()))
  g = jax.grad(lambda p: qat.apply({**v, 'params': p}, x, train=False).sum())(v['params'])
  assert all(np.isfinite(np.asarray(leaf)).all() and np.abs(np.asarray(leaf)).sum() > 0
             for leaf in jax.tree_util.tree_leaves(g))  # straight-through: every weight learns


def test_distillation_runs_in_the_train_loop(small_trained_net, tmp_path):
  from conftest import load_results, overrides
  teacher = small_trained_net[0]
  same_data = {'dataset.image_shape': '16,16,1', 'num_train_steps': 8}
  runs = {}
  for name, extra in (('plain', {}), ('weight0', {'distill.teacher': teacher,
                                                  'distill.weight': 0.0}),
                      ('distilled', {'distill.teacher': teacher})):
    w = str(tmp_path / name)
    run_main([f'--workdir={w}', *overrides(**same_data, **extra)])
    runs[name] = load_results(w)
  assert runs['plain']['distill'] is None
  d = runs['distilled']['distill']
  assert d['teacher'] == teacher and d['temperature'] == 4.0 and d['weight'] == 0.9
  # weight 0 leaves only the hard-label term: the same training up to float rounding (the
  # teacher in the program changes XLA's fusions); the soft targets change the losses.
  loss = lambda r: np.asarray(r['train_log'])[:, 1]
  np.testing.assert_allclose(loss(runs['weight0']), loss(runs['plain']), rtol=1e-5)
  assert np.abs(loss(runs['distilled']) - loss(runs['plain'])).max() > 1e-3
  # A teacher of other data: one line, before the workdir is touched.
  bad = run_main([f'--workdir={tmp_path / "bad"}', *overrides(**{'distill.teacher': teacher})],
                 check=False)
  assert bad.returncode == 2 and 'Traceback' not in bad.stderr
  assert bad.stderr.strip().splitlines()[-1].startswith('error: distill.teacher')
  assert not os.path.exists(tmp_path / 'bad' / 'checkpoints')
