"""The trained-run store: a workdir's checkpoints and config read back (checkpoints.py), the one
builder of a run's model, and runs as objects for the modes that probe them (runs.py). Below
train/: training writes through it, and every application reads trained runs from it."""
