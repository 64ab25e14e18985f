"""PyTorch baseline of the segmentation train step on CPU, for side-by-side comparison with
`python main.py --mode=benchmark --config=configs/segmentation.py` (bench/segmentation_compare.py
runs both alternately).

The networks of configs/segmentation.py, layer for layer (models/dense.py): FCN-8s over the
SimpleNet-310K layout (Conv+bias -> BatchNorm -> ReLU, max pools; 1x1 class scores on the last
features and on the last pool but one and two, 2x transposed convolutions initialized bilinear,
the final 4x fixed bilinear) and the same-padding U-Net at 16 filters with batch norm; per-pixel
cross-entropy with ignore index 255, SGD momentum, random 64x64x1 data and masks, 11 classes,
channels_last, fp32. Prints one JSON line.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

SIMPLENET_310K = '64,32,32,32,p,32,32,64,p,64,64,p,128,256k1,64k1,p,64'


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> list:
  return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout, momentum=0.05),
          nn.ReLU(inplace=True)]


def bilinear_deconv(classes: int) -> nn.ConvTranspose2d:
  """2x upsampling initialized to bilinear interpolation, class to same class (FCN's rule)."""
  up = nn.ConvTranspose2d(classes, classes, 4, stride=2, padding=1, bias=False)
  w1 = 1 - torch.abs(torch.arange(4) - 1.5) / 2
  with torch.no_grad():
    up.weight.zero_()
    for c in range(classes):
      up.weight[c, c] = torch.outer(w1, w1)
  return up


class FCN8s(nn.Module):
  def __init__(self, layout: str, in_ch: int, classes: int):
    super().__init__()
    self.stages, stage, ch, widths = nn.ModuleList(), [], in_ch, []
    for tok in layout.split(','):
      if tok == 'p':
        self.stages.append(nn.Sequential(*stage, nn.MaxPool2d(2, 2)))
        widths.append(ch)
        stage = []
        continue
      width, _, k = tok.partition('k')
      stage += conv_bn_relu(ch, int(width), int(k or 3))
      ch = int(width)
    self.tail = nn.Sequential(*stage)
    self.score = nn.Conv2d(ch, classes, 1)
    self.up = nn.ModuleList([bilinear_deconv(classes), bilinear_deconv(classes)])
    self.skip = nn.ModuleList([nn.Conv2d(widths[-2], classes, 1), nn.Conv2d(widths[-3], classes, 1)])
    self.factor = 2 ** len(widths) // 4

  def forward(self, x):
    pooled = []
    for s in self.stages:
      x = s(x)
      pooled.append(x)
    score = self.score(self.tail(x))
    for i in range(2):
      score = self.up[i](score) + self.skip[i](pooled[-2 - i])
    return F.interpolate(score, scale_factor=self.factor, mode='bilinear', align_corners=False)


class UNet(nn.Module):
  def __init__(self, in_ch: int, classes: int, base: int = 16, depth: int = 4):
    super().__init__()
    widths = [base * 2 ** i for i in range(depth + 1)]
    self.down, ch = nn.ModuleList(), in_ch
    for w in widths[:-1]:
      self.down.append(nn.Sequential(*conv_bn_relu(ch, w), *conv_bn_relu(w, w)))
      ch = w
    self.bottom = nn.Sequential(*conv_bn_relu(ch, widths[-1]), *conv_bn_relu(widths[-1], widths[-1]))
    self.ups, self.blocks = nn.ModuleList(), nn.ModuleList()
    for w in reversed(widths[:-1]):
      self.ups.append(nn.ConvTranspose2d(w * 2, w, 2, stride=2))
      self.blocks.append(nn.Sequential(*conv_bn_relu(2 * w, w), *conv_bn_relu(w, w)))
    self.head = nn.Conv2d(widths[0], classes, 1)

  def forward(self, x):
    skips = []
    for block in self.down:
      x = block(x)
      skips.append(x)
      x = F.max_pool2d(x, 2)
    x = self.bottom(x)
    for up, block, skip in zip(self.ups, self.blocks, reversed(skips)):
      x = block(torch.cat([skip, up(x)], 1))
    return self.head(x)


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--model', default='fcn8s', choices=('fcn8s', 'unet'))
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--warmup', type=int, default=3)
  args = p.parse_args()
  torch.manual_seed(0)
  classes = 11
  model = FCN8s(SIMPLENET_310K, 1, classes) if args.model == 'fcn8s' else UNet(1, classes)
  model = model.to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
  x = torch.randn(args.batch_size, 1, 64, 64).to(memory_format=torch.channels_last)
  y = torch.randint(0, classes, (args.batch_size, 64, 64))
  loss_fn = nn.CrossEntropyLoss(ignore_index=255)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()

  for _ in range(args.warmup):
    step()
  times = [_timed(step) for _ in range(args.steps)]
  print(json.dumps({
      'framework': 'pytorch', 'torch': torch.__version__, 'model': args.model,
      'batch_size': args.batch_size, 'threads': torch.get_num_threads(),
      'num_params': sum(p.numel() for p in model.parameters()),
      'images_per_sec': round(args.batch_size * args.steps / sum(times), 2),
      'step_time_ms': round(1000 * statistics.median(times), 3),
  }))


if __name__ == '__main__':
  main()
