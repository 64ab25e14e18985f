"""Architecture and hyperparameter sweeps: declare trials, run them (local processes or a SLURM
job array), gather their results.

  declare.py  building trial lists in sweep files and from `--sweep` flags (no heavy imports,
              so config files can use it while flags are parsed)
  expand.py   trial lists -> concrete trials: configs, budget-solved widths, params and MACs
  runner.py   one trial's directory and the process that runs it (what a SLURM task runs)
  launch.py   `--mode=sweep`: local worker processes or `sbatch --array`, then a summary
  report.py   `--mode=report`: results.csv, results.md and plots
"""

from sweeps.declare import axis, budget, product, zipped  # noqa: F401
