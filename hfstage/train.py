"""Training entry point: ``accelerate launch hfstage/train.py --config RECIPE.yaml [key=value ...]``.

Run as a file, so it uses absolute imports and holds no logic of its own.
"""

import os
import sys

# As a script, Python puts this folder first on sys.path, where hfstage's own modules (data, models,
# ...) would shadow top-level packages of the same name. The installed package is imported instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from hfstage.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
