"""The model zoo. `models.create(config.model, num_classes, dtype)` builds any registered model."""

from models.registry import create, names, register  # noqa: F401
from models import simplenet  # noqa: F401  (registers its variants)
