import sys
from pathlib import Path

import pytest
import torch

# Test helpers (synthetic stores, media makers) are plain modules next to the tests.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The tests' models are tiny: a second thread only adds synchronisation, which on a shared 2-core machine
    made training fixtures up to 10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
