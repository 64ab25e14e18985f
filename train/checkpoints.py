"""Where `load_run` lived before the trained-run store (store/) existed; kept so scripts that
say `from train.checkpoints import load_run` keep working. New code imports store.runs."""

from store.checkpoints import load_checkpoint, load_config, load_meta  # noqa: F401
from store.runs import Run, load_run  # noqa: F401
