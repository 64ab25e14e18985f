"""`W/report.html`: one self-contained page per workdir, for a person rather than a script.

A run's page: its identity (model, data, config diff from configs/default.py, commit, machine,
time), curves and metrics, then one section per mode whose outputs are in the workdir
(explain, attack, shift, compress, gan; segmentation figures where the task draws them), each
with a one-line reading of its numbers, its tables (the mode's own Markdown tables) and its
figures. A sweep's page: its tables and plots and a link to every trial's page. Figures are
linked beside the page (relative paths), so the folder is the report; the page needs no
network and no server. main.py rebuilds the page after every mode that writes into a workdir;
`--mode=report --workdir=W` rebuilds it on demand.

Only files are read (no JAX, no checkpoints), so building a page takes well under a second.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from typing import Any, Callable

import jinja2

import util
from configs import dcgan_fashion_mnist, segmentation
from configs import default as default_config
from errors import UserError
from sweeps import runner

PAGE = 'report.html'
TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'templates')


# --------------------------------------------------------------------------- reading files


def _json(*parts: str) -> dict:
  return util.read_json(os.path.join(*parts)) or {}


def markdown_blocks(path: str) -> list[dict]:
  """The mode's Markdown file (analysis/common.write_outputs and friends) as blocks:
  {'heading': text} | {'table': {'head': [...], 'rows': [[...]]}} | {'text': paragraph}.
  Only the subset this project writes: '#' headings, pipe tables, plain paragraphs."""
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except OSError:
    return []
  blocks: list[dict] = []
  para: list[str] = []
  table: list[list[str]] = []

  def flush():
    if para:
      blocks.append({'text': ' '.join(para)})
      para.clear()
    if table:
      head, *rows = table
      blocks.append({'table': {'head': head, 'rows': rows}})
      table.clear()

  for line in lines:
    if line.startswith('|'):
      if para:
        flush()
      cells = [c.strip() for c in line.strip().strip('|').split('|')]
      if not all(re.fullmatch(r':?-+:?', c) for c in cells):  # the separator row
        table.append(cells)
    elif line.startswith('#'):
      flush()
      blocks.append({'heading': line.lstrip('#').strip()})
    elif not line.strip():
      flush()
    else:
      if table:
        flush()
      para.append(line.strip())
  flush()
  return blocks


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    out: dict[str, Any] = {}
    for k, v in tree.items():
      out.update(_flatten(v, f'{prefix}{k}.'))
    return out
  return {prefix[:-1]: tree}


def reference_config(config: dict) -> tuple[str, Any]:
  """The shipped config a run is compared with: its kind's (a GAN's, a segmentation run's),
  else configs/default.py's."""
  if 'gan' in config:
    return 'configs/dcgan_fashion_mnist.py', dcgan_fashion_mnist
  if config.get('task') == 'segmentation':
    return 'configs/segmentation.py', segmentation
  return 'configs/default.py', default_config


def config_diff(config: dict) -> list[dict]:
  """The keys where a run's config.json differs from the shipped config of its kind
  (reference_config: what a user changed, by flag or by config file), with both values."""
  defaults = _flatten(json.loads(reference_config(config)[1].get_config().to_json()))
  mine = _flatten(config)
  shown = lambda v: '""' if v == '' else v  # an empty string is a value, not a blank cell
  return [{'key': k, 'value': shown(mine.get(k, '(absent)')),
           'default': shown(defaults.get(k, '(absent)'))}
          for k in sorted(set(mine) | set(defaults)) if mine.get(k) != defaults.get(k)]


def _pct(v: Any) -> str:
  return f'{100 * v:.2f}%' if isinstance(v, (int, float)) else 'n/a'


def _seconds(v: Any) -> str:
  return util.format_seconds(v) if isinstance(v, (int, float)) else 'n/a'


def _machine(m: dict | None) -> str:
  if not m:
    return 'not recorded (a run from before this field)'
  return f'{m.get("cpu", "?")} ({m.get("isa", "?")}, {m.get("cores", "?")} cores) on {m.get("host", "?")}'


# --------------------------------------------------------------------------- mode sections

def _explain_reading(r: dict) -> str:
  rows = [m for m in r.get('methods', []) if m.get('method') != 'random']
  if rows and 'region_share' in rows[0]:  # a segmentation run (analysis/dense.py)
    best = max(rows, key=lambda m: m['region_share'])
    return (f'{best["method"]} puts the most attribution inside the explained region '
            f'({100 * best["region_share"]:.1f}% of the map on {100 * best["region_area"]:.1f}% '
            'of the pixels).')
  scored = [m for m in rows if m.get('insertion_auc') is not None]
  if not scored:
    return f'{len(rows)} attribution methods.'
  best = max(scored, key=lambda m: m['insertion_auc'] - m['deletion_auc'])
  rand = next((m for m in r['methods'] if m.get('method') == 'random'), {})
  line = (f'{best["method"]} is the most faithful map here (insertion AUC '
          f'{best["insertion_auc"]:.3f}, deletion AUC {best["deletion_auc"]:.3f}; a random map '
          f'{rand.get("insertion_auc", float("nan")):.3f} / {rand.get("deletion_auc", float("nan")):.3f}).')
  sane = [m for m in rows if m.get('sanity_rank_corr') is not None]
  if sane:
    worst = max(sane, key=lambda m: m['sanity_rank_corr'])
    line += (f' {worst["method"]} changes least when the weights are randomized (rank '
             f'correlation {worst["sanity_rank_corr"]:.2f}; near 0 passes the sanity check).')
  return line


def _attack_reading(r: dict) -> str:
  rows = r.get('attacks', [])
  if 'clean_miou' in r:
    last = rows[-1] if rows else {}
    return (f'Clean mIoU {_pct(r["clean_miou"])}; PGD at eps {last.get("eps", 0):.3g} leaves '
            f'{_pct(last.get("miou"))}.')
  worst = [w for w in rows if w['attack'] in ('worst_case', 'worst_case_whitebox')]
  line = f'Clean accuracy {_pct(r.get("clean_accuracy"))} on {r.get("num_examples")} test examples'
  if worst:
    by_eps = {}
    for w in worst:  # the all-attack worst case wins over the white-box one at the same eps
      if w['attack'] == 'worst_case' or w['eps'] not in by_eps:
        by_eps[w['eps']] = w
    line += '; the worst of every attack leaves ' + ', '.join(
        f'{_pct(w["robust_accuracy"])} at eps {e:.3g}' for e, w in sorted(by_eps.items()))
  if r.get('membership'):
    line += f'; membership inference AUC {r["membership"]["loss_threshold"]["auc"]:.3f} (0.5 = no leak)'
  return line + '.'


def _shift_reading(r: dict) -> str:
  corr = r.get('corruptions', {})
  line = (f'Clean accuracy {_pct(r.get("clean_accuracy"))}, '
          f'{_pct(r.get("mean_corruption_accuracy"))} on average under corruption')
  if corr:
    worst = min(corr, key=lambda c: corr[c]['mean_accuracy'])
    line += f'; {worst} hurts most ({_pct(corr[worst]["mean_accuracy"])})'
  if r.get('mce') is not None:
    line += f'; mCE {r["mce"]:.1f} against the reference run (100)'
  return line + '.'


def _compress_reading(r: dict) -> str:
  stages = r.get('stages', [])
  if len(stages) < 2:
    return 'Only the fp32 stage has run.'
  first = stages[0]
  chain = [s for s in stages if s['stage'] != 'int8'] or stages
  last = chain[-1]
  line = (f'{last["stage"]}: {last["compression_ratio"]:.1f}x smaller than the fp32 file '
          f'({last["bytes"]:,} bytes) at {_pct(last["test_accuracy"])} test accuracy '
          f'(fp32 {_pct(first["test_accuracy"])})')
  int8 = next((s for s in stages if s['stage'] == 'int8'), None)
  if int8:
    line += f'; int8: {int8["compression_ratio"]:.1f}x at {_pct(int8["test_accuracy"])}'
  return line + '.'


def _gan_reading(r: dict) -> str:
  return (f'Fréchet distance {r.get("frechet_distance", float("nan")):.3f} to real test images '
          f'(real vs real {r.get("frechet_distance_real_vs_real", float("nan")):.3f}, noise '
          f'{r.get("frechet_distance_noise", float("nan")):.1f}); the classifier labels '
          f'{_pct(r.get("generated_accuracy"))} of generated images as their class (real: '
          f'{_pct(r.get("classifier_accuracy_on_real"))}).')


# folder -> (title, results file(s) ('|': the first that exists), reading, figures in reading
# order with captions). Figures a mode wrote that are not listed still appear, after these.
MODES: dict[str, tuple[str, str, Callable[[dict], str], dict[str, str]]] = {
    # A classifier's explain writes metrics.json, a segmentation run's results.json.
    'explain': ('What the network looks at (--mode=explain)', 'metrics.json|results.json',
                _explain_reading, {
        'maps.png': 'Attribution maps of the explained class per method.',
        'projections.png': 'Top-activating test images of four channels and their deconvnet '
                           'projections (Zeiler & Fergus).',
        'maximization.png': 'Activation maximization: inputs synthesized to excite each target.',
        'inversion.png': 'Feature inversion: images reconstructed from each conv layer\'s code.',
        'inversion_quality.png': 'How much of the image each layer keeps (PSNR, SSIM).'}),
    'attack': ('How it is fooled (--mode=attack)', 'results.json', _attack_reading, {
        'robustness.png': 'Robust accuracy against the radius, per attack.',
        'examples.png': 'Examples PGD broke: clean, perturbation, adversarial.',
        'fooling.png': 'Fooling images (Nguyen et al.): unrecognizable inputs classified with '
                       'high confidence.',
        'patch.png': 'An adversarial patch and where it takes the prediction.',
        'membership.png': 'Membership inference: ROC of telling training from test examples.',
        'reconstruction.png': 'Test images reconstructed from the first and last conv layers.'}),
    'shift': ('Under distribution shift (--mode=shift)', 'results.json', _shift_reading, {
        'accuracy_vs_severity.png': 'Accuracy per corruption against its severity.',
        'examples.png': 'What each corruption does at each severity, with the prediction.'}),
    'compress': ('How small it gets (--mode=compress)', 'results.json', _compress_reading, {
        'compression.png': 'File size against test accuracy per Deep Compression stage.'}),
    'gan': ('Generated data (--mode=gan)', 'results.json', _gan_reading, {
        'samples.png': 'Generated samples, a row per class.',
        'fd_curve.png': 'Fréchet distance to real images during training.'}),
}


def _figures(root: str, folder: str, captions: dict[str, str]) -> list[dict]:
  here = os.path.join(root, folder)
  pngs = sorted(n for n in os.listdir(here) if n.endswith('.png'))
  order = [n for n in captions if n in pngs] + [n for n in pngs if n not in captions]
  return [{'src': f'{folder}/{n}' if folder else n, 'caption': captions.get(n, n)}
          for n in order]


def mode_sections(workdir: str) -> list[dict]:
  """One section per mode that has written its results into the workdir, in MODES order."""
  sections = []
  for folder, (title, results_files, reading, captions) in MODES.items():
    here = os.path.join(workdir, folder)
    found = [(f, util.read_json(os.path.join(here, f))) for f in results_files.split('|')]
    results_file, r = next(((f, r) for f, r in found if r is not None), (None, None))
    if r is None:
      continue
    try:
      line = reading(r)
    except (KeyError, TypeError, ValueError, IndexError) as e:  # results of an older version
      line = f'(no reading: these results lack a field this page reads: {e})'
    tables = []
    for md in sorted(n for n in os.listdir(here) if n.endswith('.md')):
      tables.append({'name': md, 'blocks': markdown_blocks(os.path.join(here, md))})
    notes = [f'{k}: {v}' for k, v in (r.get('notes') or {}).items()]
    notes += [f'WARNING: {w}' for w in r.get('warnings') or []]
    sections.append({
        'id': folder, 'title': title, 'reading': line, 'tables': tables, 'notes': notes,
        'figures': _figures(workdir, folder, captions),
        'seconds': r.get('total_seconds'), 'machine': _machine(r.get('machine'))
        if r.get('machine') else '', 'results': f'{folder}/{results_file}'})
  return sections


# --------------------------------------------------------------------------- pages

def _environment() -> jinja2.Environment:
  env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                           autoescape=jinja2.select_autoescape(['html']),
                           undefined=jinja2.StrictUndefined, trim_blocks=True,
                           lstrip_blocks=True)
  env.filters['pct'] = _pct
  env.filters['duration'] = _seconds
  env.filters['num'] = _num
  return env


def _num(v: Any) -> str:
  if isinstance(v, bool):
    return 'yes' if v else 'no'
  return f'{v:,}' if isinstance(v, int) else f'{v:.4g}' if isinstance(v, float) else str(v)


def _latest_checkpoint(workdir: str) -> int | None:
  steps = [int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints'))
           if n.isdigit()] if os.path.isdir(os.path.join(workdir, 'checkpoints')) else []
  return max(steps) if steps else None


FRACTIONS = ('accuracy', 'miou', 'iou', 'map', 'ap50', 'dice')  # fields shown in percent


def _metrics(results: dict, every: bool = False) -> list[dict]:
  """The run's headline numbers: every test/best/robust field of results.json (`every`: all
  scalar fields, as of eval.json), fractions in percent."""
  rows = []
  for k in sorted(results):
    v = results[k]
    if (every or k.startswith(('test_', 'best_', 'robust_', 'source_'))) and isinstance(
        v, (int, float)):
      fraction = not isinstance(v, bool) and any(w in k for w in FRACTIONS)
      rows.append({'name': k, 'value': _pct(v) if fraction else _num(v)})
  return rows


def _history(results: dict) -> dict:
  hist = results.get('history') or []
  keys = [k for k in dict.fromkeys(k for h in hist for k in h)
          if all(isinstance(h.get(k), (int, float, type(None))) for h in hist)]
  fmt = lambda k, v: '' if v is None else (_pct(v) if 'accuracy' in k or 'miou' in k
                                           else f'{v:.4g}' if isinstance(v, float) else str(v))
  return {'head': keys, 'rows': [[fmt(k, h.get(k)) for k in keys] for h in hist]}


def run_context(workdir: str) -> dict:
  config = _json(workdir, 'config.json')
  results = _json(workdir, 'results.json')
  evaluation = _json(workdir, 'eval.json')
  name = os.path.basename(os.path.abspath(workdir))
  model = (config.get('model') or {}).get('name', '?')
  dataset = (config.get('dataset') or {}).get('name', '?')
  gan = _json(workdir, 'gan', 'results.json')
  if results:
    status = f'finished {results.get("finished_at") or ""}'.strip()
  elif gan:
    status = (f'GAN trained for {gan.get("steps")} steps in '
              f'{_seconds(gan.get("train_time_s"))} (results in gan/)')
  else:
    step = _latest_checkpoint(workdir)
    status = ('not trained yet' if step is None else
              f'training unfinished: checkpoint of step {step} (rerun the training command '
              'to resume)')
  top_figures = _figures(workdir, '', {
      'curves.png': 'Test metric per evaluation and training loss.',
      'predictions.png': 'Test images with the true and predicted masks.',
      'diagnostics.png': 'Per-layer activation and gradient statistics during training.'})
  return {
      'title': name, 'workdir': os.path.abspath(workdir), 'model': model, 'dataset': dataset,
      'task': config.get('task', 'classification'), 'status': status, 'results': results,
      'evaluation': _metrics(evaluation, every=True), 'has_config': bool(config),
      'reference': reference_config(config)[0],
      'config_diff': config_diff(config) if config else [],
      'metrics': _metrics(results), 'history': _history(results),
      'machine': _machine(results.get('machine')) if results else '',
      'figures': top_figures, 'sections': mode_sections(workdir),
      'built': datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S'),
      'benchmark': _json(workdir, 'benchmark.json'),
  }


def run_page(workdir: str) -> str:
  """Writes `W/report.html` for the run in `workdir`; returns its path."""
  path = os.path.join(workdir, PAGE)
  util.write_text(path, _environment().get_template('run.html').render(**run_context(workdir)))
  return path


def kind(workdir: str) -> str | None:
  """'sweep' (a trials/ folder), 'run' (a config.json), or None: what page a folder gets."""
  if os.path.isdir(os.path.join(workdir, 'trials')):
    return 'sweep'
  return 'run' if os.path.exists(os.path.join(workdir, 'config.json')) else None


def sweep_page(workdir: str) -> str:
  """Writes the sweep's `report.html` (its tables and plots, a row and a link per trial) and
  the page of every trial that holds a run."""
  root = os.path.join(workdir, 'trials')
  declared = _json(workdir, 'sweep.json').get('trials', [])
  on_disk = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
  trials = []
  for n in [d for d in declared if d in on_disk] + [d for d in on_disk if d not in declared]:
    here = os.path.join(root, n)
    status = _json(here, runner.STATUS)
    results = _json(here, 'results.json')
    page = None
    if os.path.exists(os.path.join(here, 'config.json')):
      run_page(here)
      page = f'trials/{n}/{PAGE}'
    metric = next((results[k] for k in ('test_accuracy', 'test_miou') if k in results), None)
    trials.append({'name': n, 'state': runner.state(here), 'metric': metric,
                   'seconds': results.get('train_time_s'), 'page': page,
                   'error': status.get('error', '')})
  figures = _figures(workdir, '', {
      'accuracy_by_configuration.png': 'Final test metric per configuration: mean, 95% CI, '
                                       'seeds as dots.',
      'curves.png': 'Test metric per evaluation, mean over seeds.',
      'accuracy_vs_params.png': 'Accuracy against parameters.',
      'accuracy_vs_macs.png': 'Accuracy against multiply-accumulates.',
      'accuracy_vs_depth.png': 'Accuracy against depth.',
      'one_by_one_placement.png': 'Accuracy per 1x1-convolution placement.'})
  context = {'title': os.path.basename(os.path.abspath(workdir)),
             'workdir': os.path.abspath(workdir), 'trials': trials, 'figures': figures,
             'blocks': markdown_blocks(os.path.join(workdir, 'results.md')),
             'built': datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')}
  path = os.path.join(workdir, PAGE)
  util.write_text(path, _environment().get_template('sweep.html').render(**context))
  return path


def build(workdir: str) -> str:
  """The page of a sweep directory or of a run; a UserError where `workdir` is neither."""
  page = {'sweep': sweep_page, 'run': run_page}.get(kind(workdir))
  if page:
    return page(workdir)
  raise UserError(f'{workdir} holds neither a run (config.json) nor a sweep (trials/); train or '
                  'sweep into it first')
