"""The PyTorch side of bench/explain_compare.py: a trained run's SimpleNet rebuilt in PyTorch
with the same weights (exported by that script), captum's Integrated Gradients and Occlusion on
the same images, timed. Runs under the PyTorch venv; prints one JSON line, writes the maps.

  .venv-torch/bin/python bench/captum_explain.py EXPORT.npz OUT.npz
"""

import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_simplenet import build  # noqa: E402


class Normalized(nn.Module):
  """NHWC pixels in [0, 255] -> the run's normalization -> the NCHW network."""

  def __init__(self, net, mean, std):
    super().__init__()
    self.net = net
    self.register_buffer('mean', torch.tensor(mean).view(1, -1, 1, 1))
    self.register_buffer('std', torch.tensor(std).view(1, -1, 1, 1))

  def forward(self, x):
    return self.net((x.permute(0, 3, 1, 2) - self.mean) / self.std)


def load(export) -> nn.Module:
  net = build(str(export['layout']), int(export['in_channels']), int(export['num_classes']))
  convs = [m for m in net if isinstance(m, nn.Conv2d)]
  norms = [m for m in net if isinstance(m, nn.BatchNorm2d)]
  dense = [m for m in net if isinstance(m, nn.Linear)][0]
  with torch.no_grad():
    for i, (c, b) in enumerate(zip(convs, norms)):
      c.weight.copy_(torch.from_numpy(export[f'conv{i}_kernel']).permute(3, 2, 0, 1))
      c.bias.copy_(torch.from_numpy(export[f'conv{i}_bias']))
      b.weight.copy_(torch.from_numpy(export[f'bn{i}_scale']))
      b.bias.copy_(torch.from_numpy(export[f'bn{i}_bias']))
      b.running_mean.copy_(torch.from_numpy(export[f'bn{i}_mean']))
      b.running_var.copy_(torch.from_numpy(export[f'bn{i}_var']))
    dense.weight.copy_(torch.from_numpy(export['dense_kernel']).T)
    dense.bias.copy_(torch.from_numpy(export['dense_bias']))
  return Normalized(net, export['mean'], export['std']).eval()


def main(export_path: str, out_path: str) -> None:
  from captum.attr import IntegratedGradients, Occlusion
  export = np.load(export_path)
  model = load(export)
  x = torch.from_numpy(export['images'])
  y = torch.from_numpy(export['labels']).long()
  steps, size, stride = int(export['ig_steps']), int(export['occ_size']), int(export['occ_stride'])
  logits = model(x).detach().numpy()
  ig = IntegratedGradients(model)
  occ = Occlusion(lambda t: torch.softmax(model(t), dim=1))
  run_ig = lambda: ig.attribute(x, baselines=torch.zeros_like(x), target=y, n_steps=steps,
                                method='riemann_trapezoid', internal_batch_size=len(x) * steps)
  channels = x.shape[-1]
  run_occ = lambda: occ.attribute(x, sliding_window_shapes=(size, size, channels),
                                  strides=(stride, stride, channels), baselines=0.0, target=y,
                                  perturbations_per_eval=64)
  out, times = {}, {}
  for name, fn in (('ig', run_ig), ('occlusion', run_occ)):
    fn()  # warm-up
    best = float('inf')
    for _ in range(int(export['repeats'])):
      t = time.perf_counter()
      result = fn()
      best = min(best, time.perf_counter() - t)
    out[name] = result.detach().numpy()
    times[name] = best
  np.savez(out_path, logits=logits, **out)
  print(json.dumps({'torch': torch.__version__, 'threads': torch.get_num_threads(),
                    'images': len(x), 'ig_seconds': times['ig'],
                    'occlusion_seconds': times['occlusion']}))


if __name__ == '__main__':
  main(*sys.argv[1:3])
