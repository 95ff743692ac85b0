"""Where the public test fixtures are (not in the repository), for tests and scripts alike:
``DCSAM_TEST_DATA``, else a developer's ``../shared/data``. Anywhere else: ``python
scripts/fetch_test_data.py``, then ``export DCSAM_TEST_DATA=<the folder it prints>``."""

from __future__ import annotations

import os
from pathlib import Path

DATA = Path(
    os.environ.get("DCSAM_TEST_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data"
).expanduser()
