"""Shared fixtures: deterministic, single-threaded torch for reproducible CPU tests."""
import os

import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ.get("TEST_TORCH_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
