"""Analysis of trained runs and of models: one file per capability, each a `--mode`.

A trained run flows: workdir -> store.runs.load_run -> (config, model, variables,
preprocess, test split) -> an analysis function -> `W/<mode>/results.json` + `.md` + figures.

  common.py   shared pieces: pick test examples deterministically, write the outputs
  summary.py  `--mode=summary`: parameters, MACs and receptive fields per layer of a config
  visualize.py  attribution maps and their faithfulness, projections, activation
                maximization, feature inversion (a library of batched JAX functions)
  explain.py  `--mode=explain`: visualize.py's methods on a trained run, as parts
  attack.py   `--mode=attack`: robust accuracy, fooling images, patches, transfer, privacy
              (the attacks themselves are the library attacks/)
  privacy.py  membership inference and reconstruction (attack's privacy parts)
  shift.py    `--mode=shift`: accuracy under corruptions (ImageNet-C style)
  modes.py    the analysis modes and their flags (what main.py's mode table points at)
"""
