"""The analysis modes main.py's table points at, and their flags; light to import (the work
loads inside the mode functions)."""

from __future__ import annotations

from absl import flags

import util
from analysis import options

# Each mode's flags come from its options dataclass, where every default is written once.
util.define_flags(options.Explain, 'explain', 'explain_')
flags.DEFINE_bool('explain_list_layers', False, '--mode=explain: print the conv layers and exit.')
util.define_flags(options.Attack, 'attack', 'attack_')
util.define_flags(options.Shift, 'shift', 'shift_')
FLAGS = flags.FLAGS


def summary(config, workdir: str) -> None:
  """`--mode=summary`: the per-layer table of a config's model (analysis/summary.py)."""
  from analysis import summary as summary_lib
  summary_lib.summarize(config, workdir)


def explain(config, workdir: str) -> None:
  """`--mode=explain`: attribution maps and their faithfulness and fragility, projections,
  activation maximization and feature inversion of a trained run, into `W/explain/`."""
  from analysis import dense, explain as explain_lib
  util.trained_run_mode('explain', 'explain', config, workdir)
  o = util.from_flags(options.Explain, FLAGS, 'explain_')
  if FLAGS.explain_list_layers:
    for name, shape in explain_lib.list_layers(workdir):
      print(f'{name}  {"x".join(map(str, shape))}')
    return
  if dense.is_segmentation(workdir):
    results = dense.run_explain(workdir, o)
    for what, why in results['notes'].items():
      print(f'explain: {what}: {why}')
    for m in results['methods']:
      print(f'explain: {m["method"]:<22} {100 * m["region_share"]:.1f}% of the map inside the '
            f'region ({100 * m["region_area"]:.1f}% of the pixels)')
    print(f'explain: outputs in {workdir}/explain/', flush=True)
    return
  results = explain_lib.run_explain(workdir, o)
  for what, why in results['notes'].items():
    print(f'explain: {what}: {why}')
  print(f'explain: {len(results.get("methods", []))} methods on {o.num_images} images; '
        f'outputs in {workdir}/explain/', flush=True)


def attack(config, workdir: str) -> None:
  """`--mode=attack`: white-box and black-box robustness, fooling images, a patch, transfer,
  membership inference and reconstruction of a trained run, into `W/attack/`."""
  from analysis import attack as attack_lib, dense
  util.trained_run_mode('attack', 'attack', config, workdir)
  o = util.from_flags(options.Attack, FLAGS, 'attack_')
  if dense.is_segmentation(workdir):
    r = dense.run_attack(workdir, o)
    for what, why in r['notes'].items():
      print(f'attack: {what}: {why}')
    for row in r['attacks']:
      print(f'attack: {row["attack"]:<13} eps {row["eps"]:.4g}  mIoU {100 * row["miou"]:.2f}%  '
            f'pixel accuracy {100 * row["pixel_accuracy"]:.2f}%  object pixels turned '
            f'{r["target_name"]} {100 * row["target_rate"]:.1f}%')
    print(f'attack: clean mIoU {100 * r["clean_miou"]:.2f}%, pixel accuracy '
          f'{100 * r["clean_accuracy"]:.2f}% on {r["num_examples"]} examples; outputs in '
          f'{workdir}/attack/', flush=True)
    return
  r = attack_lib.run_attack(workdir, o)
  for row in r['attacks']:
    print(f'attack: {row["attack"]:<20} eps {row["eps"]:.4g}  robust accuracy '
          f'{100 * row["robust_accuracy"]:.2f}%')
  for what, why in r['notes'].items():
    print(f'attack: {what}: {why}')
  for w in r['warnings']:
    print(f'attack: WARNING: {w}')
  if 'membership' in r:
    m = r['membership']
    print(f'attack: membership AUC {m["loss_threshold"]["auc"]:.3f} (loss threshold)' +
          (f', {m["calibrated"]["auc"]:.3f} (calibrated)' if 'calibrated' in m else ''))
  print(f'attack: clean accuracy {100 * r["clean_accuracy"]:.2f}% on {r["num_examples"]} '
        f'examples; outputs in {workdir}/attack/', flush=True)


def shift(config, workdir: str) -> None:
  """`--mode=shift`: accuracy of a trained run under corruptions of its test split at five
  severities, mCE against --shift_reference, into `W/shift/`."""
  from analysis import shift as shift_lib
  util.trained_run_mode('shift', 'evaluate under shift', config, workdir)
  o = util.from_flags(options.Shift, FLAGS, 'shift_')
  r = shift_lib.run_shift(workdir, o)
  for c, v in r['corruptions'].items():
    print(f'shift: {c:<15} ' + '  '.join(f'{100 * v["accuracy"][str(s)]:6.2f}' for s in o.severities)
          + f'   mean {100 * v["mean_accuracy"]:6.2f}%' + (f'   CE {v["ce"]:.1f}' if 'ce' in v and v['ce'] is not None else ''))
  line = (f'shift: clean accuracy {100 * r["clean_accuracy"]:.2f}%, mean under corruption '
          f'{100 * r["mean_corruption_accuracy"]:.2f}% on {r["num_examples"]} test images')
  if r.get('mce') is not None:
    line += f'; mCE {r["mce"]:.1f}, relative mCE {r["relative_mce"]:.1f} (reference = 100)'
  print(line + f'; outputs in {workdir}/shift/', flush=True)
