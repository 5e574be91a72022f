"""Suite-wide settings.

Tests run torch on one intra-op thread: on a 2-core machine, small models with two
threads (plus a loader or a second test process) spend most of their time waiting on
each other, and one thread also makes CPU results reproducible run to run. C kernels
build into a folder of the session (``private_native_cache``).
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


@pytest.fixture(scope="session", autouse=True)
def private_native_cache(tmp_path_factory):
    """C kernels (diffret_cli.native) build into a folder of this session, not the user's
    cache: no test depends on, or leaves anything in, ~/.cache. Subprocesses inherit it."""
    import os

    from diffret_cli import native

    old = os.environ.get(native.CACHE_ENV)
    os.environ[native.CACHE_ENV] = str(tmp_path_factory.mktemp("native-cache"))
    yield
    if old is None:
        os.environ.pop(native.CACHE_ENV, None)
    else:
        os.environ[native.CACHE_ENV] = old
