"""Reading saved runs back: run folders, their metrics, groups over seeds, sweep summaries."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig, format_lr
from .errors import BenchError
from .train import CONFIG, METRICS, RESULT

__all__ = [
    "Run",
    "read_metrics_checked",
    "load_runs",
    "task_dir",
    "group_runs",
    "Curve",
    "curve",
    "summarize_sweep",
    "write_sweep_summary",
    "find_sweep_lr",
    "describe_group",
]


@dataclass
class Run:
    """One saved run folder."""

    path: Path
    config: RunConfig
    metrics: list[dict[str, Any]]
    result: dict[str, Any] | None
    bad_lines: tuple[int, ...] = ()  # 1-based numbers of metrics.jsonl lines that could not be read

    @property
    def damaged(self) -> bool:
        """Whether some lines of ``metrics.jsonl`` were unreadable (torn by a killed writer, or
        garbage from a bad copy): the run's numbers then rest on the other lines."""
        return bool(self.bad_lines)

    def damage_note(self) -> str:
        """One line naming the file and the unreadable lines (empty when undamaged)."""
        if not self.bad_lines:
            return ""
        shown = ", ".join(map(str, self.bad_lines[:5])) + (", ..." if len(self.bad_lines) > 5 else "")
        s = "s" if len(self.bad_lines) > 1 else ""
        return (f"{self.path / METRICS} line{s} {shown}: not a metrics record (torn or garbage); "
                f"{len(self.bad_lines)} line{s} skipped")  # fmt: skip

    @property
    def status(self) -> str:
        """``completed``, ``diverged`` or ``unfinished`` (no result yet: running or killed)."""
        return self.result["status"] if self.result else "unfinished"

    @property
    def evals(self) -> list[dict[str, Any]]:
        """The metrics records that carry validation metrics, in step order."""
        return [r for r in self.metrics if "val_loss" in r]

    @property
    def steps(self) -> list[dict[str, Any]]:
        """The metrics records of training steps (with ``train_loss``)."""
        return [r for r in self.metrics if r.get("train_loss") is not None]

    def final(self, key: str) -> float:
        """``key`` at the last evaluation (NaN when missing; +inf loss / 0 accuracy if diverged)."""
        if self.status == "diverged":
            return math.inf if "loss" in key else 0.0
        evals = [r for r in self.evals if key in r]
        return float(evals[-1][key]) if evals else math.nan


def read_metrics_checked(path: str | os.PathLike) -> tuple[list[dict[str, Any]], tuple[int, ...]]:
    """The records of a ``metrics.jsonl`` and the 1-based numbers of its unreadable lines (not
    JSON, not a JSON object, or without an integer ``step``); blank lines are ignored."""
    records: list[dict[str, Any]] = []
    bad: list[int] = []
    p = Path(path)
    if not p.exists():
        return records, ()
    with open(p, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
            else:
                bad.append(i)
    return records, tuple(bad)


def run_env(run: Run) -> dict:
    """The versions and hardware recorded in a run's ``config.json`` (``{}`` when unreadable)."""
    try:
        return dict(json.loads((run.path / "config.json").read_text()).get("env", {}))
    except (OSError, ValueError):
        return {}


def load_runs(root: str | os.PathLike, kind: str | None = None) -> list[Run]:
    """Every run folder (one holding ``config.json``) under ``root``, optionally of one kind
    (``run`` or ``sweep``), sorted by task, optimizer, lr and seed."""
    root = Path(root)
    if not root.is_dir():
        raise BenchError(f"results folder {root} does not exist")
    runs = []
    for cfg_path in root.rglob(CONFIG):
        try:
            cfg = RunConfig.from_dict(json.loads(cfg_path.read_text())["run"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not one of ours
        if kind is not None and cfg.kind != kind:
            continue
        d = cfg_path.parent
        result = None
        if (d / RESULT).exists():
            try:
                result = json.loads((d / RESULT).read_text())
            except ValueError:
                result = None
        records, bad = read_metrics_checked(d / METRICS)
        runs.append(Run(d, cfg, records, result, bad))
    runs.sort(key=lambda r: (r.config.task, r.config.optimizer, r.config.lr, r.config.seed))
    return runs


def thin_metrics(root: str | os.PathLike, every: int) -> tuple[int, int]:
    """Shrink every run's ``metrics.jsonl`` under ``root`` for archiving: keep each evaluation
    record, the first and the last record, and every ``every``-th training record (times are
    cumulative, so nothing else changes). Returns the record counts before and after."""
    if every < 1:
        raise BenchError(f"--every must be >= 1, got {every}")
    before = after = 0
    for run in load_runs(root):
        path = run.path / "metrics.jsonl"
        if not path.exists():
            continue
        if run.damaged:
            raise BenchError(f"{run.damage_note()}; repair or delete those lines before thinning")
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = []
        for i, line in enumerate(lines):
            record = json.loads(line)
            is_eval = any(k.startswith("val_") for k in record)
            if is_eval or i in (0, len(lines) - 1) or int(record.get("step", 0)) % every == 0:
                kept.append(line)
        before, after = before + len(lines), after + len(kept)
        path.write_text("\n".join(kept) + "\n")
    return before, after


def task_dir(run: Run) -> Path:
    """The ``OUT/<task>`` folder of a run (``.../[sweep/]<optimizer>/[init=<init>/]lr=<lr>/seed=<k>``)."""
    depth = 2 + (run.config.kind == "sweep") + (run.path.parents[1].name.startswith("init="))
    return run.path.parents[depth]


def group_runs(runs: list[Run]) -> dict[tuple[str, float], list[Run]]:
    """Runs grouped by (optimizer, lr): the seeds of one setting."""
    groups: dict[tuple[str, float], list[Run]] = defaultdict(list)
    for r in runs:
        groups[(r.config.optimizer, r.config.lr)].append(r)
    return dict(groups)


@dataclass
class Curve:
    """A metric over seeds at each step: mean, min, max, and the median time of that step."""

    steps: np.ndarray
    time: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    per_seed: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (steps, time, values) of each seed


def curve(runs: list[Run], key: str, *, train: bool = False) -> Curve | None:
    """``key`` (e.g. ``val_loss``) of the seeds in ``runs``, aligned by step; at each step the
    statistics use the seeds that logged it. ``train=True`` reads the per-step records."""
    per_seed = []
    table: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for r in runs:
        recs = [x for x in (r.steps if train else r.evals) if x.get(key) is not None]
        if not recs:
            continue
        s = np.array([x["step"] for x in recs])
        t = np.array([x.get("time", np.nan) for x in recs], dtype=float)
        v = np.array([x[key] for x in recs], dtype=float)
        per_seed.append((s, t, v))
        for si, ti, vi in zip(s, t, v):
            table[int(si)].append((ti, vi))
    if not table:
        return None
    steps = np.array(sorted(table))
    # The median: one seed slowed down by a busy machine should not bend the time axis.
    time = np.array([np.median([a for a, _ in table[s]]) for s in steps])
    vals = [np.array([b for _, b in table[s]]) for s in steps]
    return Curve(
        steps,
        time,
        np.array([v.mean() for v in vals]),
        np.array([v.min() for v in vals]),
        np.array([v.max() for v in vals]),
        per_seed,
    )


def summarize_sweep(runs: list[Run], metric: str = "val_loss") -> dict[str, Any]:
    """Final ``metric`` per learning rate (mean over seeds; a diverged seed counts as the worst)
    and the best lr, for the sweep runs of one task and optimizer."""
    if not runs:
        raise BenchError("no sweep runs to summarise")
    higher_better = metric.endswith("acc")
    rows = []
    for (opt, lr), group in sorted(group_runs(runs).items(), key=lambda kv: kv[0][1]):
        values = [g.final(metric) for g in group]
        ok = all(math.isfinite(v) for v in values)
        rows.append({
            "lr": lr, "seeds": len(group), metric: float(np.mean(values)) if ok else None,
            "per_seed": [v if math.isfinite(v) else None for v in values],
            "statuses": [g.status for g in group],
        })  # fmt: skip
    usable = [r for r in rows if all(s == "completed" for s in r["statuses"]) and r[metric] is not None]
    best = (max if higher_better else min)(usable, key=lambda r: r[metric]) if usable else None
    first = runs[0].config
    return {
        "task": first.task,
        "optimizer": first.optimizer,
        "metric": metric,
        "steps": first.steps,
        "best_lr": best["lr"] if best else None,
        "best": best[metric] if best else None,
        "results": rows,
    }


def write_sweep_summary(out: str | os.PathLike, task: str, optimizer: str, metric: str = "val_loss") -> tuple[Path, dict[str, Any]]:
    """Summarise the sweep runs under ``OUT/<task>/sweep/<optimizer>`` into ``sweep.json`` there."""
    folder = Path(out) / task / "sweep" / optimizer
    runs = [r for r in load_runs(folder, kind="sweep") if r.config.task == task and r.config.optimizer == optimizer]
    summary = summarize_sweep(runs, metric)
    path = folder / "sweep.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path, summary


def find_sweep_lr(root: str | os.PathLike, task: str, optimizer: str) -> float | None:
    """The best lr recorded by a sweep of ``optimizer`` on ``task``, looked up under ``root``
    (an output folder, its ``<task>`` or ``<task>/sweep`` folder); ``None`` when there is none."""
    root = Path(root)
    for cand in (
        root / task / "sweep" / optimizer / "sweep.json",
        root / "sweep" / optimizer / "sweep.json",
        root / optimizer / "sweep.json",
    ):
        if cand.is_file():
            try:
                summary = json.loads(cand.read_text())
            except ValueError:
                raise BenchError(f"{cand} is not valid JSON") from None
            if summary.get("task") == task and summary.get("optimizer") == optimizer:
                lr = summary.get("best_lr")
                return float(lr) if lr is not None else None
    return None


def describe_group(optimizer: str, lr: float) -> str:
    """Legend label of a setting."""
    return f"{optimizer} (lr {format_lr(lr)})"
