"""The PyTorch side of bench/attack_compare.py: torchattacks 3.5.1 FGSM, PGD, APGD-CE, APGD-T
and Square on the bench's
PyTorch copy of a run's SimpleNet (same weights, exported by that script), inputs in [0, 1].
Prints one JSON line, writes the adversarial images.

  .venv-torch/bin/python bench/torchattacks_attack.py EXPORT.npz OUT.npz
"""

import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from captum_explain import load  # noqa: E402  (the weight loading; captum is not imported)


class UnitRange(nn.Module):
  """NCHW images in [0, 1] (torchattacks' convention) -> the NHWC pixel-range copy."""

  def __init__(self, net):
    super().__init__()
    self.net = net

  def forward(self, x):
    return self.net(x.permute(0, 2, 3, 1) * 255.0)


def main(export_path: str, out_path: str) -> None:
  import torchattacks
  export = np.load(export_path)
  model = UnitRange(load(export)).eval()
  x = torch.from_numpy(export['images']).permute(0, 3, 1, 2).contiguous() / 255.0
  y = torch.from_numpy(export['labels']).long()
  eps, steps = float(export['eps']), int(export['steps'])
  attacks = {
      'fgsm': torchattacks.FGSM(model, eps=eps),
      'pgd': torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps,
                              random_start=True),
      'apgd_ce': torchattacks.APGD(model, eps=eps, steps=int(export['apgd_steps']), loss='ce'),
      'apgd_t': torchattacks.APGDT(model, eps=eps, steps=int(export['apgd_steps']),
                                   n_classes=int(export['num_classes'])),
      'square': torchattacks.Square(model, eps=eps, n_queries=int(export['square_queries'])),
  }
  out, times = {}, {}
  for name, attack in attacks.items():
    torch.manual_seed(0)
    attack(x[:8], y[:8])  # warm-up
    t = time.perf_counter()
    adv = attack(x, y)
    times[name] = time.perf_counter() - t
    adv = adv.detach()
    out[name] = adv.permute(0, 2, 3, 1).numpy()
    with torch.no_grad():
      out[f'{name}_pred'] = model(adv).argmax(1).numpy()
  np.savez(out_path, **out)
  print(json.dumps({'torch': torch.__version__, 'torchattacks': torchattacks.__version__,
                    'threads': torch.get_num_threads(),
                    **{f'{k}_seconds': v for k, v in times.items()}}))


if __name__ == '__main__':
  main(*sys.argv[1:3])
