"""Evaluators: what the loop measures at each evaluation. Each is a callable of the inference
variables returning its fields of the history entry, with TensorBoard scalars, a log fragment
and its fields of results.json; the loop runs the list the task builds (train/tasks.py) and
knows none of them. A new evaluator (mIoU, a COCO mAP computed on the host) is a class here
and a line in its task's `evaluators`.
"""

from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp
import optax

import attacks
from data import datasets, sources, streaming
from store import runs
from train import distributed, steps, transfer
from train.objectives import adversarial


@dataclasses.dataclass
class Measured:
  """One evaluator's output at one evaluation."""
  fields: dict      # history entry fields, e.g. {'test_accuracy': 0.9, 'test_loss': 0.3}
  scalars: dict     # TensorBoard scalars
  text: str         # appended to the eval log line


def eval_source(config, test, mesh):
  """The eval source over `test`: a Split on the devices, or datasets.Examples streamed."""
  if isinstance(test, datasets.Split):
    return sources.InMemoryEval(test, config.eval_batch_size, mesh)
  return streaming.StreamingEval(test, config.dataset, config.eval_batch_size, mesh)


class TestSplit:
  """The task's eval step over the test split: `test_<metric>` for each of its metrics."""

  def __init__(self, eval_source, eval_step):
    self.source, self.step = eval_source, eval_step

  def __call__(self, variables) -> Measured:
    ev = steps.evaluate(self.step, variables, self.source)
    return Measured({f'test_{k}': v for k, v in ev.items()},
                    {f'test/{k}': v for k, v in ev.items()},
                    f'test loss {ev["loss"]:.4f}  test acc {100 * ev["accuracy"]:.2f}%')

  def results(self, history: list[dict]) -> dict:
    accs = [h['test_accuracy'] for h in history]
    return {'test_accuracy': accs[-1] if accs else None,
            'best_test_accuracy': max(accs) if accs else None,
            'test_loss': history[-1]['test_loss'] if history else None}


def make_robust_eval_step(model, source, preprocess, mesh, adv, metrics_cls,
                          compiler_options: dict | None = None):
  """The jitted `(variables, inputs) -> metrics_cls` on PGD examples (eps `robust_eps(adv)`,
  `adv.eval_steps` steps, one random start from a fixed key, so every evaluation of a run
  attacks alike)."""
  rep = distributed.replicated(mesh)
  eps = adversarial.robust_eps(adv)
  step_size = attacks.pgd_step_size(eps, adv.eval_steps, 0.0)

  def step(variables, inputs):
    images, y, mask = source.batch(inputs)
    f = runs.Net(model, preprocess).logits01(variables)
    x = images.astype(jnp.float32) / 255.0
    x_adv = attacks.pgd_once(f, x, y, eps, adv.norm, adv.eval_steps, step_size,
                             jax.random.key(0))
    logits = f(x_adv)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return metrics_cls.single_from_model_output(loss=loss, logits=logits, labels=y, mask=mask)

  return jax.jit(step, out_shardings=rep, compiler_options=compiler_options)


class Robust:
  """Accuracy under PGD on the first `adversarial.eval_examples` test examples."""

  def __init__(self, config, test, model, preprocess, mesh, metrics_cls, compiler_options):
    adv = config.adversarial
    n = adv.eval_examples
    subset = (datasets.Split(test.images[:n], test.labels[:n])
              if isinstance(test, datasets.Split) else test.head(n))
    self.adv = adv
    self.source = sources.InMemoryEval(subset, config.eval_batch_size, mesh)
    self.step = make_robust_eval_step(model, self.source, preprocess, mesh, adv, metrics_cls,
                                      compiler_options)

  def __call__(self, variables) -> Measured:
    acc = steps.evaluate(self.step, variables, self.source)['accuracy']
    return Measured({'test_robust_accuracy': acc}, {'test/robust_accuracy': acc},
                    f'robust acc {100 * acc:.2f}% (PGD, first {self.source.num_examples})')

  def results(self, history: list[dict]) -> dict:
    adv = self.adv
    return {'robust_accuracy': history[-1].get('test_robust_accuracy') if history else None,
            'robust_eval': {'attack': 'pgd', 'norm': adv.norm,
                            'eps': adversarial.robust_eps(adv), 'steps': adv.eval_steps,
                            'restarts': 1, 'num_examples': self.source.num_examples,
                            'trained_with': adv.method}}


class SourceTask:
  """While fine-tuning: the current network on the source run's task, through the source
  run's head (forgetting, Li & Hoiem 2016)."""

  def __init__(self, config, source_task: transfer.SourceTask):
    self.config, self.task = config, source_task

  def accuracy(self, variables) -> float:
    v = transfer.source_variables(self.config, variables, self.task)
    return steps.evaluate(self.task.eval_step, v, self.task.eval_source)['accuracy']

  def __call__(self, variables) -> Measured:
    acc = self.accuracy(variables)
    return Measured({'source_test_accuracy': acc}, {'source/accuracy': acc},
                    f'source task acc {100 * acc:.2f}%')

  def results(self, history: list[dict]) -> dict:
    return {}  # its numbers join results.json's init_from record (train/transfer.py)
