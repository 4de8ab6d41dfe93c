"""Figure details: colours that tell optimizers apart and stay fixed, axis limits that clip no
min-max band, accuracy zoomed to the data, labelled log ticks near the final values."""

from __future__ import annotations

import itertools

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from steepest.bench.plots import _accuracy_limits, _colors, _log_ticks, _loss_limits  # noqa: E402
from steepest.optim.build import OPTIMIZERS  # noqa: E402


def _distance(a: str, b: str) -> float:
    return float(np.linalg.norm(np.subtract(to_rgb(a), to_rgb(b))))


def test_colours_are_distinct_and_fixed_per_optimizer():
    every = _colors([n for n, r in OPTIMIZERS.items() if not r.variant_of])  # not variants other tests registered
    assert len(set(every.values())) == len(every)  # one figure with all registered optimizers
    assert _distance(every["adamw"], every["muon"]) > 0.5  # the main comparison: far apart in RGB
    for a, b in itertools.combinations(["adamw", "sgd", "muon", "neon-nuclear", "neon-fstar"], 2):
        assert _distance(every[a], every[b]) > 0.3, (a, b)
    for subset in (["muon", "adamw"], ["adamw", "neon-fstar", "sgd"], ["muon"]):
        assert _colors(subset) == {n: every[n] for n in subset}  # same colour in every figure
    assert len(set(_colors(["adamw", "someone-else", "other-peer"]).values())) == 3


@pytest.mark.parametrize("lo, hi", [(0.08, 2.4), (0.9, 1.4), (1.46, 1.62), (3e-4, 30.0)])
def test_log_ticks_are_round_and_at_least_four(lo, hi):
    ticks = _log_ticks(lo, hi)
    assert len(ticks) >= 4 and all(lo <= t <= hi for t in ticks)
    assert ticks == sorted(ticks)
    for t in ticks:  # round numbers: at most three significant digits
        assert float(f"{t:.3g}") == pytest.approx(t, rel=1e-9)


def _axis():
    fig, ax = plt.subplots()
    return fig, ax


def test_loss_limits_keep_every_band_and_label_the_final_values():
    fig, ax = _axis()
    steps = np.arange(6.0)
    mean = np.array([2.3, 1.9, 1.7, 1.6, 1.55, 1.5])
    low, high = mean * 0.97, mean * 1.04
    diverging = np.array([2.3, 3.0, 9.0, 40.0, 200.0, 900.0])
    for y in (mean, diverging):
        ax.plot(steps, y)
    _loss_limits(ax, [[mean, low, high], [diverging]])
    bottom, top = ax.get_ylim()
    assert bottom <= low.min() and top >= high.max()  # the bands are not clipped
    assert top < 3.0  # the diverging run does not flatten the others
    labelled = [t for t in ax.get_yticks() if bottom <= t <= top]
    assert len(labelled) >= 4
    assert min(abs(np.log(labelled) - np.log(mean[-1]))) < np.log(1.3)  # a label near the final value
    plt.close(fig)


def test_accuracy_limits_zoom_to_the_data_without_clipping_bands():
    fig, ax = _axis()
    steps = np.arange(8.0)
    mean = np.array([0.93, 0.95, 0.96, 0.97, 0.975, 0.98, 0.983, 0.985])
    low, high = mean - 0.01, np.minimum(mean + 0.008, 0.995)
    ax.plot(steps, mean)
    _accuracy_limits(ax, [[mean, low, high]])
    bottom, top = ax.get_ylim()
    assert bottom <= low.min() and top >= high.max()
    assert bottom > 0.8 and top < 0.999  # zoomed: not 0-1
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    share = (logit(0.99) - logit(0.96)) / (logit(top) - logit(bottom))
    assert share > 0.3  # 0.96-0.99 is a large part of the axis, not a strip
    ticks = [t for t in ax.get_yticks() if bottom <= t <= top]
    assert len(ticks) >= 3
    gaps = np.diff(logit(np.array(sorted(ticks))))
    assert gaps.min() > 0.05 * (logit(top) - logit(bottom))  # labels do not overlap
    plt.close(fig)


def test_environment_and_figure_titles_name_the_hardware():
    """Every run records the CPU's model and bf16 kind (or the GPU), and the figures' titles name it."""
    from steepest.bench.config import describe_hardware, environment

    env = environment("cpu")
    assert env["cpu_kind"] in ("AMX", "AVX512-BF16", "AVX2", "other") and env["cpu_model"]
    line = describe_hardware(env)
    assert env["cpu_model"] in line and env["cpu_kind"] in line and env["torch"] in line
    gpu = describe_hardware({"gpu": "NVIDIA H100 80GB HBM3", "cuda": "12.8", "torch": "2.13.0"})
    assert "H100" in gpu and "12.8" in gpu


@pytest.mark.parametrize("lo, hi", [(0.30, 0.66), (0.55, 0.60), (0.96, 0.99), (0.2, 0.95)])
def test_accuracy_ticks_are_round_numbers(lo, hi):
    """At least three labelled ticks, each a round number (≤ 3 decimals), inside the zoomed limits."""
    fig, ax = plt.subplots()
    _accuracy_limits(ax, [[np.linspace(lo, hi, 20)]])
    ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    assert len(ticks) >= 3
    assert all(abs(t * 1000 - round(t * 1000)) < 1e-6 for t in ticks), ticks
    plt.close(fig)


def test_a_figure_of_runs_from_two_machines_names_both(monkeypatch):
    """A figure mixing runs recorded on two machines names each machine and its optimizers."""
    import steepest.bench.plots as plots

    class FakeRun:
        def __init__(self, optimizer, cpu):
            self.config = type("Config", (), {"optimizer": optimizer})()
            self.env = {"cpu_model": cpu, "cpu_kind": "AVX2", "cpu_count": 2, "torch": "2.13.0", "torch_threads": 1}

    monkeypatch.setattr(plots, "run_env", lambda run: run.env)
    one = plots.hardware_of([FakeRun("muon", "Xeon"), FakeRun("adamw", "Xeon")])
    two = plots.hardware_of([FakeRun("muon", "Xeon"), FakeRun("dion", "EPYC"), FakeRun("adamw", "Xeon")])
    assert "Xeon" in one and "\n" not in one
    assert "several machines" in two and "Xeon" in two and "EPYC" in two
    assert "EPYC (AVX2), 2 cores, torch 2.13.0, 1 threads: dion" in two and "adamw, muon" in two
