"""The model zoo. `models.create(config.model, num_classes, dtype)` builds any registered model.

One file per family; importing it registers its named variants (see each file's docstring).
"""

from models.registry import create, names, register  # noqa: F401
from models import (alexnet, allcnn, densenet, googlenet, lenet, nin, resnet,  # noqa: F401
                    simplenet, simpnet, squeezenet, vgg)
from models import dense  # noqa: F401,E402  (after the backbones it reuses)
