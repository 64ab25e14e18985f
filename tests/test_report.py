"""W/report.html (report/pages.py): the page of a run with its modes' sections, rendered in
headless Chromium with every figure loaded; the pieces it is made of; and util.Progress, the
progress lines of long modes."""

import io
import logging
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import overrides, run_main

import util
from analysis import common
from report import pages

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')


def test_markdown_tables_of_the_modes_read_back(tmp_path):
  rows = [{'method': 'gradient', 'insertion_auc': 0.123456, 'note': None},
          {'method': 'occlusion', 'insertion_auc': 0.5, 'note': 'x'}]
  common.write_outputs(str(tmp_path), {}, rows, 'Attribution maps of W')
  with open(tmp_path / 'results.md', 'a') as f:
    f.write('\nA paragraph\nover two lines.\n\n## Layers\n\n' + common.markdown_table([{'a': 1}]))
  blocks = pages.markdown_blocks(str(tmp_path / 'results.md'))
  assert blocks[0] == {'heading': 'Attribution maps of W'}
  assert blocks[1]['table'] == {'head': ['method', 'insertion_auc', 'note'],
                                'rows': [['gradient', '0.1235', ''], ['occlusion', '0.5', 'x']]}
  assert blocks[2] == {'text': 'A paragraph over two lines.'}
  assert blocks[3] == {'heading': 'Layers'} and blocks[4]['table']['rows'] == [['1']]


def test_config_diff_names_what_differs_from_the_default():
  from configs import default
  config = default.get_config().to_dict()
  assert pages.config_diff(config) == []
  config['batch_size'] = 7
  config['model']['name'] = 'vgg11'
  config['new_key'] = 1
  diff = {d['key']: (d['value'], d['default']) for d in pages.config_diff(config)}
  assert diff == {'batch_size': (7, default.get_config().batch_size),
                  'model.name': ('vgg11', default.get_config().model.name),
                  'new_key': (1, '(absent)')}


class Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_progress_logs_each_tenth_with_part_and_overall_etas(caplog):
  clock = Clock()
  p = util.Progress('explain', {'maps': 3.0, 'invert': 1.0}, stream=io.StringIO(),
                    min_interval=0, clock=clock)
  with caplog.at_level(logging.INFO):
    p.part('maps', 4)
    for _ in range(4):
      clock.t += 10
      p.advance()
    p.part('invert', 2)
    clock.t += 5
    p.advance()
    total = p.total_seconds()
  lines = [r.getMessage() for r in caplog.records]
  # 1 of 4 units in 10 s: 30 s left of the part; overall 3/4 * 1/4 of the weight done in 10 s.
  assert lines[0] == 'explain: maps 1/4, ETA 30s | overall 19%, ETA 43s', lines
  assert 'explain: maps done in 40s (40s so far, ETA 13s)' in lines
  assert lines[-1] == 'explain: invert done in 5s (45s so far)'
  assert total == 45.0 and p.fraction() == 1.0


def test_progress_is_a_bar_on_a_terminal_and_quiet_between_tenths(caplog):
  class Tty(io.StringIO):
    def isatty(self):
      return True
  clock, tty = Clock(), Tty()
  p = util.Progress('attack', {'whitebox': 1.0}, stream=tty, clock=clock)
  p.part('whitebox', 100)
  clock.t += 1
  p.advance(50)
  assert '\rattack: whitebox [##########..........] 50/100, ETA 1s' in tty.getvalue()
  quiet = util.Progress('shift', {'the run': 1.0}, stream=io.StringIO(), min_interval=5,
                        clock=clock)
  with caplog.at_level(logging.INFO):
    quiet.part('the run', 100)
    for _ in range(100):  # 100 units in 3 s: every tenth is crossed, at most one line per 5 s
      clock.t += 0.03
      quiet.advance()
  assert [r.getMessage() for r in caplog.records] == ['shift: the run 10/100, ETA 3s | '
                                                      'overall 10%, ETA 3s']


def test_example_titles_and_signed_maps_follow_one_convention():
  names = ['T-shirt/top', 'Trouser', 'Pullover']
  assert common.example_title(names, 2, 2, 0.971) == 'Pullover: ok Pullover 97%'
  assert common.example_title(names, 2, 0, 0.55) == 'Pullover -> T-shirt/top 55%'
  assert common.example_title(names, None, 1, 0.999) == 'pred Trouser 100%'
  plt = common.pyplot()
  fig, ax = plt.subplots()
  art = common.show_map(ax, np.array([[-2.0, 0.0], [1.0, 0.5]]), signed=True)
  assert art.get_cmap().name == common.SIGNED_CMAP and art.get_clim() == (-1, 1)
  np.testing.assert_allclose(art.get_array(), [[-1.0, 0.0], [0.5, 0.25]])
  art = common.show_map(ax, np.array([[0.0, 4.0]]), signed=False)
  assert art.get_cmap().name == common.MAGNITUDE_CMAP and art.get_clim() == (0, 1)
  plt.close(fig)


def _chromium(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu',
                         '--hide-scrollbars', *args], capture_output=True, text=True,
                        timeout=120)


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get('CI'),
                    reason='needs Debian\'s chromium (make chromium; CI installs it)')
def test_run_page_renders_in_chromium_with_every_section_and_figure(tmp_path):
  workdir = str(tmp_path / 'run')
  run_main([f'--workdir={workdir}', *overrides(num_train_steps=8, log_every_steps=4)])
  run_main(['--mode=shift', f'--workdir={workdir}', '--shift_examples=32',
            '--shift_corruptions=gaussian_noise,rotation', '--shift_severities=1,5'])
  run_main(['--mode=explain', f'--workdir={workdir}', '--explain_images=2',
            '--explain_parts=maps', '--explain_methods=gradient,integrated_gradients',
            '--explain_ig_steps=4'])
  page = os.path.join(workdir, 'report.html')
  text = open(page).read()
  assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing from the network
  for section in ('run', 'config', 'curves', 'explain', 'shift'):
    assert f'<section id="{section}">' in text, section
  # Rendered: every image loaded (the page's own check) and every section drawn.
  dom = _chromium('--virtual-time-budget=10000', '--dump-dom', f'file://{page}')
  assert 'data-broken-images="0"' in dom.stdout, dom.stdout[:500] + dom.stderr[-2000:]
  shot = str(tmp_path / 'page.png')
  _chromium('--window-size=1280,3000', f'--screenshot={shot}', f'file://{page}')
  pixels = common.pyplot().imread(shot)
  assert pixels.shape[:2] == (3000, 1280) and pixels[..., :3].std() > 0.05
  # A figure gone from beside the page is named on it; --mode=report rebuilds it without.
  os.remove(os.path.join(workdir, 'explain', 'maps.png'))
  dom = _chromium('--virtual-time-budget=10000', '--dump-dom', f'file://{page}')
  assert 'data-broken-images="1"' in dom.stdout
  assert '1 figure(s) missing: explain/maps.png' in dom.stdout
  proc = run_main(['--mode=report', f'--workdir={workdir}'])
  assert proc.stdout.strip() == f'report: {page}'
  dom = _chromium('--virtual-time-budget=10000', '--dump-dom', f'file://{page}')
  assert 'data-broken-images="0"' in dom.stdout and 'maps.png' not in open(page).read()


def test_report_mode_refuses_a_folder_without_a_run(tmp_path):
  proc = run_main(['--mode=report', f'--workdir={tmp_path}'], check=False)
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert proc.returncode == 2 and len(errors) == 1 and 'neither a run' in errors[0], proc.stderr
