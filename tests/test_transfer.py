"""Learning from another run: class subsets, init_from (loading, fresh head), frozen layers and
learning-rate multipliers, forgetting, progressive networks, and the one-line errors. On real
Fashion-MNIST split into two tasks, classes 0-4 (source) and 5-9 (target)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY, flat_leaves, load_results, load_state, overrides, run_main

FMNIST_DIR = '/usr/share/datasets/fashion-mnist'
pytestmark = pytest.mark.skipif(not os.path.exists(FMNIST_DIR) and not os.environ.get('CI'),
                                reason='needs apt-get install dataset-fashion-mnist')

# A small SimpleNet on Fashion-MNIST: the source task is classes 0-4 of the first 6,000
# training images; evaluation on 1,000 test images of the task's classes.
FM = {'dataset.name': 'fashion_mnist', 'dataset.image_shape': '', 'dataset.test_size': 2000,
      'model.layers': '16,32,p,32,p,64', 'batch_size': 50, 'eval_batch_size': 500,
      'log_every_steps': 10}


def fm(**changes) -> list[str]:
  return overrides(**{**FM, **{k.replace('__', '.'): v for k, v in changes.items()}})


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('transfer') / 'source')
  run_main([f'--workdir={workdir}', *fm(**{'dataset.classes': '0-4', 'dataset.train_size': 6000,
                                           'num_train_steps': 120,
                                           'optimizer.learning_rate': 0.1})])
  return workdir


def target(source_dir: str, **changes) -> list[str]:
  base = {'dataset.classes': '5-9', 'dataset.per_class': 10, 'num_train_steps': 30,
          'eval_every_epochs': 10, 'init_from': source_dir}
  return fm(**{**base, **changes})


def test_class_subsets_relabel_and_take_the_first_examples_of_each_class(tmp_path):
  from configs import default
  from data import datasets
  c = default.get_config()
  c.dataset.classes, c.dataset.per_class = '7,5', 3
  d = datasets.info(c.dataset)
  full = datasets.load_split(default.get_config().dataset, 'train')
  train, test = datasets.load_split(c.dataset, 'train'), datasets.load_split(c.dataset, 'test')
  assert d.num_classes == 2 and np.bincount(train.labels).tolist() == [3, 3]
  want = sorted(i for k in (7, 5) for i in np.flatnonzero(full.labels == k)[:3])
  np.testing.assert_array_equal(train.images, full.images[want])
  np.testing.assert_array_equal(train.labels, (full.labels[want] == 5).astype(np.int32))  # 7->0
  assert set(test.labels.tolist()) == {0, 1} and len(test) == 2000
  # Extra examples from an .npz, the first of each class.
  extra = tmp_path / 'extra.npz'
  np.savez(extra, images=np.full((6, 28, 28, 1), 7, np.uint8), labels=np.array([0, 1, 0, 1, 0, 1]))
  c.dataset.extra_train, c.dataset.extra_per_class = str(extra), 2
  more = datasets.load_split(c.dataset, 'train')
  assert len(more) == 10 and (more.images[6:] == 7).all() and more.labels[6:].tolist() == [0, 1, 0, 1]


def _bad(args) -> str:
  proc = run_main(args, check=False)
  errs = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert proc.returncode == 2 and len(errs) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  return errs[0]


def test_bad_subsets_and_sources_fail_with_one_line(source, tmp_path):
  w = f'--workdir={tmp_path}/w'
  assert 'has only 3 examples' in _bad([w, *fm(**{'dataset.classes': '0-4', 'dataset.train_size': 60,
                                              'dataset.per_class': 100})])
  assert 'dataset.classes' in _bad([w, *fm(**{'dataset.classes': '3,12'})])
  assert 'extra_train' in _bad([w, *fm(**{'dataset.extra_train': f'{tmp_path}/none.npz'})])
  assert 'not a trained run' in _bad([w, *target(f'{tmp_path}/nope')])
  msg = _bad([w, *target(source, **{'finetune.freeze': 'Conv_9'})])
  assert "'Conv_9' matches no layer" in msg and 'ConvNormAct_0' in msg
  msg = _bad([w, *target(source, **{'model.layers': '16,32,p,48,p,64'})])
  assert 'layer ConvNormAct_2 has shapes' in msg and 'finetune.reinit' in msg
  other = f'{tmp_path}/other_shape'
  run_main([f'--workdir={other}', *overrides(num_train_steps=2)])  # synthetic 16x16x3
  assert '16x16x3 inputs' in _bad([w, *target(other)])
  assert 'needs a source run' in _bad([w, *fm(**{'finetune.eval_source': True})])
  assert not os.path.exists(f'{tmp_path}/w/checkpoints')


def test_init_from_loads_matching_layers_bit_for_bit_and_a_fresh_head(source):
  from configs import default
  from data import datasets
  from store import runs
  from train import transfer
  import models
  src = runs.load_run(source)
  c = default.get_config()
  for k, v in {**TINY, **FM, 'dataset.classes': '5-8'}.items():
    *node, leaf = k.split('.')
    (c[node[0]] if node else c)[leaf] = v
  c.init_from = source
  info = datasets.info(c.dataset)
  model = models.create(c.model, info.num_classes)
  key = jax.random.key(3)
  this = datasets.identity(c.dataset, info, 100, 100)
  v, record = transfer.initial_variables(c, model, info.shape, key, src, this)
  fresh = model.init({'params': key, 'dropout': key}, jnp.zeros((1, 28, 28, 1)), train=False)
  assert record['reinitialized'] == ['Dense_0'] and 'ConvNormAct_0' in record['loaded']
  for name in record['loaded']:
    for a, b in zip(jax.tree_util.tree_leaves(v['params'][name]),
                    jax.tree_util.tree_leaves(src.variables['params'][name])):
      assert a.dtype == b.dtype and np.array_equal(a, b)
    for a, b in zip(jax.tree_util.tree_leaves(v['batch_stats'][name]),
                    jax.tree_util.tree_leaves(src.variables['batch_stats'][name])):
      assert np.array_equal(a, b)
  np.testing.assert_array_equal(v['params']['Dense_0']['kernel'], fresh['params']['Dense_0']['kernel'])
  assert v['params']['Dense_0']['kernel'].shape[-1] == 4
  # Same class count but other classes: the head is fresh too; asked-for layers as well.
  c.dataset.classes, c.finetune.reinit = '5-9', 'first:1'
  info = datasets.info(c.dataset)
  model = models.create(c.model, info.num_classes)
  _, record = transfer.initial_variables(c, model, info.shape, key, src,
                                         datasets.identity(c.dataset, info, 1, 1))
  assert record['reinitialized'] == ['ConvNormAct_0', 'Dense_0']
  # The source's own classes: everything loads.
  c.dataset.classes, c.finetune.reinit = '0-4', ''
  _, record = transfer.initial_variables(c, model, info.shape, key, src,
                                         datasets.identity(c.dataset, datasets.info(c.dataset), 1, 1))
  assert record['reinitialized'] == []


def test_multipliers_scale_updates_and_frozen_groups_get_none():
  from configs import default
  from train import optim, transfer
  c = default.get_config()
  c.optimizer.momentum, c.optimizer.weight_decay, c.schedule.name = 0.0, 0.0, 'constant'
  c.schedule.warmup_epochs = 0
  c.finetune.freeze, c.finetune.lr_multipliers = 'a', 'head=10,b*=0.5'
  order = ['a', 'b1', 'b2', 'head']
  factors = transfer.layer_factors(c, order)
  assert factors == {'a': 0.0, 'b1': 0.5, 'b2': 0.5, 'head': 10.0}
  params = {n: {'kernel': jnp.ones((2, 3))} for n in order}
  grads = {n: {'kernel': jnp.full((2, 3), i + 1.0)} for i, n in enumerate(order)}
  tx = optim.create(c, 10, 100, *transfer.optimizer_groups(factors))
  updates, _ = tx.update(grads, tx.init(params), params)
  plain = optim.create(c, 10, 100)
  base, _ = plain.update(grads, plain.init(params), params)
  for n in order:
    np.testing.assert_allclose(updates[n]['kernel'], factors[n] * base[n]['kernel'], rtol=1e-6)
  assert (np.asarray(updates['a']['kernel']) == 0).all()
  assert transfer.optimizer_groups({'a': 1.0}) == (None, None)


def test_frozen_layers_stay_bitwise_and_feature_extraction_trains_the_head(source, tmp_path):
  w = str(tmp_path / 'features')
  run_main([f'--workdir={w}', *target(source, **{'finetune.freeze': 'body',
                                                 'finetune.freeze_batch_stats': True,
                                                 'finetune.eval_source': True})])
  src, got = load_state(source), load_state(w)
  r = load_results(w)
  assert r['finetune']['frozen'] == [f'ConvNormAct_{i}' for i in range(4)]
  for name in r['finetune']['frozen']:
    for part in ('params', 'batch_stats'):
      a, b = flat_leaves(src[part][name]), flat_leaves(got[part][name])
      assert all(np.array_equal(a[k], b[k]) for k in a), (part, name)
  assert not np.array_equal(src['params']['Dense_0']['kernel'], got['params']['Dense_0']['kernel'])
  assert r['finetune']['trainable_params'] == got['params']['Dense_0']['kernel'].size + 5
  # Frozen body, kept statistics, source head: the source task is untouched.
  assert r['init_from']['forgetting'] == 0.0
  assert r['test_accuracy'] > 0.25  # chance 0.2: the head learns on frozen features


def test_finetuning_beats_scratch_and_the_source_task_is_forgotten(source, tmp_path):
  scratch, tuned = str(tmp_path / 'scratch'), str(tmp_path / 'tuned')
  run_main([f'--workdir={scratch}', *target(source, init_from='')])
  proc = run_main([f'--workdir={tuned}', *target(source, **{'finetune.eval_source': True})])
  r, s = load_results(tuned), load_results(scratch)
  assert r['test_accuracy'] > s['test_accuracy'] + 0.02, (r['history'], s['history'])
  rec = r['init_from']
  assert rec['workdir'] == os.path.abspath(source) and rec['reinitialized'] == ['Dense_0']
  assert rec['source_test_accuracy_before'] > 0.7  # the trained source network
  assert rec['source_test_accuracy'] < rec['source_test_accuracy_before'] - 0.1  # forgetting
  assert rec['forgetting'] == pytest.approx(rec['source_test_accuracy_before'] -
                                            rec['source_test_accuracy'])
  assert all('source_test_accuracy' in h for h in r['history'])
  assert 'init_from' in proc.stderr and 're-initialized Dense_0' in proc.stderr
  assert s['init_from'] is None
  # A fine-tuned run evaluates like any run (its source's normalization is recorded).
  assert r['preprocess'] == load_results(source)['preprocess']


def test_progressive_network_cannot_forget(source, tmp_path):
  w = str(tmp_path / 'progressive')
  run_main([f'--workdir={w}', *target(source, **{'finetune.progressive': True,
                                                 'finetune.eval_source': True})],
           devices=2)  # the source's weights, loaded on one device, spread over the mesh
  r = load_results(w)
  rec = r['init_from']
  assert rec['loaded'] == ['column_a'] and rec['forgetting'] == 0.0
  assert r['finetune']['frozen'] == ['column_a']
  src, got = flat_leaves(load_state(source)['params']), flat_leaves(load_state(w)['params']['column_a'])
  assert src.keys() == got.keys() and all(np.array_equal(src[k], got[k]) for k in src)
  assert r['num_params'] > r['finetune']['trainable_params'] > sum(v.size for v in src.values())
  assert r['test_accuracy'] > 0.25  # chance 0.2: column B learns (0.32-0.4+ across CPUs)
  proc = run_main(['--mode=eval', f'--workdir={w}'])
  assert f'{100 * r["test_accuracy"]:.2f}%' in proc.stdout
  # Probes rebuild the run's model through the one builder: explain's XLA copy (for second
  # derivatives) is the two-column network too, not column B alone (issue 38).
  import jax
  from kernels import convolutions
  from store import runs
  run = runs.load_run(w)
  copy = runs.build(run.config, run.info.num_classes, run.config.dtype,
                    convolutions=convolutions.XLA)
  x = jax.numpy.asarray(run.test_split().images[:4], jax.numpy.float32)
  np.testing.assert_allclose(np.asarray(runs.Net(copy, run.preprocess).logits(run.variables, x)),
                             np.asarray(run.net.logits(run.variables, x)), rtol=1e-4, atol=1e-4)
  run_main(['--mode=explain', f'--workdir={w}', '--explain_parts=maps',
            '--explain_methods=gradient', '--explain_images=2'])
  with open(os.path.join(w, 'explain', 'metrics.json')) as f:
    row = json.load(f)['methods'][0]
  assert row['method'] == 'gradient' and row['fragility_topk'] is not None  # the XLA copy ran


def test_study_table_aggregates_seeds_and_forgetting(tmp_path):
  scripts = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts')
  import importlib.util
  spec = importlib.util.spec_from_file_location('ldr', os.path.join(scripts, 'less_data_report.py'))
  ldr = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ldr)
  import util
  for name, acc, after in (('tuned_10_seed0', 0.80, 0.90), ('tuned_10_seed1', 0.84, 0.70),
                           ('scratch_10_seed0', 0.70, None), ('tuned_all_seed0', 0.95, 0.5)):
    os.makedirs(tmp_path / 'trials' / name)
    init = {'source_test_accuracy_before': 0.95, 'source_test_accuracy': after,
            'forgetting': 0.95 - after} if after else None
    util.write_json(str(tmp_path / 'trials' / name / 'results.json'), {
        'test_accuracy': acc, 'init_from': init, 'dataset': {'num_train': 50}, 'num_params': 9,
        'train_time_s': 1.0, 'finetune': {'trainable_params': 9}})
  rows = {r['condition']: r for r in ldr.summarize(ldr.gather(str(tmp_path)))}
  t = rows['tuned_10']
  assert t['test_accuracy']['n'] == 2 and t['test_accuracy']['mean'] == pytest.approx(82.0)
  assert t['test_accuracy']['sd'] == pytest.approx(np.std([80, 84], ddof=1))
  assert t['forgetting']['mean'] == pytest.approx(15.0) and 'forgetting' not in rows['scratch_10']
  assert '82.00 ± 2.83' in ldr.markdown(list(rows.values()))
  assert ldr.plot(list(rows.values()), str(tmp_path / 'p.png')) and os.path.exists(tmp_path / 'p.png')
