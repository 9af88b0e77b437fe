"""Global state you can see and free (issue 13, item 4): every cache of the package is listed
by conversenet.caches(), bounded, and freed by conversenet.clear_caches(); the package writes
nothing onto a user's module and leaves process-wide settings as it found them."""

from __future__ import annotations

import functools
import importlib
import pkgutil

import torch

import conversenet
from conversenet import _caches, _tuning
from conversenet.functional import _fft_policy, converse2d
from conversenet.nn import Converse2d, ConverseBlock


def _package_modules():
    for info in pkgutil.walk_packages(conversenet.__path__, "conversenet."):
        if info.name.startswith(("conversenet.web", "conversenet.__main__")):
            continue  # optional extra (gradio); no caches of this kind there
        try:
            yield importlib.import_module(info.name)
        except ImportError:
            continue


def test_every_lru_cache_of_the_package_is_listed():
    found = {}
    for mod in list(_package_modules()):
        for name, obj in vars(mod).items():
            if isinstance(obj, functools._lru_cache_wrapper) and getattr(obj, "__module__", None) == mod.__name__:
                found[id(obj)] = f"{mod.__name__}.{name}"
                assert obj.cache_info().maxsize is not None, f"{mod.__name__}.{name} is unbounded"
    listed = {id(obj) for c in _caches.CACHES.values() for obj in c.objects}
    assert found and set(found) <= listed, sorted(found[i] for i in set(found) - listed)
    assert {"converse2d-filters", "workspace", "fft-policy", "restore-models",
            "restore-memory-estimates"} <= set(_caches.CACHES)


def test_clear_caches_frees_everything_and_results_do_not_change():
    import conversenet.restore  # noqa: F401  (its caches are listed too)

    gen = torch.Generator().manual_seed(0)
    layer = Converse2d(4, 3, scale=2, padding=2).eval()
    block = ConverseBlock(64).eval()
    x, xb = torch.randn(1, 4, 12, 10, generator=gen), torch.randn(1, 64, 72, 72, generator=gen)
    with torch.no_grad():
        first = (layer(x), block(xb), converse2d(x, torch.rand(1, 4, 3, 3, generator=gen), 0.1, 2, 2))
    held = {c["name"]: c["entries"] for c in conversenet.caches()}
    for name in ("converse2d-filters", "workspace", "solver-tables", "upsolve-tables"):
        assert held[name] > 0, name
    assert all({"name", "holds", "bound", "entries"} <= set(c) for c in conversenet.caches())

    conversenet.clear_caches()
    assert sum(c["entries"] for c in conversenet.caches()) == 0
    assert layer._cache is None
    with torch.no_grad():
        assert torch.equal(layer(x), first[0]) and torch.equal(block(xb), first[1])


def test_workspace_of_every_thread_is_freed():
    import threading

    block = ConverseBlock(64).eval()
    xb = torch.randn(1, 64, 72, 72)
    done = threading.Event()
    release = threading.Event()

    def worker():
        with torch.no_grad():
            block(xb)
        done.set()
        release.wait(30)  # the thread (and its buffers) stays alive while we look

    t = threading.Thread(target=worker)
    t.start()
    try:
        done.wait(30)
        with torch.no_grad():
            block(xb)
        entries = next(c["entries"] for c in conversenet.caches() if c["name"] == "workspace")
        assert entries >= 4  # this thread's and the worker's
        conversenet.clear_caches()
        assert next(c["entries"] for c in conversenet.caches() if c["name"] == "workspace") == 0
    finally:
        release.set()
        t.join()


def test_bounded_cache_and_restore_model_cache_bound(monkeypatch):
    c = _caches.BoundedCache(2)
    for i in range(5):
        c.put(i, str(i))
    assert len(c) == 2 and c.get(0) is None and c.get(4) == "4"
    c.get(3)
    c.put(5, "5")  # 3 was used last: 4 goes
    assert c.get(4) is None and c.get(3) == "3"

    import conversenet.restore as R

    monkeypatch.setattr(_tuning, "RESTORE_MODEL_CACHE_SIZE", 1)
    R._MODEL_CACHE.put(("a",), object())
    R._MODEL_CACHE.put(("b",), object())
    assert len(R._MODEL_CACHE) == 1
    conversenet.clear_caches()
    assert len(R._MODEL_CACHE) == 0


def test_fft_policy_decisions_are_bounded(monkeypatch):
    monkeypatch.setattr(_tuning, "FFT_MAX_DECISIONS", 3)
    saved = _fft_policy.snapshot()
    try:
        _fft_policy.clear()
        _fft_policy.adopt({f"rfft2|{n}x{n}|b1|float32|t1|g0": {"path": "torch", "ms": {"torch": 1.0}}
                           for n in range(10, 16)})
        _fft_policy.adopt({"junk": {"path": "torch"}, "rfft2|1x1|b1|float32|t1|g0": {"path": "nope", "ms": {}}})
        keys = [d["size"] for d in _fft_policy.decisions()]
        assert sorted(keys) == ["13x13", "14x14", "15x15"]  # the newest three; invalid ones ignored
    finally:
        _fft_policy.clear()
        _fft_policy.adopt(saved)


def test_memory_estimate_writes_nothing_onto_the_model():
    import gc

    import conversenet.inference as I
    from conversenet.models import create

    def held():
        return next(c["entries"] for c in conversenet.caches() if c["name"] == "restore-memory-estimates")

    gc.collect()
    start = held()
    net = create("converse_dncnn", width=8, num_blocks=1).eval()
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 3, 3, padding=1))
    for m in (net, plain):
        before = set(vars(m))
        first = I.estimate_bytes_per_pixel(m)
        assert set(vars(m)) == before  # no private attribute added to the user's module
        assert I.estimate_bytes_per_pixel(m) is first  # cached elsewhere (weakly), also for a plain module
    assert held() == start + 2
    del net, plain, m
    gc.collect()
    assert held() == start  # freed with the networks
