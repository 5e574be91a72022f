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
