"""``python -m hfstage`` is the ``hfstage`` command."""

import sys

from hfstage.cli import main

sys.exit(main())
