"""Analysis of trained runs and of models: one file per capability, each a `--mode`.

A trained run flows: workdir -> train.runs.load_run -> (config, model, variables,
preprocess, test split) -> an analysis function -> `W/<mode>/results.json` + `.md` + figures.

  common.py   shared pieces: pick test examples deterministically, write the outputs
  summary.py  `--mode=summary`: parameters, MACs and receptive fields per layer of a config
  explain.py  `--mode=explain`: attribution maps and their faithfulness, projections,
              activation maximization, feature inversion
  attack.py   FGSM and PGD (the attack mode builds on it)
  modes.py    the analysis modes and their flags (what main.py's mode table points at)
"""
