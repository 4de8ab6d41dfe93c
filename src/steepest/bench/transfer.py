"""Learning-rate transfer across width: does the best rate found at one width hold at another?

``steepest-bench sweep --widths 32,64,128,256`` runs one learning-rate sweep per width, each under
``OUT/width=<w>/`` (so a run is found again at ``OUT/width=<w>/<task>/sweep/<optimizer>/lr=<lr>/seed=<k>``);
the width is the task's model option ``width`` (MLPs, CNNs) or ``n_embd`` (GPTs), and the run's
``config.json`` records it. ``steepest-bench plot OUT --transfer`` then reads every run under ``OUT``
(the width from each run's config, not from the folder name) and writes, per task:

- ``<task>-transfer.{png,svg}``: final validation loss against learning rate (log x), one curve
  per width (the mean over seeds, a min-max band), one panel per optimizer;
- ``<task>-transfer.md`` / ``.json``: per optimizer, the optimal lr at each width and the shift
  of the optimum per doubling of width with its spread over seeds.

The optimal lr of a curve is the vertex of the parabola through its best grid point and that
point's two neighbours in ``log2(lr)`` (clamped to the neighbours; the grid point itself when a
neighbour diverged or is missing). When the best grid point is the smallest or the largest rate
swept, the optimum is not bracketed: it is reported as a bound (``<=`` / ``>=``). The shift per
doubling is the least-squares slope of ``log2(lr*)`` against ``log2(width)``: 0 means the rate
transfers, -1 means it halves at each doubling of width. It is fitted for each seed (the spread)
and for the mean over seeds (the headline).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import RESUME_IGNORED, RunConfig, describe_hardware
from .errors import BenchError
from .results import Run, load_runs, run_env

__all__ = [
    "WIDTH_OPTIONS",
    "width_option",
    "width_of",
    "width_folder",
    "parse_widths",
    "optimum_log2_lr",
    "shift_per_doubling",
    "WidthCurve",
    "Transfer",
    "analyse",
    "transfer_table",
    "plot_transfer",
    "write_transfer",
]

# Model options that set a task's width, in order of preference.
WIDTH_OPTIONS = ("width", "n_embd")


def width_option(task: Any) -> str:
    """The model option of ``task`` (a :class:`~steepest.bench.tasks.Task`) that sets its width;
    a :class:`BenchError` naming the tasks that have one otherwise."""
    opts = task.model_sizes.get(task.default_size, {})
    for key in WIDTH_OPTIONS:
        if key in opts:
            return key
    from .tasks import TASKS

    ok = [t.name for t in TASKS.values() if any(k in t.model_sizes.get(t.default_size, {}) for k in WIDTH_OPTIONS)]
    raise BenchError(f"--widths: task {task.name} has no single width option; use one of {', '.join(ok)}")


def width_of(cfg: RunConfig) -> int | None:
    """The width a run was trained at (its ``width`` or ``n_embd`` model option), else ``None``."""
    for key in WIDTH_OPTIONS:
        if isinstance(cfg.model.get(key), int):
            return int(cfg.model[key])
    return None


def width_folder(out: str | os.PathLike, width: int) -> Path:
    """``OUT/width=<width>``: where ``sweep --widths`` puts the runs of one width."""
    return Path(out) / f"width={width}"


def parse_widths(text: str) -> list[int]:
    """``"32,64,128"`` -> ``[32, 64, 128]`` (sorted, distinct); at least two positive integers."""
    widths = []
    for part in text.split(","):
        try:
            w = int(part.strip())
        except ValueError:
            w = 0
        if w <= 0:
            raise BenchError(f"bad --widths {text!r}: {part.strip()!r} is not a positive integer (expected e.g. 32,64,128,256)")
        widths.append(w)
    widths = sorted(set(widths))
    if len(widths) < 2:
        raise BenchError(f"bad --widths {text!r}: give at least two widths (e.g. 32,64,128,256)")
    return widths


def optimum_log2_lr(lrs: Any, losses: Any) -> tuple[float, int, bool] | None:
    """The optimal ``log2(lr)`` of one loss-against-lr curve: ``(log2 lr*, index of the best grid
    point, bracketed)``, or ``None`` when no rate has a finite loss.

    ``log2 lr*`` is the vertex of the parabola through the best grid point and its two neighbours
    (in ``log2 lr``), clamped to the neighbours; the grid point itself when it has no finite
    neighbour on both sides. ``bracketed`` is False when the best point is the first or last rate."""
    x = np.log2(np.asarray(lrs, dtype=float))
    y = np.asarray(losses, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"lrs and losses must be 1-D of equal length, got {x.shape} and {y.shape}")
    if np.any(np.diff(x) <= 0):
        raise ValueError("lrs must be strictly increasing")
    finite = np.isfinite(y)
    if not finite.any():
        return None
    i = int(np.argmin(np.where(finite, y, np.inf)))
    bracketed = 0 < i < len(x) - 1
    if not bracketed or not (finite[i - 1] and finite[i + 1]):
        return float(x[i]), i, bracketed
    x0, x1, x2 = x[i - 1], x[i], x[i + 1]
    y0, y1, y2 = y[i - 1], y[i], y[i + 1]
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    if den == 0:  # flat: all three equal
        return float(x1), i, True
    vertex = x1 - 0.5 * ((x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)) / den
    return float(min(max(vertex, x0), x2)), i, True


def shift_per_doubling(widths: Any, log2_lrs: Any) -> float:
    """Least-squares slope of ``log2(lr*)`` against ``log2(width)``: how many doublings the
    optimal rate moves per doubling of width (NaN with fewer than two finite points)."""
    w = np.log2(np.asarray(widths, dtype=float))
    v = np.asarray(log2_lrs, dtype=float)
    ok = np.isfinite(w) & np.isfinite(v)
    if ok.sum() < 2 or np.ptp(w[ok]) == 0:
        return math.nan
    return float(np.polyfit(w[ok], v[ok], 1)[0])


@dataclass
class WidthCurve:
    """Final metric against lr at one width: ``finals[i][k]`` is seed ``seeds[k]`` at ``lrs[i]``
    (+inf: diverged; NaN: missing or unfinished)."""

    width: int
    lrs: list[float]
    seeds: list[int]
    finals: np.ndarray
    optimum: tuple[float, int, bool] | None = None  # of the mean over seeds
    seed_optima: dict[int, tuple[float, int, bool] | None] = field(default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        """Mean over seeds per lr (+inf when a seed diverged, NaN when one is missing)."""
        return self.finals.mean(axis=1)


@dataclass
class Transfer:
    """The width sweep of one optimizer on one task."""

    task: str
    optimizer: str
    metric: str
    curves: list[WidthCurve]
    shift: float  # of the seed-mean optima
    seed_shifts: dict[int, float]
    setting: dict[str, Any]
    env: dict[str, Any]
    init_loss: float

    @property
    def bracketed(self) -> bool:
        return all(c.optimum is not None and c.optimum[2] for c in self.curves)

    def to_dict(self) -> dict[str, Any]:
        shifts = [v for v in self.seed_shifts.values() if math.isfinite(v)]
        return {
            "task": self.task,
            "optimizer": self.optimizer,
            "metric": self.metric,
            "widths": [c.width for c in self.curves],
            "optimal_lr": {str(c.width): None if c.optimum is None else 2.0 ** c.optimum[0] for c in self.curves},
            "grid_best_lr": {str(c.width): None if c.optimum is None else c.lrs[c.optimum[1]] for c in self.curves},
            "bracketed": {str(c.width): bool(c.optimum and c.optimum[2]) for c in self.curves},
            "shift_per_doubling": _json_float(self.shift),
            "seed_shifts": {str(k): _json_float(v) for k, v in self.seed_shifts.items()},
            "seed_shift_mean": _json_float(float(np.mean(shifts))) if shifts else None,
            "seed_shift_std": _json_float(float(np.std(shifts))) if shifts else None,
            "curves": [
                {
                    "width": c.width,
                    "lrs": c.lrs,
                    "seeds": c.seeds,
                    "finals": [[_json_float(v) for v in row] for row in c.finals.tolist()],
                    "seed_optimal_lr": {str(s): None if o is None else 2.0 ** o[0] for s, o in c.seed_optima.items()},
                }
                for c in self.curves
            ],
            "setting": self.setting,
            "env": self.env,
        }


def _json_float(v: float) -> float | str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)


# Run settings that may differ inside one transfer experiment (besides the width option).
_VARYING = {"lr", "seed", "kind", "device", "world_size", "ckpt_every"} | set(RESUME_IGNORED)


def _setting(cfg: RunConfig) -> dict[str, Any]:
    d = {k: v for k, v in cfg.to_dict().items() if k not in _VARYING}
    d["model"] = {k: v for k, v in cfg.model.items() if k not in WIDTH_OPTIONS}
    return d


def _final(run: Run, metric: str) -> float:
    if run.status == "diverged":
        return math.inf
    if run.status != "completed":
        return math.nan
    return run.final(metric)




def analyse(runs: list[Run], metric: str = "val_loss") -> list[Transfer]:
    """One :class:`Transfer` per (task, optimizer) among ``runs`` that has at least two widths.

    Runs without a width option are left out. Within one (task, optimizer) every setting but the
    width, lr and seed (steps, batch, schedule, other model options, ...) must agree, else a
    :class:`BenchError` names the first difference."""
    if metric != "val_loss":
        raise BenchError(f"transfer: metric must be 'val_loss', got {metric!r}")
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in runs:
        if width_of(r.config) is not None:
            groups[(r.config.task, r.config.optimizer)].append(r)
    out = []
    for (task, opt), group in sorted(groups.items()):
        ref = _setting(group[0].config)
        for r in group[1:]:
            s = _setting(r.config)
            if s != ref:
                key = next(k for k in [*ref, *s] if ref.get(k) != s.get(k))
                raise BenchError(
                    f"transfer: runs of {opt} on {task} differ in {key} ({ref.get(key)!r} at {group[0].path}, "
                    f"{s.get(key)!r} at {r.path}); plot one setting per folder"
                )
        by_width: dict[int, list[Run]] = defaultdict(list)
        for r in group:
            by_width[width_of(r.config)].append(r)
        if len(by_width) < 2:
            continue
        curves = []
        for w in sorted(by_width):
            rs = by_width[w]
            lrs = sorted({r.config.lr for r in rs})
            seeds = sorted({r.config.seed for r in rs})
            finals = np.full((len(lrs), len(seeds)), math.nan)
            for r in rs:
                finals[lrs.index(r.config.lr), seeds.index(r.config.seed)] = _final(r, metric)
            c = WidthCurve(w, lrs, seeds, finals)
            c.optimum = optimum_log2_lr(lrs, c.mean)
            c.seed_optima = {s: optimum_log2_lr(lrs, finals[:, k]) for k, s in enumerate(seeds)}
            curves.append(c)
        widths = [c.width for c in curves]
        shift = shift_per_doubling(widths, [math.nan if c.optimum is None else c.optimum[0] for c in curves])
        common = sorted(set.intersection(*(set(c.seeds) for c in curves)))
        seed_shifts = {
            s: shift_per_doubling(widths, [math.nan if c.seed_optima[s] is None else c.seed_optima[s][0] for c in curves])
            for s in common
        }
        starts = [r.evals[0]["val_loss"] for r in group if r.evals and r.evals[0].get("step") == 0]
        init = float(np.median(starts)) if starts else math.nan
        out.append(Transfer(task, opt, metric, curves, shift, seed_shifts, ref, run_env(group[0]), init))
    return out


def _signed(v: float) -> str:
    """``+0.12`` / ``-0.40``, with no ``-0.00``."""
    return f"{round(float(v), 2) + 0.0:+.2f}"


def _lr_cell(c: WidthCurve) -> str:
    if c.optimum is None:
        return "diverged"
    lr = 2.0 ** c.optimum[0]
    if c.optimum[2]:
        return f"{lr:.3g}"
    return ("<=" if c.optimum[1] == 0 else ">=") + f" {lr:.3g}"





def transfer_table(transfers: list[Transfer]) -> str:
    """Markdown: per optimizer the optimal lr at each width, the shift per doubling of the
    seed-mean optimum, the per-seed shifts' mean ± std [min, max], and the lr ratio per doubling."""
    if not transfers:
        return "no optimizer has runs at two or more widths\n"
    lines = []
    for task in sorted({t.task for t in transfers}):
        ts = [t for t in transfers if t.task == task]
        widths = sorted({c.width for t in ts for c in t.curves})
        s = ts[0].setting
        seeds = max(len(c.seeds) for t in ts for c in t.curves)
        lines.append(
            f"### {task}: optimal learning rate against width ({s['steps']} steps, batch {s['batch_size']}, "
            f"{seeds} seed{'s' if seeds > 1 else ''}; {describe_hardware(ts[0].env)})\n"
        )
        head = ["optimizer"] + [f"lr* w={w}" for w in widths] + ["shift/doubling (log2)", "over seeds", "lr ratio/doubling"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for t in ts:
            cells = {c.width: _lr_cell(c) for c in t.curves}
            shifts = [v for v in t.seed_shifts.values() if math.isfinite(v)]
            if len(shifts) > 1:
                spread = f"{_signed(np.mean(shifts))} ± {np.std(shifts):.2f} [{_signed(min(shifts))}, {_signed(max(shifts))}]"
            else:
                spread = f"{_signed(shifts[0])} (1 seed)" if shifts else "n/a"
            edge = "" if t.bracketed else " (a bound: an optimum at the grid's edge)"
            shift = "n/a" if math.isnan(t.shift) else f"{_signed(t.shift)}{edge}"
            ratio = "n/a" if math.isnan(t.shift) else f"{2.0 ** t.shift:.2f}x"
            row = [t.optimizer] + [cells.get(w, "") for w in widths] + [shift, spread, ratio]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines.append(
        "lr*: vertex of the parabola in log2(lr) through the best rate of the seed-mean curve and its neighbours; "
        "<= / >=: the best rate swept was the grid's smallest / largest. shift/doubling: least-squares slope of "
        "log2(lr*) against log2(width) (0: the rate transfers; -1: it halves per doubling); over seeds: the same "
        "slope fitted per seed, mean ± std [min, max].\n"
    )
    return "\n".join(lines)


def plot_transfer(
    transfers: list[Transfer], folder: str | os.PathLike, stem: str, formats: tuple[str, ...] = ("png", "svg")
) -> list[Path]:
    """Draw the transfer figure of one task's ``transfers`` into ``folder/<stem>.<ext>``: one panel
    per optimizer, final validation loss against lr (log-log), one colour per width (mean over
    seeds; band: min-max; x: a diverged rate; dotted line: the optimal lr)."""
    from .plots import _pyplot

    plt = _pyplot()
    from matplotlib.ticker import FormatStrFormatter

    n = len(transfers)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    widths = sorted({c.width for t in transfers for c in t.curves})
    cmap = plt.get_cmap("viridis")
    color = {w: cmap(0.9 * i / max(1, len(widths) - 1)) for i, w in enumerate(widths)}
    for ax, t in zip(axes.flat, transfers):
        finite = np.concatenate([c.finals[np.isfinite(c.finals)] for c in t.curves] + [np.array([])])
        lo = float(finite.min()) if finite.size else 0.1
        top = float(finite.max()) if finite.size else 1.0
        if math.isfinite(t.init_loss):
            top = min(top, 1.05 * t.init_loss)
        top = max(top, lo * 1.05)
        for c in t.curves:
            lrs = np.array(c.lrs)
            mean = c.mean
            ok = np.isfinite(mean)
            ax.plot(lrs[ok], np.minimum(mean[ok], top), "o-", color=color[c.width], ms=3.5, lw=1.4, label=f"width {c.width}")
            if len(c.seeds) > 1:
                lo_s, hi_s = np.nanmin(c.finals, axis=1), np.nanmax(c.finals, axis=1)
                band = np.isfinite(lo_s) & np.isfinite(hi_s)
                if band.any():
                    ax.fill_between(lrs[band], lo_s[band], np.minimum(hi_s[band], top), color=color[c.width], alpha=0.18, lw=0)
            bad = np.isinf(c.finals).any(axis=1)
            if bad.any():
                ax.plot(lrs[bad], [top] * int(bad.sum()), "x", color=color[c.width], ms=7, clip_on=False)
            if c.optimum is not None:
                ax.axvline(2.0 ** c.optimum[0], color=color[c.width], ls=":", lw=1.1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(lo / 1.08, top * 1.02)
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final validation loss")
        ax.grid(alpha=0.3, which="both")
        shift = "n/a" if math.isnan(t.shift) else _signed(t.shift) + ("" if t.bracketed else " (bound)")
        ax.set_title(f"{t.optimizer}: lr* shift {shift} log2/doubling", fontsize=10)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    s = transfers[0].setting
    seeds = max(len(c.seeds) for t in transfers for c in t.curves)
    fig.suptitle(
        f"{transfers[0].task}: learning-rate transfer across width, {s['steps']} steps, "
        f"{'min-max over %d seeds' % seeds if seeds > 1 else 'one seed'} (x: diverged; dotted: lr*); {describe_hardware(transfers[0].env)}",
        fontsize=10,
    )
    fig.tight_layout()
    folder = Path(folder)
    written = []
    for ext in formats:
        p = folder / f"{stem}.{ext}"
        fig.savefig(p, dpi=130 if ext == "png" else None, bbox_inches="tight")
        written.append(p)
    plt.close(fig)
    return written


def write_transfer(
    root: str | os.PathLike,
    optimizers: list[str] | None = None,
    name: str | None = None,
    formats: tuple[str, ...] = ("png", "svg"),
) -> list[Path]:
    """Analyse every run under ``root`` (of ``optimizers`` only, when given) and write, per task,
    ``[<name>-]<task>-transfer.{png,svg,md,json}`` into ``root``; returns the paths. A
    :class:`BenchError` when no optimizer has runs at two or more widths."""
    runs = [r for r in load_runs(root) if not optimizers or r.config.optimizer in optimizers]
    transfers = analyse(runs)
    if not transfers:
        raise BenchError(f"no optimizer has runs at two or more widths under {root} (run `steepest-bench sweep --widths ...` first)")
    folder = Path(root)
    written: list[Path] = []
    for task in sorted({t.task for t in transfers}):
        ts = [t for t in transfers if t.task == task]
        stem = f"{name}-{task}-transfer" if name else f"{task}-transfer"
        written += plot_transfer(ts, folder, stem, formats)
        md = folder / f"{stem}.md"
        md.write_text(transfer_table(ts))
        js = folder / f"{stem}.json"
        js.write_text(json.dumps([t.to_dict() for t in ts], indent=1) + "\n")
        written += [md, js]
    return written
