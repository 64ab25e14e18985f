"""Tasks: what differs between classification, segmentation and detection. A task owns the
label format its data sources yield, what the model outputs, the metrics of training and
evaluation, the evaluators a run measures, what results.json and `--mode=eval` report, and
which analysis modes apply; the loop, checkpoints, resume, sharding, sweeps and reports are the
same code for every task. `config.task` names one; a new task is a class here (or a file of
its own) and an entry in TASKS.
"""


import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics

import models
from data import augment as augment_lib
from data import datasets, segmentation as seg_data
from errors import UserError
from train import distributed, evaluators, objectives, segmentation, transfer
from train.objectives import adversarial


@flax.struct.dataclass
class Metrics(clu_metrics.Collection):
  """Mean loss and accuracy, of training intervals and of evaluations alike."""
  loss: clu_metrics.Average.from_output('loss')
  accuracy: clu_metrics.Accuracy


class Classification:
  """Integer labels, one score per class, loss and accuracy; evaluated on the test split, under
  PGD when robust evaluation is on, and on the source task while fine-tuning."""
  name = 'classification'
  Metrics = Metrics
  # Analysis modes that take a classifier (sweeps, reports and summaries take any run).
  modes = ('explain', 'attack', 'shift', 'compress', 'gan')
  curve = ('test_accuracy', 'test accuracy (%)')  # what curves.png plots per epoch

  @staticmethod
  def label_shape(info: datasets.DatasetInfo) -> tuple:
    """The shape of one example's label (for data made up to shape, as the benchmark's)."""
    return ()

  @staticmethod
  def check(config, info: datasets.DatasetInfo) -> None:
    if info.name in seg_data.DENSE_DATASETS:
      raise UserError(f'dataset {info.name} has a class per pixel; train it with '
                      '--config.task=segmentation (configs/segmentation.py)')
    if getattr(models.create(config.model, info.num_classes), 'dense', False):
      raise UserError(f'model {config.model.name} scores every pixel; a classification run needs '
                      'one score per image: train it with --config.task=segmentation')
    objectives.check(config, info.shape, info.num_classes)

  @staticmethod
  def objective(config, info: datasets.DatasetInfo):
    return objectives.build(config, info.shape, info.num_classes)

  @staticmethod
  def augmenter(aug_cfg, source):
    """`fn(key, images, labels, preprocess) -> (inputs, labels)` of a training batch; a
    streaming source applied its host ops (the random-resized crop) while reading."""
    ops = augment_lib.pipeline(aug_cfg, skip=getattr(source, 'host_ops', ()))
    return lambda key, images, y, preprocess: (augment_lib.apply(ops, key, images, preprocess), y)

  @staticmethod
  def train_metrics(loss, outputs, labels) -> Metrics:
    return Metrics.single_from_model_output(loss=loss, logits=outputs, labels=labels)

  @staticmethod
  def make_eval_step(model, source, preprocess, mesh, flip_tta: bool = False,
                     compiler_options: dict | None = None):
    """The jitted `(variables, inputs) -> Metrics` of one eval batch (`source.step_inputs(i)`)."""
    rep = distributed.replicated(mesh)

    def step(variables, inputs):
      images, y, mask = source.batch(inputs)
      x = preprocess(images)
      logits = model.apply(variables, x, train=False)
      if flip_tta:  # average the predictions of the image and its mirror
        logits = (logits + model.apply(variables, jnp.flip(x, axis=-2), train=False)) / 2
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      return Metrics.single_from_model_output(loss=loss, logits=logits, labels=y, mask=mask)

    return jax.jit(step, out_shardings=rep, compiler_options=compiler_options)

  @classmethod
  def evaluators(cls, config, test, model, preprocess, mesh, convs, source_run=None) -> list:
    """The test split first (its fields lead results.json), then the optional ones."""
    options = convs.compiler_options()
    out = [evaluators.TestSplit(*cls.evaluation(config, test, model, preprocess, mesh, convs))]
    if adversarial.robust_eps(config.adversarial):
      out.append(evaluators.Robust(config, test, model, preprocess, mesh, Metrics, options))
    if source_run is not None and config.finetune.eval_source:
      out.append(evaluators.SourceTask(config, transfer.source_task(
          config, source_run, mesh, lambda m, s: cls.make_eval_step(
              m, s, preprocess, mesh, config.eval_flip_tta, options))))
    return out

  @classmethod
  def evaluation(cls, config, test, model, preprocess, mesh, convs):
    """(eval source, jitted eval step) over `test` (a Split in memory, or datasets.Examples
    streamed), as a run evaluates: its eval batch size, flip TTA and compiler options. Shared
    by training, `--mode=eval` and --mode=compress."""
    source = evaluators.eval_source(config, test, mesh)
    return source, cls.make_eval_step(model, source, preprocess, mesh, config.eval_flip_tta,
                                      convs.compiler_options())

  @staticmethod
  def results(config, history: list[dict], evaluator_list: list, objective) -> dict:
    """This task's fields of results.json (README "results.json")."""
    out = {'robust_accuracy': None, 'robust_eval': None, 'distill': None,
           'int8_qat': bool(config.int8_qat)}
    for e in evaluator_list:
      out.update(e.results(history))
    out.update(objective.record())
    return out

  @staticmethod
  def eval_record(values: dict) -> dict:
    """`--mode=eval`'s fields (eval.json) from the eval step's metrics."""
    return {'test_accuracy': values['accuracy'], 'test_loss': values['loss']}

  @staticmethod
  def eval_line(values: dict) -> str:
    return f'test accuracy {100 * values["accuracy"]:.2f}% (loss {values["loss"]:.4f})'

  @staticmethod
  def summary(results: dict) -> str:
    return (f'test accuracy {100 * (results["test_accuracy"] or 0):.2f}% (best '
            f'{100 * (results["best_test_accuracy"] or 0):.2f}%)')

  @staticmethod
  def write_figures(*args, **kwargs) -> None:
    """A classifier's figures are the analysis modes' (curves.png is the loop's)."""
    return None


TASKS = {'classification': Classification, 'segmentation': segmentation.Segmentation}


def get(config):
  """The task of a config (`config.task`), or a UserError naming the known ones."""
  name = config.get('task', 'classification')
  if name not in TASKS:
    raise UserError(f'unknown task {name!r}; use {" | ".join(TASKS)}')
  return TASKS[name]


def check_mode(config, mode: str) -> None:
  """A mode that probes a trained run refuses a run of a task it does not take."""
  task = get(config)
  if mode not in task.modes:
    raise UserError(f'--mode={mode} does not apply to a {task.name} run; it applies to '
                    f'{", ".join(n for n, t in TASKS.items() if mode in t.modes) or "none"}')
