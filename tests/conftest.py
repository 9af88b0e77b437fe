import os

import pytest
import torch

from conversenet import paths

# Several tests compare runs made in separate processes bit for bit (training resumed after a
# kill vs one uninterrupted run, torchrun ranks vs one process). The FFT policy measures which
# implementation is fastest in each process, and two processes may choose differently (same
# DFT, different float rounding). Pin one implementation for the suite; subprocesses inherit
# it. tests/test_fft_policy.py and the bench --explain test clear it to test the measuring.
os.environ.setdefault("CONVERSENET_FFT", "torch")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(scope="session")
def data_root():
    root = paths.data_root()
    if root is None or not root.is_dir():
        pytest.skip("reference data not found: set CONVERSENET_DATA or place ../shared/data")
    return root


@pytest.fixture(scope="session")
def official_dir():
    d = paths.default_official_weights_dir()
    if d is None or not d.is_dir():
        pytest.skip("official checkpoints not found: set CONVERSENET_WEIGHTS_DIR")
    os.environ.setdefault("CONVERSENET_WEIGHTS_DIR", str(d))
    return d
