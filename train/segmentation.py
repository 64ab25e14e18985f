"""The segmentation task: a class per pixel (masks from data/segmentation.py, IGNORE = 255 counts
nowhere), per-pixel cross-entropy, and the metrics of Long et al. 2015 from one confusion matrix
summed over the whole split (as the FCN code and scenic compute them):

  pixel accuracy   sum_i n_ii / sum_ij n_ij
  mean accuracy    mean_i n_ii / t_i                       (t_i = sum_j n_ij, pixels of class i)
  IoU of class i   n_ii / (t_i + sum_j n_ji - n_ii)
  mean IoU         mean of the IoUs of the classes present (in the truth or the predictions)
  frequency-weighted IoU   sum_i t_i IoU_i / sum_i t_i

A class absent from both the truth and the predictions has no IoU (NaN, `null` in JSON) and is
left out of the means, as in the FCN code's nanmean.
"""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics as clu_metrics

import models
from data import datasets, segmentation as seg_data
from errors import UserError
from train import distributed, evaluators, steps
from train.objectives import base

IGNORE = seg_data.IGNORE


def align(labels: jax.Array, logits: jax.Array) -> jax.Array:
  """The labels of the pixels the network scores: a valid-padding U-Net's output is the centre
  of its input (the paper's overlap-tile rule), so its masks are centre-cropped to match."""
  h, w = logits.shape[1:3]
  top, left = (labels.shape[1] - h) // 2, (labels.shape[2] - w) // 2
  return labels[:, top: top + h, left: left + w]


def _valid(labels: jax.Array, mask: jax.Array | None) -> jax.Array:
  valid = labels != IGNORE
  if mask is not None:  # padding examples of the last eval batch
    valid = valid & mask.reshape(-1, *([1] * (labels.ndim - 1)))
  return valid


def pixel_losses(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Cross-entropy of every pixel (0 where the label is IGNORE)."""
  safe = jnp.where(labels == IGNORE, 0, labels).astype(jnp.int32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, safe)


@flax.struct.dataclass
class PixelAccuracy(clu_metrics.Average):
  @classmethod
  def from_model_output(cls, *, logits, labels, mask=None, **_):
    labels = align(labels, logits)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return super().from_model_output(values=correct, mask=_valid(labels, mask))


@flax.struct.dataclass
class PixelLoss(clu_metrics.Average):
  @classmethod
  def from_model_output(cls, *, logits, labels, mask=None, **_):
    labels = align(labels, logits)
    return super().from_model_output(values=pixel_losses(logits, labels),
                                     mask=_valid(labels, mask))


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """(classes, classes) pixel counts, rows the truth and columns the prediction (int32: exact
  up to 2**31 pixels of one pair, ~8,000 VOC images of one class)."""
  matrix: jax.Array

  @classmethod
  def from_model_output(cls, *, logits, labels, mask=None, **_):
    labels = align(labels, logits)
    c = logits.shape[-1]
    valid = _valid(labels, mask)
    pair = jnp.where(valid, labels.astype(jnp.int32) * c + jnp.argmax(logits, -1), 0)
    counts = jnp.zeros(c * c, jnp.int32).at[pair.ravel()].add(valid.ravel().astype(jnp.int32))
    return cls(counts.reshape(c, c))

  def merge(self, other):
    return type(self)(self.matrix + other.matrix)

  def compute(self):
    return self.matrix


@flax.struct.dataclass
class Metrics(clu_metrics.Collection):
  """Of training intervals: mean loss and pixel accuracy (cheap; no confusion matrix)."""
  loss: clu_metrics.Average.from_output('loss')
  accuracy: PixelAccuracy


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
  loss: PixelLoss
  accuracy: PixelAccuracy
  confusion: ConfusionMatrix


def scores(confusion, class_names=()) -> dict:
  """The metrics of the module docstring from a confusion matrix, as fractions; the per-class
  IoUs as a list (None for a class absent from truth and predictions)."""
  n = np.asarray(confusion, np.float64)
  diag, truth, pred = np.diag(n), n.sum(1), n.sum(0)
  total = max(n.sum(), 1.0)
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = diag / (truth + pred - diag)
    acc = diag / truth
  present = truth > 0
  return {'pixel_accuracy': float(diag.sum() / total),
          'mean_accuracy': float(np.nanmean(acc)) if present.any() else 0.0,
          'miou': float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
          'fw_iou': float((truth[present] * iou[present]).sum() / total),
          'per_class_iou': [None if np.isnan(v) else round(float(v), 6) for v in iou]}


class PixelCrossEntropy(base.Objective):
  """Mean cross-entropy over the labelled pixels (IGNORE excluded), label smoothing as the
  classifiers'."""

  def __init__(self, config, num_classes: int):
    self.label_smoothing = config.label_smoothing

  def loss(self, forward, params, batch_stats, x, y, aux):
    logits, batch_stats = forward(params, batch_stats, x)
    labels = align(y, logits)
    valid = labels != IGNORE
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    targets = optax.smooth_labels(jax.nn.one_hot(safe, logits.shape[-1]), self.label_smoothing)
    per_pixel = optax.softmax_cross_entropy(logits, targets)
    loss = jnp.sum(jnp.where(valid, per_pixel, 0)) / jnp.maximum(valid.sum(), 1)
    return loss, (logits, batch_stats)


DENSE_MODELS = ('fcn32s', 'fcn16s', 'fcn8s', 'unet')


class TestSplit(evaluators.TestSplit):
  """The eval step over the test split: loss, pixel accuracy and the confusion matrix's scores
  (`test_miou`, `test_pixel_accuracy`, ...). `test_accuracy` is the pixel accuracy, so what reads
  any run's accuracy (sweep reports, curves) reads this one's too."""

  def __init__(self, eval_source, eval_step, class_names):
    super().__init__(eval_source, eval_step)
    self.class_names = tuple(class_names)

  def __call__(self, variables) -> evaluators.Measured:
    ev = steps.evaluate(self.step, variables, self.source)
    fields = Segmentation.eval_record(ev)
    scalars = {f'test/{k[5:]}': v for k, v in fields.items() if isinstance(v, float)}
    return evaluators.Measured(fields, scalars, Segmentation.eval_line(ev))

  def results(self, history: list[dict]) -> dict:
    last = history[-1] if history else {}
    per_class = last.get('test_per_class_iou')
    names = self.class_names or tuple(str(i) for i in range(len(per_class or ())))
    out = {k: last.get(k) for k in ('test_miou', 'test_pixel_accuracy', 'test_mean_accuracy',
                                    'test_fw_iou', 'test_loss')}
    out.update(test_accuracy=last.get('test_accuracy'),
               best_test_miou=max((h['test_miou'] for h in history), default=None),
               best_test_accuracy=max((h['test_accuracy'] for h in history), default=None),
               test_per_class_iou=dict(zip(names, per_class)) if per_class else None)
    return out


class Segmentation:
  """Masks (H, W) of class indices, one score per class per pixel, pixel accuracy as training's
  accuracy, mIoU and the rest from the test split's confusion matrix."""
  name = 'segmentation'
  Metrics = Metrics
  modes = ('explain', 'attack')
  curve = ('test_miou', 'test mIoU (%)')

  @staticmethod
  def label_shape(info: datasets.DatasetInfo) -> tuple:
    return tuple(info.shape[:2])

  @staticmethod
  def check(config, info: datasets.DatasetInfo) -> None:
    if info.name not in seg_data.DENSE_DATASETS:
      raise UserError(f'a segmentation run needs per-pixel masks; dataset {info.name} has one '
                      f'label per image: use dataset.name={" | ".join(seg_data.DENSE_DATASETS)}')
    for key, off in (('adversarial.method', 'none'), ('distill.teacher', ''), ('init_from', ''),
                     ('int8_qat', False)):
      value = config
      for part in key.split('.'):
        value = value[part]
      if value != off:
        raise UserError(f'{key} is implemented for classification runs only; unset it for a '
                        'segmentation run')
    if config.objective != 'cross_entropy':
      raise UserError(f'objective {config.objective!r} is a classification loss; a segmentation '
                      'run minimizes the per-pixel cross_entropy')
    seg_data.check_augment(config.augment)
    model = models.create(config.model, info.num_classes)
    if not getattr(model, 'dense', False):
      raise UserError(f'model {config.model.name} gives one score per image, not per pixel; a '
                      f'segmentation run needs a dense model: {" | ".join(DENSE_MODELS)}')
    out = jax.eval_shape(lambda: model.init_with_output(
        jax.random.key(0), jnp.zeros((1, *info.shape)), train=False)[0])
    if out.shape[1] > info.shape[0] or out.shape[2] > info.shape[1]:
      raise UserError(f'model {config.model.name} outputs {out.shape[1]}x{out.shape[2]} for '
                      f'{info.shape[0]}x{info.shape[1]} inputs; it must not exceed the input')

  @staticmethod
  def objective(config, info: datasets.DatasetInfo):
    return PixelCrossEntropy(config, info.num_classes)

  @staticmethod
  def augmenter(aug_cfg, source):
    # A streaming source moved image and mask together on the host (FolderExamples.load).
    return seg_data.augment(aug_cfg, geometry=not hasattr(source, 'host_ops'))

  @staticmethod
  def train_metrics(loss, outputs, labels) -> Metrics:
    return Metrics.single_from_model_output(loss=loss, logits=outputs, labels=labels)

  @staticmethod
  def predict(model, variables, x, flip_tta: bool = False):
    logits = model.apply(variables, x, train=False)
    if flip_tta:  # the mirror's scores, mirrored back
      logits = (logits + jnp.flip(model.apply(variables, jnp.flip(x, 2), train=False), 2)) / 2
    return logits

  @classmethod
  def make_eval_step(cls, model, source, preprocess, mesh, flip_tta: bool = False,
                     compiler_options: dict | None = None):
    rep = distributed.replicated(mesh)

    def step(variables, inputs):
      images, y, mask = source.batch(inputs)
      logits = cls.predict(model, variables, preprocess(images), flip_tta)
      return EvalMetrics.single_from_model_output(logits=logits, labels=y, mask=mask)

    return jax.jit(step, out_shardings=rep, compiler_options=compiler_options)

  @classmethod
  def evaluation(cls, config, test, model, preprocess, mesh, convs):
    source = evaluators.eval_source(config, test, mesh)
    return source, cls.make_eval_step(model, source, preprocess, mesh, config.eval_flip_tta,
                                      convs.compiler_options())

  @classmethod
  def evaluators(cls, config, test, model, preprocess, mesh, convs, source_run=None) -> list:
    info = datasets.info(config.dataset)
    return [TestSplit(*cls.evaluation(config, test, model, preprocess, mesh, convs),
                      info.class_names)]

  @staticmethod
  def results(config, history, evaluator_list, objective) -> dict:
    out = {}
    for e in evaluator_list:
      out.update(e.results(history))
    return out

  @staticmethod
  def eval_record(values: dict) -> dict:
    s = scores(values['confusion'])
    return {'test_miou': s['miou'], 'test_pixel_accuracy': s['pixel_accuracy'],
            'test_mean_accuracy': s['mean_accuracy'], 'test_fw_iou': s['fw_iou'],
            'test_accuracy': s['pixel_accuracy'], 'test_loss': values['loss'],
            'test_per_class_iou': s['per_class_iou']}

  @staticmethod
  def eval_line(values: dict) -> str:
    s = scores(values['confusion'])
    return (f'test mIoU {100 * s["miou"]:.2f}%  pixel acc {100 * s["pixel_accuracy"]:.2f}%  '
            f'mean acc {100 * s["mean_accuracy"]:.2f}%  fwIoU {100 * s["fw_iou"]:.2f}%  '
            f'(loss {values["loss"]:.4f})')

  @staticmethod
  def summary(results: dict) -> str:
    return (f'test mIoU {100 * (results["test_miou"] or 0):.2f}% (best '
            f'{100 * (results["best_test_miou"] or 0):.2f}%), pixel accuracy '
            f'{100 * (results["test_pixel_accuracy"] or 0):.2f}%')

  @classmethod
  def write_figures(cls, model, variables, preprocess, test, class_names, workdir: str,
                    flip_tta: bool = False) -> str:
    """`W/predictions.png`: image, ground truth, prediction and errors of the first test
    images (see analysis/ for the probes)."""
    n = min(6, len(test))
    images, masks = np.asarray(test.images[:n]), np.asarray(test.labels[:n])
    logits = jax.jit(lambda v, x: cls.predict(model, v, preprocess(x), flip_tta))(
        variables, images)
    pred = np.asarray(jnp.argmax(logits, -1))
    path = os.path.join(workdir, 'predictions.png')
    segmentation_grid(images, np.asarray(align(masks, logits)), pred, class_names, path,
                      logits.shape[-1])
    return path


def palette(num_classes: int) -> np.ndarray:
  """(num_classes, 3) colours in [0, 1]: background black, the classes matplotlib's tab20."""
  from matplotlib import colormaps  # heavy (~1 s): loaded only when a figure is drawn
  colours = np.array([colormaps['tab20'](i % 20)[:3] for i in range(num_classes)])
  colours[0] = 0.0
  return colours


def colour(masks: np.ndarray, num_classes: int) -> np.ndarray:
  """Class-index masks -> RGB in [0, 1]; IGNORE pixels grey."""
  rgb = palette(num_classes)[np.minimum(masks, num_classes - 1)]
  rgb[masks == IGNORE] = 0.5
  return rgb


def segmentation_grid(images: np.ndarray, truth: np.ndarray, pred: np.ndarray, class_names,
                      path: str, num_classes: int | None = None) -> None:
  """One row per image: the image, the ground truth, the prediction, and its errors (red: a
  wrong class, grey: ignored), with the pixel accuracy of each row and a legend of the classes
  shown."""
  import matplotlib  # heavy (~1 s): loaded only when a figure is drawn
  matplotlib.use('Agg')
  from matplotlib import patches, pyplot as plt
  c = num_classes or len(class_names) or int(max(truth[truth != IGNORE].max(), pred.max())) + 1
  names = list(class_names) or [str(i) for i in range(c)]
  n = len(images)
  fig, axes = plt.subplots(n, 4, figsize=(8.4, 2.1 * n + 0.8), squeeze=False)
  for i in range(n):
    img = images[i].astype(np.float32) / 255.0
    valid = truth[i] != IGNORE
    top = (images.shape[1] - truth.shape[1]) // 2, (images.shape[2] - truth.shape[2]) // 2
    img = img[top[0]: top[0] + truth.shape[1], top[1]: top[1] + truth.shape[2]]
    errors = np.zeros((*truth[i].shape, 3))
    errors[valid & (pred[i] != truth[i])] = (0.9, 0.1, 0.1)
    errors[~valid] = 0.5
    acc = (pred[i] == truth[i])[valid].mean() if valid.any() else float('nan')
    panels = [(img[..., 0] if img.shape[-1] == 1 else img, 'image'),
              (colour(truth[i], c), 'ground truth'), (colour(pred[i], c), 'prediction'),
              (errors, f'errors ({100 * (1 - acc):.1f}% of pixels)')]
    for ax, (panel, title) in zip(axes[i], panels):
      ax.imshow(panel, cmap='gray' if panel.ndim == 2 else None, vmin=0, vmax=1,
                interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0 or title.startswith('errors'):
        ax.set_title(title, fontsize=8)
  shown = sorted(set(np.unique(truth[truth != IGNORE])) | set(np.unique(pred)))
  colours = palette(c)
  fig.legend(handles=[patches.Patch(color=colours[k], label=names[k]) for k in shown],
             loc='lower center', ncol=min(6, len(shown)), fontsize=7, frameon=False)
  fig.tight_layout(rect=(0, 0.6 / (2.1 * n + 0.8), 1, 1))
  fig.savefig(path, dpi=90)
  plt.close(fig)
