"""Sweeps: declaring and expanding trials, budget solving, and a local sweep end to end."""

import csv
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, overrides

from errors import UserError
from configs import declare
from sweeps import axis, budget, expand, launch, product, report, runner, zipped

DEFAULT = os.path.join(REPO, 'configs', 'default.py')
TINY_ARGS = [f'--config={DEFAULT}', *overrides(num_train_steps=3)]

# Two trials that train and one that fails at run time (its batch exceeds the 256 examples).
SWEEP_FILE = '''
from configs import default
from sweeps import axis, product

def get_config(arg=None):
  return default.get_config(arg)

def get_sweep():
  return [{'model.width_multiplier': 0.5}, {'model.width_multiplier': 1.0},
          {'sweep.name': 'too_big', 'batch_size': 1024}]
'''


def sweep(args, timeout=240):
  """`main.py --mode=sweep` (or report) as a user runs it."""
  return subprocess.run([sys.executable, 'main.py', *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


# ----------------------------------------------------------------------------- declaring


def test_product_zip_and_axis_build_override_dicts():
  trials = product(axis('model.depth', [8, 10]), axis('seed', [0, 1, 2]))
  assert len(trials) == 6 and trials[0] == {'model.depth': 8, 'seed': 0}
  assert trials[-1] == {'model.depth': 10, 'seed': 2}  # the last factor varies fastest
  pairs = zipped(axis('sweep.name', ['a', 'b']), axis('model.layers', ['8,p,8', '16,p,16']))
  assert pairs == [{'sweep.name': 'a', 'model.layers': '8,p,8'},
                   {'sweep.name': 'b', 'model.layers': '16,p,16'}]
  assert product(pairs, budget(1000))[1]['sweep.budget_params'] == 1000
  with pytest.raises(UserError, match='different lengths'):
    zipped(axis('seed', [0, 1]), axis('model.depth', [8]))
  with pytest.raises(UserError, match="key 'seed' is set by two"):
    product(axis('seed', [0]), axis('seed', [1]))


def test_sweep_flags_form_a_product():
  trials = declare.from_flags(['model.width_multiplier=0.5,1,2', 'seed=0,1'])
  assert len(trials) == 6 and trials[1] == {'model.width_multiplier': '0.5', 'seed': '1'}
  layouts = declare.parse_flag('model.layers=8,p,16;16,p,32')  # ';' when values hold commas
  assert [t['model.layers'] for t in layouts] == ['8,p,16', '16,p,32']
  for bad in ('seed', 'seed=', '=1,2', 'seed=0,,1'):
    with pytest.raises(UserError, match='--sweep'):
      declare.parse_flag(bad)


def test_expand_combines_file_and_flags_into_named_configured_trials(tmp_path):
  path = tmp_path / 'sweep.py'
  path.write_text(SWEEP_FILE)
  args = [f'--config={path}', *overrides(num_train_steps=3)]
  trials = expand.expand(args, ['seed=0,1'])
  assert [t.name for t in trials] == [
      'width_multiplier=0.5_seed=0', 'width_multiplier=0.5_seed=1',
      'width_multiplier=1.0_seed=0', 'width_multiplier=1.0_seed=1',
      'too_big_seed=0', 'too_big_seed=1']
  t = trials[1]
  assert t.overrides == {'model.width_multiplier': '0.5', 'seed': '1'}
  assert t.config['seed'] == 1 and t.config['model']['width_multiplier'] == 0.5
  assert t.config['num_train_steps'] == 3  # the sweep command's own --config.* flags
  assert t.layout == '4,p,8,p,8' and t.depth == 3 and t.params > 0 and t.macs > 0
  with pytest.raises(UserError, match="unknown config key 'model.nope'"):
    expand.expand(TINY_ARGS, ['model.nope=1,2'])
  with pytest.raises(UserError, match='seed=x.*int'):
    expand.expand(TINY_ARGS, ['seed=0,x'])
  with pytest.raises(UserError, match='nothing to sweep'):
    expand.expand(TINY_ARGS, [])
  with pytest.raises(UserError, match='several trials are named'):
    expand.expand(TINY_ARGS, ['seed=1,1'])


@pytest.mark.parametrize('placement', ['none', 'early', 'end'])
@pytest.mark.parametrize('depth', [4, 6])
def test_budget_solving_hits_the_target_within_tolerance(depth, placement):
  args = [f'--config={DEFAULT}', *overrides(num_train_steps=3, model__layers='16,16,p,32,32,p,64',
                                            model__one_by_one=placement, model__num_one_by_one=1)]
  (trial,) = expand.expand(args, [f'model.depth={depth}', 'sweep.budget_params=20K'])
  assert abs(trial.params - 20_000) <= 0.02 * 20_000
  assert trial.depth == depth and trial.budget == 20_000
  assert (trial.layout.count('k1') == 1) == (placement != 'none')
  multiplier = float(trial.solved['model.width_multiplier'])
  assert trial.config['model']['width_multiplier'] == multiplier
  # The count the trial will train with, measured independently of the solver.
  from models import summary
  import models
  model = models.create(expand.load_config(trial.config_args).model, 10)
  assert summary.params_and_macs(model, (16, 16, 3))[0] == trial.params


def test_budget_errors_say_what_to_do():
  with pytest.raises(UserError, match='cannot reach 1,000 parameters within 0.1%.*nearest'):
    expand.expand(TINY_ARGS, ['seed=0', 'sweep.budget_params=1000', 'sweep.budget_tolerance=0.001'])
  with pytest.raises(UserError, match='both swept and solved'):
    expand.expand(TINY_ARGS, ['model.width_multiplier=1', 'sweep.budget_params=20000'])
  with pytest.raises(UserError, match='unknown sweep directive'):
    expand.expand(TINY_ARGS, ['sweep.budget=1'])


def study(name):
  return [f'--config={os.path.join(REPO, "configs", "sweeps", name)}']


@pytest.mark.parametrize('name,target', [('depth_budget.py', 300_000),
                                         ('one_by_one_budget.py', 128_000)])
def test_shipped_budget_studies_hit_their_budget(name, target):
  trials = expand.expand(study(name))
  assert len(trials) == 12 and [t.overrides['seed'] for t in trials[:3]] == ['0', '1', '2']
  assert all(abs(t.params - target) <= 0.02 * target for t in trials), [t.params for t in trials]
  configs = trials[::3]
  if name == 'depth_budget.py':
    assert [t.depth for t in configs] == [8, 9, 10, 13]
  else:
    assert [t.layout.count('k1') for t in configs] == [0, 2, 2, 2] and {t.depth for t in trials} == {13}


def test_shipped_width_and_architecture_studies():
  specs = expand.specs_for(study('width.py'), [])
  assert len(specs) == 24 and {s['model.width_multiplier'] for s in specs} == {0.25, 0.5, 1.0, 2.0}
  trials = expand.expand(study('architectures.py'))
  assert len(trials) == 21 and trials[0].name == 'simplenet_cifar_310k_seed=0'
  vgg = trials[5]
  assert vgg.name == 'vgg11_bn_311k_seed=2' and abs(vgg.params - trials[0].params) <= 0.02 * trials[0].params
  bn = {t.name: t.config['model']['norm'] for t in trials if t.name.endswith('_bn_seed=0')}
  assert bn == {'allconv_c_bn_seed=0': 'batch', 'nin_bn_seed=0': 'batch'}  # unnormalized nets get BN
  assert trials[-1].name == 'densenet_bc_100_k12_seed=2'
  config = expand.load_config(study('architectures.py'))
  assert (config.dataset.per_class, config.num_epochs) == (1000, 10)  # the studies' protocol
  specs = expand.specs_for(study('init_activation_norm.py'), [])
  assert len(specs) == 210 and {s['model.init'] for s in specs} >= {'he', 'small_normal'}
  bad_init = [s for s in specs if s['model.init'] == 'small_normal' and s['model.norm'] == 'batch']
  assert len(bad_init) == 2 * 5 * 3  # nets x activations x seeds


def test_dry_run_prints_every_trial_and_trains_nothing(tmp_path):
  proc = sweep(['--mode=sweep', *TINY_ARGS, f'--workdir={tmp_path}/w', '--dry_run',
                '--sweep=model.depth=2,3', '--sweep=sweep.budget_params=20000'])
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert 'Sweep of 2 trials' in lines[0] and 'params' in lines[1] and 'MACs' in lines[1]
  assert 'depth=2' in proc.stdout and 'model.width_multiplier=' in proc.stdout
  assert 'solved for 20,000 params' in proc.stdout
  assert not os.path.exists(tmp_path / 'w')


# ----------------------------------------------------------------------------- running


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_local_sweep_end_to_end_skips_finished_and_reports_failures(tmp_path):
  path = tmp_path / 'sweep.py'
  path.write_text(SWEEP_FILE)
  work = str(tmp_path / 'sweep')
  args = ['--mode=sweep', f'--config={path}', *overrides(num_train_steps=3),
          f'--workdir={work}', '--parallel=2']
  first = sweep(args)
  assert first.returncode == 1, first.stderr[-3000:]  # a trial failed; the others finished
  assert 'Summary: 2 done, 1 failed, 0 skipped (3 trials)' in first.stdout, first.stdout
  assert 'batch_size 1024 is larger than the 256 training examples' in first.stdout

  rows = {r['trial']: r for r in read_csv(os.path.join(work, 'results.csv'))}
  assert set(rows) == {'width_multiplier=0.5', 'width_multiplier=1.0', 'too_big'}
  assert rows['too_big']['status'] == 'failed' and 'larger than' in rows['too_big']['error']
  for name in ('width_multiplier=0.5', 'width_multiplier=1.0'):
    r = rows[name]
    assert r['status'] == 'done' and float(r['test_accuracy']) >= 0 and int(r['params']) > 0
    assert r['model.width_multiplier'] == name.split('=')[1] and r['steps'] == '3'
    trial_dir = os.path.join(work, 'trials', name)
    assert os.path.exists(os.path.join(trial_dir, 'results.json'))
    assert f'--workdir={trial_dir}' in open(os.path.join(trial_dir, 'command.sh')).read()
  assert rows['width_multiplier=0.5']['params'] < rows['width_multiplier=1.0']['params']
  md = open(os.path.join(work, 'results.md')).read()
  assert md.count('| done |') == 2 and '## Not finished' in md and '`too_big`: failed' in md
  for plot in report.ALWAYS_PLOTTED:
    with open(os.path.join(work, plot), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  # The sweep's page links the page of every trial that ran (each written by its own run).
  page = open(os.path.join(work, 'report.html')).read()
  links = re.findall(r'href="(trials/[^"]+/report.html)"', page)
  assert len(links) == 3 and all(os.path.exists(os.path.join(work, l)) for l in links), links
  assert 'accuracy_by_configuration.png' in page

  # The same command again: finished trials are skipped, only the failed one runs again.
  second = sweep(args)
  assert 'Summary: 0 done, 1 failed, 2 skipped (3 trials)' in second.stdout, second.stdout
  assert 'start  width_multiplier' not in second.stdout

  # Finished means finished under the current config: after a change every trial shares
  # (here a longer schedule), a rerun resumes the trial from its checkpoint instead of skipping.
  trial_dir = os.path.join(work, 'trials', 'width_multiplier=0.5')
  trial = runner.read_json(os.path.join(trial_dir, 'trial.json'))
  assert runner.is_finished(trial_dir) and runner.state(trial_dir) == 'done'
  trial['config']['num_train_steps'] = 5
  runner.write_json(os.path.join(trial_dir, 'trial.json'), trial)
  assert not runner.is_finished(trial_dir) and runner.state(trial_dir) == 'pending'
  # A runner that died without recording it (node lost, SIGKILL) reads as interrupted.
  runner.write_json(os.path.join(trial_dir, 'status.json'), {'state': 'running'})
  assert runner.state(trial_dir) == 'interrupted'


def test_report_lists_unfinished_trials_and_needs_a_sweep(tmp_path):
  work = tmp_path / 'w'
  (trial,) = expand.expand(TINY_ARGS, ['seed=3'])
  runner.write_trial(trial.to_json(), str(work / 'trials' / trial.name))  # never started
  proc = sweep(['--mode=report', f'--workdir={work}'])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '1 trials (1 pending)' in proc.stdout
  (row,) = read_csv(work / 'results.csv')
  assert row['status'] == 'pending' and row['trial'] == 'seed=3'
  assert '`seed=3`: pending' in (work / 'results.md').read_text()
  assert re.search(r'<td>seed=3</td>\s*<td>pending</td>', (work / 'report.html').read_text())
  assert all((work / p).exists() for p in report.ALWAYS_PLOTTED)
  missing = sweep(['--mode=report', f'--workdir={tmp_path}/none'])
  assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith('error: ')


def test_depth_and_placement_plots_only_where_they_compare_like_with_like():
  def row(trial, depth, **overrides):
    return {'trial': trial, 'depth': depth, 'overrides': overrides}
  depths = [row('depth8', 8, **{'model.layers': 'a'}), row('depth13', 13, **{'model.layers': 'b'})]
  assert report.plots_for(depths)[4:] == ['accuracy_vs_depth.png']
  # Study 4's mix: a ResNet has no layout depth, and VGG against SimpleNet is not a 1x1 study.
  nets = [row('simplenet', 13, **{'model.name': 's'}), row('vgg', 8, **{'model.layers': 'v'}),
          row('resnet20', None, **{'model.name': 'resnet20'})]
  assert report.plots_for(nets) == list(report.ALWAYS_PLOTTED)
  placements = [row(f'one_by_one={p}', 13, **{'model.one_by_one': p}) for p in ('none', 'end')]
  assert report.plots_for(placements)[4:] == ['one_by_one_placement.png']


def test_slurm_script_runs_one_trial_per_task():
  res = launch.Slurm(partition='gpu', time='01:00:00', cpus=4, gpus=2, mem='8G')
  script = launch.array_script(['/w/trials/a', '/w/trials/b c'], '/w', 0, res)
  assert '#SBATCH --array=0-1\n' in script
  for line in ('--partition=gpu', '--time=01:00:00', '--cpus-per-task=4', '--gres=gpu:2', '--mem=8G'):
    assert f'#SBATCH {line}\n' in script
  assert "'/w/trials/b c'" in script and '-m sweeps.runner "${TRIALS[$SLURM_ARRAY_TASK_ID]}"' in script
  assert '#SBATCH --array=0-1%3' in launch.array_script(['a', 'b'], '/w', 3, launch.Slurm())


# ----------------------------------------------------------------------------- seed statistics


def test_report_aggregates_seeds_with_intervals_and_significance(tmp_path):
  """Hand-made results: x1 beats the reference x0.5 clearly, x2 only by noise."""
  from scipy import stats as sps
  work = tmp_path / 'w'
  accs = {'0.5': [0.900, 0.904, 0.898], '1': [0.930, 0.934, 0.929], '2': [0.899, 0.907, 0.903]}
  for trial in expand.expand(TINY_ARGS, ['model.width_multiplier=0.5,1,2', 'seed=0,1,2']):
    d = str(work / 'trials' / trial.name)
    runner.write_trial(trial.to_json(), d)
    acc = accs[trial.overrides['model.width_multiplier']][int(trial.overrides['seed'])]
    runner.write_json(os.path.join(d, 'results.json'), {
        'config': trial.to_json()['config'], 'test_accuracy': acc, 'best_test_accuracy': acc,
        'history': [{'epoch': 1.0, 'test_accuracy': acc - 0.05}, {'epoch': 2.0, 'test_accuracy': acc}],
        'train_time_s': 10.0, 'epochs': 2, 'steps': 4, 'images_per_sec': 1.0})
  runner.write_json(str(work / 'sweep.json'), {'trials': [], 'reference': 'width_multiplier=0.5'})
  stats = {e['configuration']: e for e in report.aggregate(report.gather(str(work)),
                                                           'width_multiplier=0.5')}
  ref, wide, noise = (stats[f'width_multiplier={m}'] for m in ('0.5', '1', '2'))
  assert ref['reference'] and 'diff' not in ref and ref['seeds'] == [0, 1, 2]
  assert wide['mean'] == pytest.approx(93.1) and wide['sd'] == pytest.approx(
      100 * float(__import__('numpy').std(accs['1'], ddof=1)))
  for e, m in ((wide, '1'), (noise, '2')):  # Welch against scipy's own test
    t = sps.ttest_ind([100 * a for a in accs[m]], [100 * a for a in accs['0.5']], equal_var=False)
    assert e['p_welch'] == pytest.approx(t.pvalue, rel=1e-9)
    lo, hi = e['diff_ci95_welch']
    assert lo < e['diff'] < hi and lo <= e['diff_ci95_bootstrap'][0] <= e['diff_ci95_bootstrap'][1] <= hi + 1e-9
  assert wide['diff'] == pytest.approx(93.1 - 270.2 / 3) and wide['diff_ci95_welch'][0] > 0 and wide['significant']
  assert noise['diff_ci95_welch'][0] < 0 < noise['diff_ci95_welch'][1] and not noise['significant']
  rows = report.gather(str(work))  # plot labels: the configuration, without seed or 1x1 key
  assert {report._point_label(r, False) for r in rows} == {f'width_multiplier={m}' for m in accs}
  assert report._point_label({'trial': 'one_by_one=none_width_multiplier=2_seed=1'}, True) == 'width_multiplier=2'
  assert report.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
  assert report.welch([1, 1], [1, 1])['p'] == 1.0 and report.welch([1], [1, 2]) is None
  # Through the mode: the reference comes from sweep.json, --reference overrides it.
  (work / 'one_by_one_placement.png').write_bytes(b'stale')  # an earlier report's
  proc = sweep(['--mode=report', f'--workdir={work}'])
  assert proc.returncode == 0, proc.stderr[-2000:]
  summary = runner.read_json(str(work / 'summary.json'))
  assert summary['reference'] == 'width_multiplier=0.5' and len(summary['configurations']) == 3
  md = (work / 'results.md').read_text()
  assert '## Over seeds' in md and '| width_multiplier=1 | 3 |' in md and 'yes, also after Holm' in md
  # Only width moves: one depth, no 1x1 knob, so neither of those plots is drawn or listed.
  assert all((work / p).exists() for p in report.ALWAYS_PLOTTED)
  assert not any((work / p).exists() or p in md for p in report.PLOTS[4:])
  other = sweep(['--mode=report', f'--workdir={work}', '--reference=width_multiplier=2'])
  assert runner.read_json(str(work / 'summary.json'))['reference'] == 'width_multiplier=2', other.stderr
  bad = sweep(['--mode=report', f'--workdir={work}', '--reference=width=9'])
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
      "error: --reference='width=9' is not a configuration")
