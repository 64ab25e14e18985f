"""Architecture and hyperparameter sweeps: declare trials, run them (local processes or a SLURM
job array), gather their results.

  (configs/declare.py builds the trial lists of sweep files and `--sweep` flags: it sits
   with the configs, below every layer, so sweep files import nothing above them; the names
   are re-exported here for sweep files that say `from sweeps import product`)
  expand.py   trial lists -> concrete trials: configs, budget-solved widths, params and MACs
  runner.py   one trial's directory and the process that runs it (what a SLURM task runs)
  launch.py   `--mode=sweep`: local worker processes or `sbatch --array`, then a summary
  report.py   `--mode=report`: results.csv, results.md and plots
"""

from configs.declare import axis, budget, product, zipped  # noqa: F401
