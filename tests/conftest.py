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


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (and stall on a busy machine). Use
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


#: Small registry models, one per task (and the blind deblurrer), for CLI tests.
TINY_MODELS = {
    "converse_dncnn": {"width": 4, "num_blocks": 1},
    "converse_srresnet": {"width": 4, "num_blocks": 1},
    "converse_usrnet": {"width": 4, "num_blocks": 1, "iterations": 1},
    "conversenet": {"width": 4, "num_blocks": 1},
}


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory):
    """A folder with a state-dict ``NAME.pth`` and a sidecar ``NAME.json`` (``{"model",
    "args"}``) for every model of :data:`TINY_MODELS` (random weights, seed 0)."""
    import json

    from conversenet.models import create

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    for name, args in TINY_MODELS.items():
        torch.save(create(name, **args).state_dict(), d / f"{name}.pth")
        (d / f"{name}.json").write_text(json.dumps({"model": name, "args": args}))
    return d


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


@pytest.fixture
def package_weights(tmp_path, monkeypatch):
    """An empty stand-in for the package's ``conversenet/weights`` folder, and
    ``add(name, model, args)``: saves a freshly built ``model(**args)`` there and registers
    a package weight set for it (removed again after the test). Returns the network."""
    import hashlib

    from conversenet.models import create
    from conversenet.models import weights as W

    folder = tmp_path / "package_weights"
    folder.mkdir()
    monkeypatch.setattr(W, "_package_weights", lambda: folder)
    added = []

    def add(name, model, args, sigma=None):
        net = create(model, **args).eval()
        f = folder / f"{name}.pth"
        torch.save(net.state_dict(), f)
        W.register_weights(W.WeightSet(
            name=name, model=model, args=args, task=net.task, takes_kernel=net.takes_kernel,
            channels=net.in_channels, scale=net.scale, sigma=sigma, file=f.name, origin="package",
            sha256=hashlib.sha256(f.read_bytes()).hexdigest(), source="test"))
        added.append(name)
        return net

    add.folder = folder
    yield add
    for n in set(added) & {w.name for w in W.list_weights()}:
        W.unregister_weights(n)
