"""SHA-256 of a run's parameters after 50 steps on synthetic data, for every training objective.

`python tests/core_digests.py` prints {variant: digest} as JSON; test_core_digests.py compares
them with the digests recorded before the training core was split into tasks and objectives
(issue 38), so a refactoring that changes any step's arithmetic fails. One process trains all
variants in-process with XLA's convolutions (oneDNN's depend on the CPU) and the XLA flags
main.py sets, on one device.

The run is configs/default.py's recipe (SGD + Nesterov, one-cycle schedule, weight decay,
label smoothing, pad-crop and flips) with the tests' tiny SimpleNet on 16x16x3 synthetic data:
the default 311K SimpleNet would make each variant a minute on two cores.
"""

import hashlib
import json
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kernels import runtime  # noqa: E402

COMMON = {
    'dataset.name': 'synthetic', 'dataset.image_shape': '16,16,3', 'dataset.synthetic_size': 256,
    'model.name': 'simplenet', 'model.layers': '8,p,16,p,16', 'batch_size': 16,
    'num_train_steps': 50, 'log_every_steps': 25, 'eval_batch_size': 64, 'conv_impl': 'xla',
    'adversarial.steps': 3, 'adversarial.eval_steps': 3, 'adversarial.eval_examples': 32,
}
# variant -> overrides; '{plain}' is the plain run's workdir (teacher and fine-tuning source).
VARIANTS = {
    'plain': {},
    'pgd': {'adversarial.method': 'pgd'},
    'trades': {'adversarial.method': 'trades'},
    'distill': {'distill.teacher': '{plain}'},
    'qat': {'int8_qat': True},
    'frozen_finetune': {'init_from': '{plain}', 'finetune.freeze': 'first:2',
                        'finetune.eval_source': True},
    'progressive': {'init_from': '{plain}', 'finetune.progressive': True},
}


def digest(workdir: str) -> dict:
  """SHA-256 over the final checkpoint's parameters, leaf by leaf in path order, and their L2
  norm (read with orbax directly, so neither depends on the project's own loading code)."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  ckpts = os.path.join(workdir, 'checkpoints')
  path = os.path.join(ckpts, str(max(int(s) for s in os.listdir(ckpts) if s.isdigit())), 'state')
  state = ocp.StandardCheckpointer().restore(path)
  h, total = hashlib.sha256(), 0.0
  for key, leaf in sorted(jax.tree_util.tree_leaves_with_path(state['params']),
                          key=lambda kv: jax.tree_util.keystr(kv[0])):
    leaf = np.ascontiguousarray(np.asarray(leaf))
    h.update(jax.tree_util.keystr(key).encode())
    h.update(leaf.tobytes())
    total += float(np.sum(leaf.astype(np.float64) ** 2))
  return {'sha256': h.hexdigest(), 'norm': round(total ** 0.5, 6)}


def compute(root: str, variants=VARIANTS) -> dict[str, dict]:
  from configs import default
  from train import loop
  out = {}
  for name, changes in variants.items():
    config = default.get_config()
    for key, value in {**COMMON, **changes}.items():
      if isinstance(value, str):
        value = value.format(plain=os.path.join(root, 'plain'))
      *parents, leaf = key.split('.')
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = type(node[leaf])(value)
    loop.train_and_evaluate(config, os.path.join(root, name))
    out[name] = digest(os.path.join(root, name))
  return out


def cpu() -> str:
  """The CPU model: XLA's CPU kernels block their sums by the host's vector width and caches,
  so bitwise equality holds on one CPU model, not across them."""
  with open('/proc/cpuinfo') as f:
    return next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), 'unknown')


if __name__ == '__main__':
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'
  runtime.setup_process()
  with tempfile.TemporaryDirectory() as tmp:
    print(json.dumps({'cpu': cpu(), 'digests': compute(tmp)}, indent=1, sort_keys=True))
