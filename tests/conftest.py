import os
from pathlib import Path

import pytest

# The fixtures (public data, not in the repository): DCSAM_TEST_DATA, else a developer's ../shared/data.
# Anywhere else: python scripts/fetch_test_data.py, then export DCSAM_TEST_DATA=<the folder it prints>.
DATA = Path(
    os.environ.get("DCSAM_TEST_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
).expanduser()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"test fixtures not found at {DATA}: set DCSAM_TEST_DATA (scripts/fetch_test_data.py makes one)")
    return DATA
