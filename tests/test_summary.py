"""`main.py --mode=summary` and the per-layer table behind it."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import models  # noqa: E402
from configs import common  # noqa: E402
from errors import UserError  # noqa: E402
from analysis import summary as summary_mode  # noqa: E402
from models import summary  # noqa: E402


def summary_cli(workdir, *args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, 'main.py', '--mode=summary', f'--workdir={workdir}', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def test_cli_writes_summary_json_for_imagenet_without_data(tmp_path):
  proc = summary_cli(tmp_path, '--config=configs/default.py:model=resnet18,dataset=imagenet2012')
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads((tmp_path / 'summary.json').read_text())
  assert result['model'] == 'resnet18' and result['input_shape'] == [224, 224, 3]
  assert result['num_params'] == 11_689_512  # torchvision
  assert result['macs'] == pytest.approx(1.814e9, rel=0.01)  # REFERENCES.md GFLOPS
  rows = result['layers']
  assert sum(r['params'] for r in rows) == result['num_params']
  assert sum(r['macs'] for r in rows) == result['macs']
  first = rows[0]
  assert first['output_shape'] == [112, 112, 64] and first['receptive_field'] == [7, 7]
  assert 'total: 11,689,512 trainable parameters' in proc.stdout
  assert 'ConvNormAct_0/Conv_0' in proc.stdout and 'global_avg_pool' in proc.stdout


def test_cli_knobs_and_1d_synthetic_data(tmp_path):
  proc = summary_cli(tmp_path, '--config=configs/default.py:model=resnet56,dataset=synthetic',
                     '--config.dataset.image_shape=128,4', '--config.model.width_multiplier=0.5')
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads((tmp_path / 'summary.json').read_text())
  assert result['input_shape'] == [128, 4]
  assert result['layers'][0]['output_shape'] == [128, 8]
  assert len(result['layers'][0]['receptive_field']) == 1


def test_cli_bad_input_is_one_line(tmp_path):
  proc = summary_cli(tmp_path, '--config=configs/default.py:model=resnet21')
  assert proc.returncode == 2 and 'unknown model' in proc.stderr
  with pytest.raises(UserError, match='workdir'):
    summary_mode.summarize(common.model_config('lenet5'), '')


def table(name, shape=(224, 224, 3), classes=1000):
  return summary.layer_table(models.create(common.model_config(name), classes), shape)[0]


def test_receptive_fields_follow_the_data_flow():
  # Textbook values: VGG-16 pool5 212 pixels, ResNet-50's last conv 427.
  assert [r for r in table('vgg16') if r.kind == 'max_pool'][-1].receptive_field == (212, 212)
  assert [r for r in table('resnet50') if r.kind == 'conv'][-1].receptive_field == (427, 427)
  # Inside an inception module the 1x1 branch does not inherit its siblings' 3x3s.
  rows = {r.name: r for r in table('googlenet')}
  assert (rows['inception3a/branch1/Conv_0'].receptive_field
          < rows['inception3a/branch3/Conv_0'].receptive_field)


def test_macs_count_convs_and_dense_layers():
  # simplenet '8,p,16' on 8x8x3: 8*8*8*27 + 4*4*16*72 (conv) + 16*10 (dense).
  cfg = common.model_config('simplenet')
  cfg.layers = '8,p,16'
  rows, params, macs = summary.layer_table(models.create(cfg, 10), (8, 8, 3))
  assert macs == 8 * 8 * 8 * 27 + 4 * 4 * 16 * 72 + 16 * 10
  assert [r.kind for r in rows] == ['conv', 'norm', 'max_pool', 'conv', 'norm',
                                    'global_max_pool', 'dense']
  # GoogLeNet's auxiliary heads do not run at inference: their parameters get their own row.
  cfg = common.model_config('googlenet')
  cfg.aux_heads = True
  rows, params, _ = summary.layer_table(models.create(cfg, 1000), (224, 224, 3))
  assert rows[-1].name == '(not used by inference)' and params == 13_004_888
  assert params - rows[-1].params == 6_624_904
