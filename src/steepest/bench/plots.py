"""Figures from saved runs (matplotlib, Agg backend, PNG and SVG).

Per task, under ``OUT/<task>/``:

- ``validation.{png,svg}``: validation loss (log axis) and accuracy (logit axis, zoomed to the
  data) against step and against wall-clock training time, one line per optimizer setting: the
  mean over seeds with a min-max band that the axis limits never clip; an optimizer has the same
  colour in every figure;
- ``train_loss.{png,svg}``: smoothed training loss against step and time, likewise;
- ``sweep.{png,svg}`` when the task has sweeps: final validation loss against learning rate.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from .config import describe_hardware
from .results import Curve, Run, curve, describe_group, group_runs, load_runs, run_env, task_dir

__all__ = ["plot_results", "plot_task"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# An optimizer's colour is fixed by its registration (``Registration.color``, the same in every
# figure): Okabe-Ito's colour-blind-safe palette first, then tab10's remaining hues, so that the
# baseline families differ in hue and lightness (AdamW black, SGD olive, Muon vermillion, Neon
# blue/green). Optimizers without one get a spare colour by their place in the registry.
SPARE_COLORS = ["#7f7f7f", "#17becf", "#e377c2", "#2ca02c", "#1f77b4", "#ff7f0e", "#9467bd", "#d62728", "#8c564b"]


def _colors(names: list[str]) -> dict[str, str]:
    """One colour per optimizer: its registered colour (the same in every figure), others from
    :data:`SPARE_COLORS` by their place in the registry; two names of one figure never share a colour."""
    from steepest.optim.registry import OPTIMIZERS

    order = {n: i for i, n in enumerate(OPTIMIZERS)}
    named = {n: r.color for n, r in OPTIMIZERS.items() if r.color}
    out: dict[str, str] = {}
    for n in sorted(set(names), key=lambda n: (n not in named, order.get(n, len(order)), n)):
        c = named.get(n) or SPARE_COLORS[order.get(n, len(order)) % len(SPARE_COLORS)]
        if c in out.values():
            c = next((x for x in SPARE_COLORS if x not in out.values()), c)
        out[n] = c
    return out


def _ema(v: np.ndarray, beta: float) -> np.ndarray:
    """Exponential moving average with bias correction (no lag towards the first value)."""
    out, acc = np.empty_like(v), 0.0
    for i, x in enumerate(v):
        acc = beta * acc + (1 - beta) * x
        out[i] = acc / (1 - beta ** (i + 1))
    return out


def _band(ax, x: np.ndarray, c: Curve, color: str, label: str, extents: dict) -> None:
    """The mean line and, over several seeds, the min-max band; records the drawn values in
    ``extents[ax]`` so that the axis limits can include every band."""
    ax.plot(x, c.mean, color=color, label=label, lw=1.6)
    series = [c.mean]
    if len(c.per_seed) > 1:
        ax.fill_between(x, c.low, c.high, color=color, alpha=0.2, lw=0)
        series += [c.low, c.high]
    extents.setdefault(ax, []).append(series)


FIGURE_FORMATS = ("png", "svg")


def _save(fig, folder: Path, stem: str, formats: tuple[str, ...]) -> list[Path]:
    paths = []
    for ext in formats:
        p = folder / f"{stem}.{ext}"
        fig.savefig(p, dpi=130 if ext == "png" else None, bbox_inches="tight")
        paths.append(p)
    return paths


def hardware_of(runs: list[Run]) -> str:
    """The hardware of the runs drawn in one figure (:func:`describe_hardware`); where they ran on
    several machines, one line per machine naming its optimizers."""
    machines: dict[str, set[str]] = {}
    for run in runs:
        machines.setdefault(describe_hardware(run_env(run)), set()).add(run.config.optimizer)
    if len(machines) == 1:
        return next(iter(machines))
    lines = [textwrap.fill(f"{hw}: {', '.join(sorted(opts))}", 160, subsequent_indent="    ") for hw, opts in machines.items()]
    return "runs on several machines:\n" + "\n".join(lines)


def plot_task(
    folder: Path, task: str, runs: list[Run], sweeps: list[Run], prefix: str = "", formats: tuple[str, ...] = FIGURE_FORMATS
) -> list[Path]:
    """Write the figures of one task into ``folder`` (file names start with ``prefix``), one file
    per format in ``formats``; returns their paths."""
    plt = _pyplot()
    written: list[Path] = []
    groups = group_runs(runs)
    if groups:
        colors = _colors([opt for opt, _ in groups])
        styles = _line_styles(list(groups))
        n_seeds = max(len(g) for g in groups.values())
        seeds_note = f"mean and min-max over {n_seeds} seeds" if n_seeds > 1 else "one seed"
        seeds_note += f"; {hardware_of(runs)}"
        fig = _validation_figure(plt, groups, colors, styles)
        fig.suptitle(f"{task}: {seeds_note}")
        written += _write(plt, fig, folder, prefix + "validation", formats)
        fig = _train_loss_figure(plt, groups, colors, styles)
        fig.suptitle(f"{task}: training loss, {seeds_note}")
        written += _write(plt, fig, folder, prefix + "train_loss", formats)
    if sweeps:
        fig = _sweep_figure(plt, group_runs(sweeps))
        fig.axes[0].set_title(f"{task}: learning-rate sweep\n{hardware_of(sweeps)}", fontsize=9)
        written += _write(plt, fig, folder, prefix + "sweep", formats)
    return written


LINE_STYLES = ("-", "--", ":", "-.")


def _line_styles(keys: list[tuple[str, float]]) -> dict[tuple[str, float], str]:
    """The line style of each ``(optimizer, lr)``: solid, unless some optimizer has several lrs,
    which then differ by style (in lr order)."""
    multi_lr = len({lr for _, lr in keys}) > len({opt for opt, _ in keys})
    by_opt: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for key in sorted(keys):
        by_opt[key[0]].append(key)
    return {key: LINE_STYLES[by_opt[key[0]].index(key) % len(LINE_STYLES)] if multi_lr else "-" for key in keys}


def _write(plt, fig, folder: Path, stem: str, formats: tuple[str, ...]) -> list[Path]:
    fig.tight_layout()
    paths = _save(fig, folder, stem, formats)
    plt.close(fig)
    return paths


def _curves(ax_row, c: Curve, color: str, label: str, style: str, extents: dict) -> None:
    """``c`` against step (left axis of ``ax_row``) and against training time (right)."""
    for j, x in enumerate((c.steps, c.time)):
        _band(ax_row[j], x, c, color, label, extents)
        ax_row[j].lines[-1].set_linestyle(style)


def _grid_axes(ax_row, ylabel: str) -> None:
    for ax, xlabel in zip(ax_row, ("step", "training time (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)


def _validation_figure(plt, groups: dict, colors: dict[str, str], styles: dict):
    """Validation loss (and accuracy, where recorded) against step and training time."""
    has_acc = any(curve(g, "val_acc") for g in groups.values())
    rows = [("val_loss", "validation loss")] + ([("val_acc", "validation accuracy")] if has_acc else [])
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 4 * len(rows)), squeeze=False)
    extents: dict = {}  # axis -> the series drawn on it, for limits that clip no band
    for (opt, lr), g in sorted(groups.items()):
        for i, (key, _) in enumerate(rows):
            c = curve(g, key)
            if c is not None:
                _curves(axes[i], c, colors[opt], describe_group(opt, lr), styles[(opt, lr)], extents)
    for i, (key, title) in enumerate(rows):
        _grid_axes(axes[i], title)
        for ax in axes[i]:
            if key == "val_loss":
                _loss_limits(ax, extents.get(ax, []))
            else:
                _accuracy_limits(ax, extents.get(ax, []))
                ax.set_ylabel(f"{title} (logit scale)")
    axes[0][0].legend(fontsize=8)
    return fig


def _train_loss_figure(plt, groups: dict, colors: dict[str, str], styles: dict):
    """Training loss, smoothed (bias-corrected EMA), against step and training time."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    extents: dict = {}
    for (opt, lr), g in sorted(groups.items()):
        c = curve(g, "train_loss", train=True)
        if c is None:
            continue
        beta = min(0.98, 1 - 10 / max(len(c.steps), 10))
        smooth = Curve(c.steps, c.time, _ema(c.mean, beta), _ema(c.low, beta), _ema(c.high, beta), c.per_seed)
        _curves(axes[0], smooth, colors[opt], describe_group(opt, lr), styles[(opt, lr)], extents)
    _grid_axes(axes[0], "training loss (smoothed)")
    for ax in axes[0]:
        _loss_limits(ax, extents.get(ax, []))
    axes[0][0].legend(fontsize=8)
    return fig


def _sweep_figure(plt, sweep_groups: dict):
    """Final validation loss against learning rate, one line per optimizer (x: diverged)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = _colors([o for o, _ in sweep_groups])
    for opt in sorted({o for o, _ in sweep_groups}):
        lrs = sorted(lr for o, lr in sweep_groups if o == opt)
        finals = [[r.final("val_loss") for r in sweep_groups[(opt, lr)]] for lr in lrs]
        _sweep_line(ax, lrs, finals, colors[opt], opt)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final validation loss (x: diverged)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _sweep_line(ax, lrs: list[float], finals: list[list[float]], color: str, label: str) -> None:
    """The mean final loss of each lr, its min-max band, and an x at the top for each lr where
    some seed diverged."""
    mean = np.array([np.mean(v) if all(math.isfinite(x) for x in v) else np.nan for v in finals])
    lo = np.array([np.min(v) for v in finals])
    hi = np.array([np.max(v) for v in finals])
    ax.plot(lrs, mean, "o-", color=color, label=label)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.fill_between(np.array(lrs)[ok], lo[ok], hi[ok], color=color, alpha=0.2, lw=0)
    bad = [lr for lr, m in zip(lrs, mean) if not np.isfinite(m)]
    if bad:
        ax.plot(bad, [np.nanmax(mean) if np.isfinite(mean).any() else 1.0] * len(bad), "x", color=color, ms=9)


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Round tick values in ``[lo, hi]`` for a log axis: powers of ten, else 1-2-5, else finer
    mantissas, the first set that gives at least four ticks (so that short runs, whose losses
    span less than a decade, still get labelled ticks next to their final values); for the
    narrowest ranges, evenly spaced round values."""
    k0, k1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    sets = ([1], [1, 2, 5], [1, 1.5, 2, 3, 5, 7], [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8],
            [1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2, 2.2, 2.5, 2.8, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9])  # fmt: skip
    ticks: list[float] = []
    for mantissas in sets:
        ticks = [float(f"{m * 10.0**k:.6g}") for k in range(k0, k1 + 1) for m in mantissas]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) >= 4:
            return ticks
    from matplotlib.ticker import MaxNLocator  # under a tenth of a decade: evenly spaced round values

    for nbins in range(5, 12):
        ticks = [float(f"{t:.6g}") for t in MaxNLocator(nbins=nbins, steps=[1, 2, 5, 10]).tick_values(lo, hi) if lo <= t <= hi]
        if len(ticks) >= 4:
            break
    return ticks


def _loss_limits(ax, series: list[list[np.ndarray]]) -> None:
    """Log-scale loss axis covering every mean line and min-max band (none is clipped), except
    that the top stops a little above the highest starting value, so that one diverging optimizer
    does not flatten the others; round, labelled ticks (see :func:`_log_ticks`)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    values = [np.asarray(v, dtype=float) for group in series for v in group]
    values = [v[np.isfinite(v) & (v > 0)] for v in values]
    starts = [v[0] for v in values if v.size]
    values = [v for v in values if v.size]
    if not values:
        return
    ax.set_yscale("log")
    lo = min(v.min() for v in values)
    hi = min(max(v.max() for v in values), max(starts))
    pad = (hi / lo) ** 0.04 if hi > lo else 1.1
    bottom, top = lo / pad, hi * pad
    ax.set_ylim(bottom, top)
    ax.yaxis.set_major_locator(FixedLocator(_log_ticks(bottom, top)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


ACC_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999)


def _accuracy_limits(ax, series: list[list[np.ndarray]]) -> None:
    """Accuracy on a logit axis zoomed to the data: the limits cover every mean line and min-max
    band (none is clipped), and the logit scale spreads the values near 1 (0.96 to 0.99 takes
    about a fifth of an axis that starts at chance), which a 0-1 linear axis squeezes into a strip."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    values = np.concatenate([np.asarray(v, dtype=float).ravel() for group in series for v in group] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if not values.size:
        return
    eps = 1e-4
    lo, hi = float(np.clip(values.min(), eps, 1 - eps)), float(np.clip(values.max(), eps, 1 - eps))
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    expit = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    span = max(logit(hi) - logit(lo), 0.2)
    bottom, top = expit(logit(lo) - 0.04 * span), expit(logit(hi) + 0.04 * span)
    ax.set_yscale("logit", nonpositive="clip")
    ax.set_ylim(bottom, top)
    ticks = []
    for t in sorted((t for t in ACC_TICKS if bottom <= t <= top), reverse=True):
        if not ticks or logit(ticks[-1]) - logit(t) >= 0.06 * (logit(top) - logit(bottom)):
            ticks.append(t)  # from the top down: labels near 1 matter most; none overlap
    if len(ticks) < 3:  # a narrow range away from 0 and 1: round ticks on the finest grid that gives 3-7
        for step in (0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001):
            grid = [round(k * step, 4) for k in range(math.ceil(bottom / step), math.floor(top / step) + 1)]
            if len(grid) >= 3:
                ticks = grid[:: max(1, math.ceil(len(grid) / 7))]
                break
        else:
            ticks = [float(f"{expit(logit(bottom) + f * (logit(top) - logit(bottom))):.4g}") for f in (0.1, 0.5, 0.9)]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_results(
    root: str | os.PathLike,
    optimizers: list[str] | None = None,
    name: str | None = None,
    formats: tuple[str, ...] = FIGURE_FORMATS,
) -> list[Path]:
    """Figures for every task with runs under ``root`` (an output folder or one task's folder):
    of the given ``optimizers`` only, when given, into files named ``<name>-validation.png`` etc.
    when ``name`` is given, in each of ``formats`` (``png``, ``svg``)."""
    runs = load_runs(root)
    if optimizers:
        runs = [r for r in runs if r.config.optimizer in optimizers]
    by_task: dict[tuple[str, Path], tuple[list[Run], list[Run]]] = {}
    for r in runs:
        key = (r.config.task, task_dir(r))
        plain, sweep = by_task.setdefault(key, ([], []))
        (sweep if r.config.kind == "sweep" else plain).append(r)
    written: list[Path] = []
    for (task, folder), (plain, sweep) in sorted(by_task.items()):
        written += plot_task(folder, task, plain, sweep, prefix=f"{name}-" if name else "", formats=formats)
    return written
