"""Suite-wide settings.

Tests run torch on one intra-op thread: on a 2-core machine, small models with two
threads (plus a loader or a second test process) spend most of their time waiting on
each other, and one thread also makes CPU results reproducible run to run.
"""

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # test helper modules

import pytest  # noqa: E402


@pytest.fixture
def one_thread():
    """Torch on one intra-op thread for the test, restored after (training tests whose
    recorded numbers depend on it; another test may have changed the count)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
