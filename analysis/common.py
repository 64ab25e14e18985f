"""Pieces every analysis mode shares: a trained run comes from `train.runs.load_run`;
here are deterministic example selection and the outputs (`W/<mode>/results.json`, a Markdown
table, figures) in one place per mode."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

import lifecycle
import util
from errors import UserError
from kernels import runtime


def output_dir(workdir: str, mode: str) -> str:
  """`W/<mode>/`, created and held by this process (a second process writing the same folder
  is refused); every file a mode writes goes there."""
  path = os.path.join(workdir, mode)
  lifecycle.hold(path, os.path.basename(mode))
  return path


def pick_examples(images: np.ndarray, labels: np.ndarray, n: int, seed: int = 0,
                  per_class: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images, labels, indices) of `n` examples chosen by `seed` alone, the same on every machine
  and every call; `per_class` takes them round-robin over classes (as balanced as the split
  allows). Indices are sorted, so the picks read in split order."""
  total = len(labels)
  if n <= 0:
    raise UserError(f'the number of examples must be positive, got {n}')
  n = min(n, total)
  rng = np.random.default_rng(seed)
  if per_class:
    order = {c: rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    picked, i = [], 0
    while len(picked) < n:
      for c in sorted(order):
        if i < len(order[c]) and len(picked) < n:
          picked.append(order[c][i])
      i += 1
    idx = np.sort(np.asarray(picked))
  else:
    idx = np.sort(rng.choice(total, n, replace=False))
  return images[idx], labels[idx], idx


def test_examples(run, n: int, seed: int = 0, per_class: bool = False):
  """`n` test examples of a loaded run (train.runs.load_run), picked as `pick_examples`
  does: (uint8 images, labels, indices into the run's test split)."""
  test = run.test_split()
  return pick_examples(test.images, test.labels, n, seed, per_class)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
  """A Markdown table of `rows` (floats to 4 significant digits)."""
  if not rows:
    return '(no rows)\n'
  columns = list(columns or dict.fromkeys(k for r in rows for k in r))
  fmt = lambda v: f'{v:.4g}' if isinstance(v, float) else '' if v is None else str(v)
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(fmt(r.get(c)) for c in columns) + ' |' for r in rows]
  return '\n'.join(lines) + '\n'


def write_outputs(directory: str, results: dict, rows: Sequence[dict] = (), title: str = '',
                  columns: Sequence[str] | None = None, name: str = 'results') -> dict[str, str]:
  """Writes `<name>.json` and `<name>.md` (title + table of `rows`) into `directory`;
  returns their paths. Paths inside the results should be relative to the workdir."""
  json_path = os.path.join(directory, f'{name}.json')
  md_path = os.path.join(directory, f'{name}.md')
  util.write_json(json_path, results)
  with open(md_path, 'w') as f:
    f.write(f'# {title}\n\n' if title else '')
    f.write(markdown_table(rows, columns))
  return {'json': json_path, 'md': md_path}


def stamp(results: dict, progress: util.Progress) -> dict:
  """A mode's results with its total time, the machine it ran on (timings mean little without
  the CPU: kernels.runtime.machine) and the code's commit; called just before they are written."""
  results['total_seconds'] = progress.total_seconds()
  results['machine'] = runtime.machine()
  results['commit'] = util.source_version()
  return results


def save_figure(fig, path: str, dpi: int = 100) -> str:
  """Saves a matplotlib figure and closes it."""
  from matplotlib import pyplot as plt
  fig.savefig(path, dpi=dpi, bbox_inches='tight')
  plt.close(fig)
  return path


def pyplot():
  """matplotlib's pyplot on the file-only Agg backend (no display on clusters)."""
  import matplotlib  # heavy (~1 s): loaded only when a figure is drawn
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  return plt


# Figure conventions of every mode: examples carry the true and predicted class by name with
# the confidence; a signed map (a contribution: grad x input, integrated gradients, an
# adversarial perturbation) uses a diverging colormap centred on zero, an unsigned one
# (a sensitivity) a sequential map from zero; each scale has a colorbar that names its unit.
SIGNED_CMAP, MAGNITUDE_CMAP = 'RdBu_r', 'inferno'


def class_names(info) -> list[str]:
  """A dataset's class names (data.datasets.DatasetInfo), or 'class k' where it has none."""
  return list(info.class_names) or [f'class {k}' for k in range(info.num_classes)]


def example_title(names: Sequence[str], true: int | None, pred: int, confidence: float) -> str:
  """'Pullover -> Coat 71%': the true class, then the prediction and its softmax probability
  (only the prediction where the true class is unknown, e.g. a synthesized image)."""
  guess = f'{names[pred]} {100 * confidence:.0f}%'
  if true is None:
    return f'pred {guess}'
  return f'{names[true]}: ok {guess}' if true == pred else f'{names[true]} -> {guess}'


def show_image(ax, image: np.ndarray, vmax: float = 255.0) -> None:
  """An image (H, W, 1 | 3) in [0, vmax], gray or colour, without axes."""
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap='gray', vmin=0, vmax=vmax)
  else:
    ax.imshow(np.clip(image / vmax, 0, 1))
  ax.axis('off')


def show_map(ax, values: np.ndarray, signed: bool, under: np.ndarray | None = None,
             alpha: float = 0.75):
  """A map (H, W) scaled by its largest magnitude: [-1, 1] on the diverging colormap when
  `signed` (zero is white), else [0, 1] on the sequential one; drawn over `under` (an image
  in [0, 255]) in gray when given. Returns the artist for a colorbar."""
  peak = float(np.abs(values).max()) or 1.0
  if under is not None:
    ax.imshow(under.mean(-1), cmap='gray', vmin=0, vmax=255)
  art = ax.imshow(values / peak, cmap=SIGNED_CMAP if signed else MAGNITUDE_CMAP,
                  vmin=-1 if signed else 0, vmax=1, alpha=alpha if under is not None else 1.0)
  ax.axis('off')
  return art


def colorbar(fig, art, ax, label: str, where: str = 'below') -> None:
  """A colorbar in an inset just below (horizontal) or right of (vertical) `ax`: an inset takes
  no room from the grid, so every panel keeps its size and the columns stay aligned."""
  box = [0.0, -0.16, 1.0, 0.07] if where == 'below' else [1.04, 0.0, 0.06, 1.0]
  cax = ax.inset_axes(box)
  bar = fig.colorbar(art, cax=cax, orientation='horizontal' if where == 'below' else 'vertical')
  bar.ax.tick_params(labelsize=6)
  bar.set_label(label, fontsize=6)


def image_grid(plt, rows: list[np.ndarray], row_labels: list[str], path: str,
               col_labels: list[str] | None = None, title: str = '') -> None:
  """Rows of images in [0, 255], the first of each row titled with its row label, the
  others of the first row with the column labels; `title` over the whole figure."""
  n_cols = max(len(r) for r in rows)
  fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.4 * n_cols, 1.5 * len(rows)),
                           squeeze=False)
  for i, row in enumerate(rows):
    for j in range(n_cols):
      ax = axes[i, j]
      ax.axis('off')
      if j < len(row):
        im = row[j]
        ax.imshow(im[..., 0] if im.shape[-1] == 1 else np.clip(im, 0, 255).astype(np.uint8),
                  cmap='gray' if im.shape[-1] == 1 else None)
      if j == 0:
        ax.set_title(row_labels[i], fontsize=7, loc='left')
      elif i == 0 and col_labels and j < len(col_labels):
        ax.set_title(col_labels[j], fontsize=7)
  if title:
    fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  save_figure(fig, path)
