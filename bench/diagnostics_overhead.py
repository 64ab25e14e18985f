"""Cost of config.diagnostics: the default config's training throughput with diagnostics off
and on (every 100 steps, the default, and every 20), runs alternated so that a shared or
noisy machine slows each setting alike. Throughput is results.json's images_per_sec (train
steps only: compilation and evaluation excluded; the diagnostics' own calls are inside it).
Writes bench/results/diagnostics_overhead.json.

  .venv/bin/python bench/diagnostics_overhead.py --steps=300 --repeats=2
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {'off': [], 'every_100': ['--config.diagnostics.enabled=True'],
            'every_20': ['--config.diagnostics.enabled=True', '--config.diagnostics.every_steps=20']}


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--repeats', type=int, default=2)
  p.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', 'diagnostics_overhead.json'))
  a = p.parse_args()
  rates: dict[str, list[float]] = {k: [] for k in SETTINGS}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(a.repeats):
      for name, flags in SETTINGS.items():
        work = os.path.join(tmp, f'{name}_{r}')
        subprocess.run([sys.executable, 'main.py', '--config=configs/default.py', f'--workdir={work}',
                        f'--config.num_train_steps={a.steps}', '--config.log_every_steps=50',
                        '--config.dataset.test_size=1000', *flags], cwd=REPO, check=True,
                       capture_output=True)
        res = json.load(open(os.path.join(work, 'results.json')))
        rates[name].append(res['images_per_sec'])
        print(f'{name:<10} run {r}: {res["images_per_sec"]:.1f} img/s', flush=True)
  mean = {k: sum(v) / len(v) for k, v in rates.items()}
  out = {'config': 'configs/default.py', 'steps': a.steps, 'images_per_sec': rates,
         'mean_images_per_sec': mean,
         'slowdown_vs_off': {k: 1 - mean[k] / mean['off'] for k in SETTINGS if k != 'off'},
         'host': os.uname().nodename, 'cpus': os.cpu_count()}
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, 'w') as f:
    json.dump(out, f, indent=2)
  print(json.dumps(out['slowdown_vs_off'], indent=2))


if __name__ == '__main__':
  main()
