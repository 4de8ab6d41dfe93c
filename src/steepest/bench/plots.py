"""Figures from saved runs (matplotlib, Agg backend, PNG and SVG).

Per task, under ``OUT/<task>/``:

- ``validation.{png,svg}``: validation loss and accuracy against step and against wall-clock
  training time, one line per optimizer setting: the mean over seeds with a min-max band;
- ``train_loss.{png,svg}``: smoothed training loss against step and time, likewise;
- ``sweep.{png,svg}`` when the task has sweeps: final validation loss against learning rate.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from .results import Curve, Run, curve, describe_group, group_runs, load_runs, task_dir

__all__ = ["plot_results", "plot_task"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colors(names: list[str]) -> dict[str, str]:
    """One colour per optimizer, fixed by its place in the registry, so that an optimizer keeps its
    colour across figures with different subsets."""
    from steepest.optim.build import OPTIMIZERS

    order = {n: i for i, n in enumerate(OPTIMIZERS)}
    palette = [f"C{i}" for i in range(10)] + ["#8c564b", "#17becf", "#bcbd22", "#7f7f7f"]
    return {n: palette[order.get(n, len(order) + i) % len(palette)] for i, n in enumerate(sorted(set(names)))}


def _ema(v: np.ndarray, beta: float) -> np.ndarray:
    """Exponential moving average with bias correction (no lag towards the first value)."""
    out, acc = np.empty_like(v), 0.0
    for i, x in enumerate(v):
        acc = beta * acc + (1 - beta) * x
        out[i] = acc / (1 - beta ** (i + 1))
    return out


def _band(ax, x: np.ndarray, c: Curve, color: str, label: str) -> None:
    ax.plot(x, c.mean, color=color, label=label, lw=1.6)
    if len(c.per_seed) > 1:
        ax.fill_between(x, c.low, c.high, color=color, alpha=0.2, lw=0)


FIGURE_FORMATS = ("png", "svg")


def _save(fig, folder: Path, stem: str, formats: tuple[str, ...]) -> list[Path]:
    paths = []
    for ext in formats:
        p = folder / f"{stem}.{ext}"
        fig.savefig(p, dpi=130 if ext == "png" else None, bbox_inches="tight")
        paths.append(p)
    return paths


def plot_task(
    folder: Path, task: str, runs: list[Run], sweeps: list[Run], prefix: str = "", formats: tuple[str, ...] = FIGURE_FORMATS
) -> list[Path]:
    """Write the figures of one task into ``folder`` (file names start with ``prefix``), one file
    per format in ``formats``; returns their paths."""
    plt = _pyplot()
    written: list[Path] = []
    groups = group_runs(runs)
    colors = _colors([opt for opt, _ in groups])
    multi_lr = len({lr for (o, lr) in groups}) > len({o for (o, _) in groups})
    n_seeds = max((len(g) for g in groups.values()), default=0)
    seeds_note = f"mean and min-max over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    # Several lrs of one optimizer: distinguish them by line style.
    styles = ["-", "--", ":", "-."]
    by_opt: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for key in sorted(groups):
        by_opt[key[0]].append(key)

    if groups:
        has_acc = any(curve(g, "val_acc") for g in groups.values())
        rows = [("val_loss", "validation loss")] + ([("val_acc", "validation accuracy")] if has_acc else [])
        fig, axes = plt.subplots(len(rows), 2, figsize=(11, 4 * len(rows)), squeeze=False)
        for (opt, lr), g in sorted(groups.items()):
            style = styles[by_opt[opt].index((opt, lr)) % len(styles)] if multi_lr else "-"
            label = describe_group(opt, lr)
            for i, (key, title) in enumerate(rows):
                c = curve(g, key)
                if c is None:
                    continue
                for j, x in enumerate((c.steps, c.time)):
                    ax = axes[i][j]
                    _band(ax, x, c, colors[opt], label)
                    ax.lines[-1].set_linestyle(style)
        for i, (key, title) in enumerate(rows):
            for j, xlabel in enumerate(("step", "training time (s)")):
                ax = axes[i][j]
                ax.set_xlabel(xlabel)
                ax.set_ylabel(title)
                ax.grid(alpha=0.3)
                if key == "val_loss":
                    _loss_limits(ax)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"{task}: {seeds_note}")
        fig.tight_layout()
        written += _save(fig, folder, prefix + "validation", formats)
        plt.close(fig)

        fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
        for (opt, lr), g in sorted(groups.items()):
            c = curve(g, "train_loss", train=True)
            if c is None:
                continue
            beta = min(0.98, 1 - 10 / max(len(c.steps), 10))
            smooth = Curve(c.steps, c.time, _ema(c.mean, beta), _ema(c.low, beta), _ema(c.high, beta), c.per_seed)
            style = styles[by_opt[opt].index((opt, lr)) % len(styles)] if multi_lr else "-"
            for j, x in enumerate((c.steps, c.time)):
                _band(axes[0][j], x, smooth, colors[opt], describe_group(opt, lr))
                axes[0][j].lines[-1].set_linestyle(style)
        for j, xlabel in enumerate(("step", "training time (s)")):
            axes[0][j].set_xlabel(xlabel)
            axes[0][j].set_ylabel("training loss (smoothed)")
            axes[0][j].grid(alpha=0.3)
            _loss_limits(axes[0][j])
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"{task}: training loss, {seeds_note}")
        fig.tight_layout()
        written += _save(fig, folder, prefix + "train_loss", formats)
        plt.close(fig)

    if sweeps:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        sweep_groups = group_runs(sweeps)
        sweep_colors = _colors([o for o, _ in sweep_groups])
        for opt in sorted({o for o, _ in sweep_groups}):
            lrs = sorted(lr for o, lr in sweep_groups if o == opt)
            finals = [[r.final("val_loss") for r in sweep_groups[(opt, lr)]] for lr in lrs]
            mean = np.array([np.mean(v) if all(math.isfinite(x) for x in v) else np.nan for v in finals])
            lo = np.array([np.min(v) for v in finals])
            hi = np.array([np.max(v) for v in finals])
            ax.plot(lrs, mean, "o-", color=sweep_colors[opt], label=opt)
            ok = np.isfinite(lo) & np.isfinite(hi)
            if ok.any():
                ax.fill_between(np.array(lrs)[ok], lo[ok], hi[ok], color=sweep_colors[opt], alpha=0.2, lw=0)
            bad = [lr for lr, m in zip(lrs, mean) if not np.isfinite(m)]
            if bad:
                ax.plot(bad, [np.nanmax(mean) if np.isfinite(mean).any() else 1.0] * len(bad), "x", color=sweep_colors[opt], ms=9)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final validation loss (x: diverged)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{task}: learning-rate sweep")
        fig.tight_layout()
        written += _save(fig, folder, prefix + "sweep", formats)
        plt.close(fig)
    return written


def _loss_limits(ax) -> None:
    """Log-scale loss axis, clipped a little above the curves' starting values so that one
    diverging optimizer does not flatten the others."""
    ys = [np.asarray(line.get_ydata(), dtype=float) for line in ax.lines]
    ys = [y[np.isfinite(y) & (y > 0)] for y in ys]
    ys = [y for y in ys if y.size]
    if not ys:
        return
    ax.set_yscale("log")
    lo = min(y.min() for y in ys)
    top = min(max(y.max() for y in ys), max(y[0] for y in ys)) * 1.1
    if top > lo:
        ax.set_ylim(lo / 1.1, top)


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
