from pathlib import Path

import pytest

from tests.support.data import DATA


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"test fixtures not found at {DATA}: set DCSAM_TEST_DATA (scripts/fetch_test_data.py makes one)")
    return DATA
