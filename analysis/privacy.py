"""What a trained CNN leaks about its training data: membership inference.

Two attacks score how likely an example was in the training set:
* loss threshold (Yeom et al. 2018): a lower loss means "member";
* calibrated (offline LiRA, Carlini et al. 2022): the target's confidence logit
  phi = log(p_y / (1 - p_y)) minus its mean under reference runs that never saw the example,
  over the references' spread; hard examples no longer look like non-members. With a few
  references the spread is one global value, as the paper advises.
Each is read as an ROC curve over members (training examples) against non-members (test
examples): its AUC, and the true-positive rate at 1% false positives, the number LiRA argues
matters (an attack is only useful if it is right about some members with confidence).
"""

from __future__ import annotations

import numpy as np

from analysis import common
from data import datasets
from errors import UserError
from store import checkpoints


def confidence_logit(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """log(p_y / (1 - p_y)) = z_y - logsumexp_{j != y} z_j, computed without forming p."""
  z = np.asarray(logits, np.float64)
  own = z[np.arange(len(z)), labels]
  others = np.where(np.eye(z.shape[1], dtype=bool)[labels], -np.inf, z)
  m = others.max(1, keepdims=True)
  return own - (m[:, 0] + np.log(np.exp(others - m).sum(1)))


def loss_score(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Minus the cross-entropy: higher = more likely a member."""
  z = np.asarray(logits, np.float64)
  m = z.max(1, keepdims=True)
  logp = z - (m + np.log(np.exp(z - m).sum(1, keepdims=True)))
  return logp[np.arange(len(z)), labels]


def roc_auc(members: np.ndarray, others: np.ndarray) -> float:
  """P(score of a member > score of a non-member), ties counting half (Mann-Whitney U)."""
  scores = np.concatenate([members, others])
  order = np.argsort(scores, kind='mergesort')
  ranks = np.empty(len(scores))
  sorted_scores = scores[order]
  # Average ranks over ties.
  _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
  for start, count in zip(first, counts):
    ranks[order[start:start + count]] = start + (count + 1) / 2
  u = ranks[:len(members)].sum() - len(members) * (len(members) + 1) / 2
  return float(u / (len(members) * len(others)))


def tpr_at_fpr(members: np.ndarray, others: np.ndarray, fpr: float = 0.01) -> float:
  """The fraction of members scored above the threshold that only `fpr` of non-members pass."""
  threshold = np.quantile(others, 1.0 - fpr, method='higher')
  return float(np.mean(members > threshold))


def roc_curve(members: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  thresholds = np.unique(np.concatenate([members, others]))[::-1]
  fpr = np.concatenate([[0.0], [(others >= t).mean() for t in thresholds]])
  tpr = np.concatenate([[0.0], [(members >= t).mean() for t in thresholds]])
  return fpr, tpr


def summary(members: np.ndarray, others: np.ndarray) -> dict:
  return {'auc': roc_auc(members, others), 'tpr_at_1pct_fpr': tpr_at_fpr(members, others)}


def training_range(workdir: str) -> tuple[int, float]:
  """[first, end) of the training examples a run used (end = inf when not recorded)."""
  cfg = checkpoints.load_config(workdir)
  first = int(cfg.dataset.train_offset)
  try:
    n = checkpoints.load_meta(workdir)['run']['dataset']['num_train']
  except (UserError, KeyError, TypeError):
    n = cfg.dataset.train_size or float('inf')
  return first, first + n


def check_references(target_workdir: str, reference_workdirs) -> None:
  """References must be runs on the same data that never trained on the target's examples;
  checked from their configs before anything is compiled."""
  target = checkpoints.load_config(target_workdir).dataset
  t0, t1 = training_range(target_workdir)
  for ref in reference_workdirs:
    cfg = checkpoints.load_config(ref).dataset
    if cfg.name != target.name:
      raise UserError(f'membership reference {ref} trained on {cfg.name}, the target on '
                      f'{target.name}; references must see the same kind of data')
    r0, r1 = training_range(ref)
    if r0 < t1 and t0 < r1:
      raise UserError(f'membership reference {ref} trained on examples [{r0}, {r1}) which '
                      f'overlap the target\'s [{t0}, {t1}); train references on other examples '
                      '(--config.dataset.train_offset)')


def membership(run, n: int, seed: int = 0, references=(), train=None) -> tuple[dict, dict]:
  """Both attacks on `n` training examples of `run` against `n` of its test examples, picked by
  `seed`; `references` are loaded runs (load_run) disjoint from the target's training data.
  Returns (results, scores for the ROC plot)."""
  train = datasets.load_split(run.config.dataset, 'train')
  test = run.test_split()
  n = min(n, len(train.labels), len(test.labels))
  xin, yin, idx_in = common.pick_examples(train.images, train.labels, n, seed)
  xout, yout, idx_out = common.pick_examples(test.images, test.labels, n, seed + 1)
  zin, zout = run.logits(xin), run.logits(xout)
  out = {'num_members': n, 'num_nonmembers': n,
         'member_indices_offset': int(run.config.dataset.train_offset),
         'train_accuracy': float((zin.argmax(1) == yin).mean()),
         'test_accuracy': float((zout.argmax(1) == yout).mean()),
         'train_size': int(len(train.labels))}
  out['generalization_gap'] = out['train_accuracy'] - out['test_accuracy']
  scores = {'loss_threshold': (loss_score(zin, yin), loss_score(zout, yout))}
  out['loss_threshold'] = summary(*scores['loss_threshold'])
  if references:
    phi_in, phi_out = confidence_logit(zin, yin), confidence_logit(zout, yout)
    ref_in = np.stack([confidence_logit(r.logits(xin), yin) for r in references])
    ref_out = np.stack([confidence_logit(r.logits(xout), yout) for r in references])
    # LiRA's global variance: the references' per-example variance, averaged over examples.
    both = np.concatenate([ref_in, ref_out], 1)
    spread = float(np.sqrt(both.var(0, ddof=1).mean())) + 1e-12 if len(references) > 1 else 1.0
    scores['calibrated'] = ((phi_in - ref_in.mean(0)) / spread,
                            (phi_out - ref_out.mean(0)) / spread)
    out['calibrated'] = {**summary(*scores['calibrated']), 'references': len(references)}
  return out, scores
