"""PyTorch baseline: SimpleNet train-step throughput on CPU, for side-by-side comparison with
`python main.py --mode=benchmark` (bench/compare.py runs both alternately).

Same model as models/simplenet.py (Conv+bias -> BatchNorm -> ReLU, max pools, global max pool,
dense head), SGD momentum, random 32x32x3 data, channels_last memory format, fp32.
Prints one JSON line.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn

LAYOUTS = {
    'simplenet_cifar_5m': '64,128,128,128,p,128,128,256,p,256,256,p,512,2048k1,256k1,p,256',
    'simplenet_cifar_310k': '64,32,32,32,p,32,32,64,p,64,64,p,128,256k1,64k1,p,64',
}


def build(layout: str, in_ch: int, num_classes: int) -> nn.Module:
  mods, ch = [], in_ch
  for tok in layout.split(','):
    if tok == 'p':
      mods.append(nn.MaxPool2d(2, 2))
      continue
    width, _, k = tok.partition('k')
    width, k = int(width), int(k or 3)
    mods += [nn.Conv2d(ch, width, k, padding=k // 2), nn.BatchNorm2d(width, momentum=0.05),
             nn.ReLU(inplace=True)]
    ch = width
  return nn.Sequential(*mods, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(ch, num_classes))


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
  a, b = torch.ones(n, n), torch.ones(n, n)
  a @ b
  best = min(_timed(lambda: a @ b) for _ in range(repeats))
  return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--model', default='simplenet_cifar_310k', choices=sorted(LAYOUTS))
  p.add_argument('--batch_size', type=int, default=128)
  p.add_argument('--steps', type=int, default=30)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--threads', type=int, default=0, help='0 = torch default')
  args = p.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = build(LAYOUTS[args.model], 3, 10).to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
  x = torch.randn(args.batch_size, 3, 32, 32).to(memory_format=torch.channels_last)
  y = torch.randint(0, 10, (args.batch_size,))
  loss_fn = nn.CrossEntropyLoss()

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()

  for _ in range(args.warmup):
    step()
  times = [_timed(step) for _ in range(args.steps)]
  wall = sum(times)
  print(json.dumps({
      'framework': 'pytorch', 'torch': torch.__version__, 'model': args.model,
      'batch_size': args.batch_size, 'threads': torch.get_num_threads(),
      'images_per_sec': round(args.batch_size * args.steps / wall, 2),
      'step_time_ms': round(1000 * statistics.median(times), 3),
      'peak_gflops_per_sec': round(matmul_peak(), 2),
  }))


if __name__ == '__main__':
  main()
