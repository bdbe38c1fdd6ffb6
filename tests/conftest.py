"""Shared fixtures. Tests read the offline dataset mirror from BAYESPEFT_DATA_DIR, default ../shared/datasets."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def data_dir() -> str:
    d = os.environ.get("BAYESPEFT_DATA_DIR") or str(ROOT.parent / "shared" / "datasets")
    if not Path(d).is_dir():
        pytest.fail(f"dataset mirror not found at {d}: set BAYESPEFT_DATA_DIR")
    return d
