"""`conversenet bench`: the baseline is the paper's Algorithm 1 (checked against dense solves
written independently), the floor operator keeps shapes, and the command's tables, JSON and
errors hold together. Timings themselves are never asserted (no wall-clock limits)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from _reference import dense_converse
from conversenet import _tuning
from conversenet import bench
from conversenet.nn import Converse2d


@pytest.mark.parametrize("scale,padding,mode", [(1, 0, "circular"), (1, 2, "circular"), (2, 2, "replicate"),
                                                (3, 1, "reflect")])
def test_baseline_algorithm1_equals_dense_solve(scale, padding, mode):
    g = torch.Generator().manual_seed(scale * 10 + padding)
    y = torch.randn(1, 2, 6, 5, generator=g, dtype=torch.float64)
    k = torch.rand(1, 2, 3, 3, generator=g, dtype=torch.float64)
    lam = 0.05
    out = bench.baseline_converse2d(y, k, lam, scale, padding, mode)
    ref = dense_converse(y.numpy(), k.numpy(), np.full((1, 2), lam), scale, padding, mode)
    assert out.shape == (1, 2, 6 * scale, 5 * scale)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-9, atol=1e-9)


def test_with_operator_swaps_a_copy_and_shares_parameters():
    layer = Converse2d(3, 3, scale=2, padding=2).double().eval()
    y = torch.randn(1, 3, 7, 6, dtype=torch.float64)
    ours = layer(y)
    base = bench.with_operator(layer, "baseline")(y)
    floor = bench.with_operator(layer, "floor")(y)
    assert torch.allclose(base, ours, atol=1e-9)
    assert floor.shape == ours.shape and not torch.allclose(floor, ours)
    assert torch.equal(layer(y), ours)  # the layer itself is untouched

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), Converse2d(3, 3, padding=2)).double().eval()
    swapped = bench.with_operator(net, "baseline")
    assert isinstance(net[1], Converse2d) and isinstance(swapped[1], bench.OperatorSwap)
    assert swapped[1].layer.weight is net[1].weight and swapped[0].weight is net[0].weight
    with torch.no_grad():
        assert torch.allclose(swapped(y), net(y), atol=1e-9)
    with pytest.raises(ValueError, match="operator"):
        bench.with_operator(net, "nope")


def test_free_operator_is_identity_or_nearest_upsampling():
    """The "free" operator (the bound rows: no operator work) keeps the layer's output shape:
    the input itself at s = 1, nearest upsampling at s > 1."""
    y = torch.randn(1, 3, 5, 4, dtype=torch.float64)
    same = bench.with_operator(Converse2d(3, 3, padding=2).double(), "free")(y)
    assert torch.equal(same, y)
    up = bench.with_operator(Converse2d(3, 3, scale=2, padding=2).double(), "free")(y)
    assert up.shape == (1, 3, 10, 8)
    assert torch.equal(up[..., ::2, ::2], y) and torch.equal(up[..., 1::2, 1::2], y)


@pytest.mark.parametrize("case", ["eval", "train"])
def test_network_rows_include_the_free_operator_bound(case):
    """Network rows time, beside the baseline and ours, the same network with a free
    operator: the most that any Converse2d speed-up can give that network."""
    make = bench._model_eval_case if case == "eval" else bench._model_train_case
    impls = make("converse_dncnn", (2, 1, 12, 12), torch.float32, torch.device("cpu"))
    kinds = [i.kind for i in impls]
    assert kinds.count("baseline") == 1 and kinds.count("bound") == 1 and "ours" in kinds
    for impl in impls:  # every implementation builds and runs one call
        impl.make()()


def _args(**kw):
    import argparse
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    a = p.parse_args([])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


@pytest.mark.parametrize("kw,match", [
    ({"rows": "nope"}, "--rows"), ({"rows": ""}, "--rows"), ({"threads": 0}, "--threads"),
    ({"repeat": 0}, "--repeat"), ({"device": "tpu"}, "--device"),
])
def test_bad_arguments_are_named(kw, match):
    with pytest.raises(bench.BenchError, match=match):
        bench.run_from_args(_args(**kw))


def test_up_row_runs_and_reports_consistent_ratios(tmp_path, capsys):
    n = torch.get_num_threads()
    rc = bench.run_from_args(_args(rows="up", threads=1, repeat=1, warmup=1, budget=1.0, quiet=True,
                                   json=str(tmp_path / "b.json"), markdown=str(tmp_path / "b.md")))
    assert rc == 0 and torch.get_num_threads() == n
    table = capsys.readouterr().out
    data = json.loads((tmp_path / "b.json").read_text())
    res = data["results"]
    kinds = [r["kind"] for r in res]
    assert kinds.count("baseline") == 1 and kinds.count("floor") == 1 and "ours" in kinds
    base = next(r for r in res if r["kind"] == "baseline")
    floor = next(r for r in res if r["kind"] == "floor")
    for r in res:
        assert r["median_s"] > 0 and len(r["times_s"]) >= 1
        assert math.isclose(r["speedup"], base["median_s"] / r["median_s"], rel_tol=1e-9)
        if r["kind"] == "ours":
            assert math.isclose(r["vs_floor"], r["median_s"] / floor["median_s"], rel_tol=1e-9)
        assert r["impl"] in table
    if bench._procfs_ok():  # Linux: peaks measured in the worker process, one per implementation
        assert all(r["peak_bytes"] is not None and r["peak_bytes"] > 0 for r in res)
        assert "worker process" in data["memory_method"]
    md = (tmp_path / "b.md").read_text()
    assert "## Machine" in md and "| implementation |" in md


def test_header_explain_and_aliases(tmp_path, capsys, monkeypatch):
    """The output starts with the CPU (vendor, model, ISA, threads, FFT libraries); --explain
    lists the FFT decisions; row aliases expand (fork -> the six fork-shape rows)."""
    from conversenet.functional import _fft_policy

    monkeypatch.setattr(_tuning, "FFT_BUDGET_S", 0.0)
    monkeypatch.delenv(_fft_policy.ENV, raising=False)  # conftest pins it; here we measure
    rc = bench.run_from_args(_args(rows="fork_k3_s1", threads=1, repeat=1, warmup=1, budget=1.0,
                                   quiet=True, explain=True, markdown=str(tmp_path / "b.md"),
                                   json=str(tmp_path / "b.json"), no_memory=True))
    assert rc == 0
    out = capsys.readouterr().out
    head = out.split("\n")
    for key in ("cpu", "cpu_vendor", "isa", "threads", "fft"):
        assert any(line.startswith(f"# {key}: ") for line in head[:15]), key
    assert "torch.fft: " in out and "scipy.fft: " in out
    assert "1x3x128x128, k=3" in out
    assert "FFT policy" in out and "132x132" in out  # the padded 128 + 2*2 transforms
    assert "FFT policy" in (tmp_path / "b.md").read_text()
    data = json.loads((tmp_path / "b.json").read_text())
    assert any(d["size"] == "132x132" for d in data["fft_decisions"])
    forks = [r for r in bench.ROWS if r.startswith("fork_")]
    assert sorted(forks) == sorted(f"fork_k{k}_s{s}" for k in (3, 5, 7) for s in (1, 2))
    assert bench.ROW_ALIASES["fork"].split(",") == forks and bench.ROW_ALIASES["train"] == "dncnn_train"


def test_cpuinfo_isa():
    info = bench._cpuinfo()
    assert set(info) == {"vendor", "model", "isa"} and info["model"]


def test_bench_twice_leaves_threads_and_the_library_unchanged(capsys):
    """Acceptance (issue 13): `conversenet bench` run twice in one process leaves the torch
    thread count and Converse2d.forward as they were (no class patching, threads put back)."""
    from conversenet.cli import main

    threads, forward = torch.get_num_threads(), Converse2d.forward
    other = 2 if threads == 1 else 1
    for memory in ([], ["--no-memory"]):
        rc = main(["bench", "--rows", "fork_k3_s1", "--threads", str(other), "--repeat", "1",
                   "--budget", "0.2", "--quiet", *memory])
        assert rc == 0
        assert torch.get_num_threads() == threads
        assert Converse2d.forward is forward
    out = capsys.readouterr().out
    assert out.count("baseline (Algorithm 1)") == 2 and "FAILED" not in out


def test_failed_row_is_reported_and_exit_code_is_nonzero(monkeypatch, capsys):
    def broken(dtype, device):
        raise RuntimeError("builder exploded")

    def half_broken(dtype, device):
        impls = bench.ROWS["fork_k3_s1"][1](dtype, device)
        impls[1] = bench._Impl("exploding impl", "ours", lambda: (_ for _ in ()).throw(MemoryError("no room")))
        return impls

    monkeypatch.setitem(bench.ROWS, "broken", ("a broken row", broken))
    monkeypatch.setitem(bench.ROWS, "half", ("a half-broken row", half_broken))
    n = torch.get_num_threads()
    rc = bench.run_from_args(_args(rows="broken,half", threads=1, repeat=1, budget=0.2, quiet=True,
                                   no_memory=True))
    assert torch.get_num_threads() == n
    assert rc == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "builder exploded" in captured.out
    assert "exploding impl" in captured.out and "MemoryError: no room" in captured.out
    assert "2 implementation(s) FAILED" in captured.err
    # the rest of the half-broken row still ran, and its ratios skip the failed entry
    assert "baseline (Algorithm 1)" in captured.out


class _FakeClock:
    """A clock that moves only when an implementation says how long its call took."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _timed_impls(clock, events, costs, fail_on=None):
    """One fake implementation per name in ``costs``: each call logs ``(name, n)`` in
    ``events`` and advances ``clock`` by its cost; ``fail_on``: (name, n) raises there."""
    def make(name):
        def build():
            events.append(("make", name))
            count = [0]

            def call():
                count[0] += 1
                events.append((name, count[0]))
                if fail_on == (name, count[0]):
                    raise RuntimeError(f"{name} broke")
                clock.t += costs[name]
            return call
        return build
    kinds = ["baseline", "ours", "floor"]
    return [bench._Impl(name, kinds[i % 3], make(name)) for i, name in enumerate(costs)]


def _run_fake_row(monkeypatch, costs, repeat, warmup, budget, fail_on=None):
    clock, events = _FakeClock(), []
    monkeypatch.setitem(bench.CLOCKS, "fake", clock)
    monkeypatch.setitem(bench.ROWS, "fake", ("a fake row", lambda d, dev: _timed_impls(clock, events, costs, fail_on)))
    res = bench.run_bench(["fake"], threads=1, repeat=repeat, warmup=warmup, budget_s=budget, clock="fake",
                          memory=False)
    return {r.impl: r for r in res}, events


def test_first_calls_of_all_then_timed_calls_in_turns(monkeypatch):
    """Every implementation makes its first call before any is timed; warm-up and timed
    calls then take turns, one call of each per round."""
    res, events = _run_fake_row(monkeypatch, {"a": 1.0, "b": 2.0, "c": 0.5}, repeat=3, warmup=2, budget=100)
    assert events[:6] == [("make", "a"), ("a", 1), ("make", "b"), ("b", 1), ("make", "c"), ("c", 1)]
    rounds = [e[0] for e in events[6:]]
    assert rounds == ["a", "b", "c"] * 4  # one warm-up round, then three timed rounds
    assert [res[k].times_s for k in "abc"] == [[1.0] * 3, [2.0] * 3, [0.5] * 3]
    assert res["a"].speedup == 1.0 and res["b"].speedup == 0.5 and res["b"].vs_floor == 4.0
    assert not any(r.cold for r in res.values())


def test_budget_stops_each_implementation_on_its_own(monkeypatch):
    res, _ = _run_fake_row(monkeypatch, {"slow": 1.0, "fast": 0.1}, repeat=5, warmup=1, budget=1.5)
    assert len(res["slow"].times_s) == 2  # 1.0, then 2.0 > 1.5: no third call
    assert len(res["fast"].times_s) == 5


def test_a_first_call_over_the_budget_times_the_whole_case_cold(monkeypatch):
    res, events = _run_fake_row(monkeypatch, {"a": 0.2, "b": 3.0}, repeat=4, warmup=2, budget=1.0)
    assert all(r.cold for r in res.values())
    assert res["a"].times_s == [0.2] and res["b"].times_s == [3.0]
    assert len([e for e in events if e[0] != "make"]) == 2  # the first calls only


def test_an_implementation_failing_in_a_later_round_is_dropped(monkeypatch):
    res, events = _run_fake_row(monkeypatch, {"a": 1.0, "b": 1.0}, repeat=4, warmup=1, budget=100,
                                fail_on=("b", 3))
    assert res["b"].error == "RuntimeError: b broke" and res["b"].peak_bytes is None
    assert len(res["a"].times_s) == 4 and res["a"].error is None
    assert max(n for name, n in events if name == "b") == 3  # no call after the failure
