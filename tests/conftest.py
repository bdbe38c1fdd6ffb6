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


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model's matmuls gain nothing from threads, and on a shared CPU the thread pool's contention
    can make them 100x slower. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
