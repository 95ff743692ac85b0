"""``python -m dcsam.cli`` (e.g. under torchrun) runs the same command line as ``dcsam``."""

import sys

from . import main

sys.exit(main())
