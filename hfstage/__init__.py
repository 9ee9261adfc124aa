"""hfstage: staged (curriculum) training on transformers.Trainer and accelerate.

Importing the package registers hfstage's models with the transformers Auto classes, so
``AutoModel.from_pretrained(stage_dir)`` works on any saved stage.
"""

__version__ = "0.1.0"

from hfstage import models  # noqa: E402,F401  (registers the Auto classes)
