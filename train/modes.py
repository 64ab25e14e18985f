"""The training package's modes (`--mode=train | eval | benchmark`) and their flags.

Imported by main.py before flags are parsed, so it stays light: JAX and the rest load inside
the mode functions.
"""

from __future__ import annotations

import os

from absl import flags


flags.DEFINE_integer('benchmark_steps', 30, '--mode=benchmark: timed train steps.')
flags.DEFINE_integer('eval_step', -1, '--mode=eval: the checkpoint step to evaluate '
                     '(-1 = the latest).')
FLAGS = flags.FLAGS


def train(config, workdir: str) -> None:
  """`--mode=train`: train and evaluate `config` in `workdir` (resuming when it holds a run)."""
  from train import loop
  loop.train_and_evaluate(config, workdir)


def benchmark(config, workdir: str) -> None:
  """`--mode=benchmark`: time the train step on random data; writes `workdir/benchmark.json`."""
  from train import benchmark as benchmark_lib
  benchmark_lib.run(config, workdir, FLAGS.benchmark_steps)


def evaluate(config, workdir: str) -> None:
  """`--mode=eval`: evaluates a trained workdir's checkpoint on its test split, as its training
  did (same eval step, EMA weights and flip TTA when the run used them), prints the accuracy
  and writes `workdir/eval.json`. Needs no --config: the run's own config.json is used."""
  import util
  from data import datasets
  from store import runs
  from train import distributed, steps, tasks
  util.trained_run_mode('eval', 'evaluate', config, workdir)
  run = runs.load_run(workdir, None if FLAGS.eval_step < 0 else FLAGS.eval_step)
  # A streaming run's test split is streamed again (it need not fit in memory).
  test = (datasets.Examples(run.config.dataset, run.info, 'test')
          if datasets.pipeline(run.config.dataset, run.info) == 'streaming' else run.test_split())
  mesh = distributed.mesh()
  task = tasks.get(run.config)
  source, eval_step = task.evaluation(run.config, test, run.model, run.preprocess, mesh,
                                      run.convolutions)
  variables = distributed.replicate_tree(run.variables, mesh)
  ev = steps.evaluate(eval_step, variables, source)
  result = {**task.eval_record(ev), 'step': run.step, 'num_examples': len(test),
            'evaluated_ema': run.uses_ema, 'flip_tta': bool(run.config.eval_flip_tta)}
  if distributed.is_main_process():
    util.write_json(os.path.join(workdir, 'eval.json'), result)
    print(f'{workdir} step {run.step}: {task.eval_line(ev)} on {len(test)} examples; '
          f'{os.path.join(workdir, "eval.json")}', flush=True)

