"""Markdown reports from saved runs: final metrics, time to a target, optimizer share of step time."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .config import format_lr
from .results import Run, group_runs, load_runs, summarize_sweep, task_dir
from .tasks import TASKS

__all__ = ["time_to_target", "report_task", "write_reports"]


def time_to_target(run: Run, key: str, target: float) -> tuple[int, float] | None:
    """``(step, training seconds)`` of the first evaluation where ``key`` reaches ``target``
    (accuracy: at least; loss: at most), or ``None``."""
    higher = key.endswith("acc")
    for r in run.evals:
        v = r.get(key)
        if v is not None and (v >= target if higher else v <= target):
            return int(r["step"]), float(r.get("time", math.nan))
    return None


def _stat(values: list[float], digits: int = 4) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}"


def _last(run: Run) -> dict[str, Any]:
    return run.steps[-1] if run.steps else {}


def _row(opt: str, lr: float, group: list[Run], targets: Mapping[str, float]) -> list[str]:
    statuses = [r.status for r in group]
    status = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
    damaged = sum(r.damaged for r in group)
    if damaged:
        status += f" ({damaged} with damaged metrics ⚠)"
    ok = [r for r in group if r.status != "diverged"]
    cells = [opt, format_lr(lr), str(len(group)), status]
    cells.append(_stat([r.final("val_loss") for r in ok]))
    cells.append(_stat([r.final("val_acc") for r in ok]))
    cells.append(_stat([min((e["val_loss"] for e in r.evals), default=math.nan) for r in ok]))
    for key, target in targets.items():
        hits = [time_to_target(r, key, target) for r in group]
        reached = [h for h in hits if h is not None]
        if not reached:
            cells.append("not reached")
            continue
        cell = f"{np.median([t for _, t in reached]):.2f} s ({np.median([s for s, _ in reached]):.0f} steps)"
        if len(reached) < len(group):
            cell += f", {len(reached)}/{len(group)} seeds"
        cells.append(cell)
    lasts = [x for x in (_last(r) for r in group) if x.get("step") and x.get("time", 0) > 0]
    # Medians over seeds, robust to a seed that shared the machine with something else.
    per_step = [x["time"] / x["step"] for x in lasts]
    share = [x.get("opt_time", 0.0) / x["time"] for x in lasts]
    cells.append(f"{1000 * np.median(per_step):.2f}" if lasts else "—")
    cells.append(f"{100 * np.median(share):.1f}%" if lasts else "—")
    return cells


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _target_label(key: str, target: float) -> str:
    return f"time to {key} {'≥' if key.endswith('acc') else '≤'} {target:g}"


def report_task(task: str, runs: list[Run], sweeps: list[Run], targets: Mapping[str, float] | None = None) -> str:
    """The Markdown report of one task's runs (and sweeps)."""
    if targets is None:
        targets = dict(TASKS[task].targets) if task in TASKS else {}
    out = [f"# {task}", ""]
    if task in TASKS:
        out += [TASKS[task].description, ""]
    if runs:
        first = runs[0]
        env = {}
        try:
            env = json.loads((first.path / "config.json").read_text()).get("env", {})
        except (OSError, ValueError):
            pass
        c = first.config
        out += [
            f"{len(runs)} runs; {c.steps} steps of batch {c.batch_size}; device {env.get('gpu') or env.get('device', c.device)}"
            f" (torch {env.get('torch', '?')}). Metrics: mean ± std over seeds at the last evaluation;"
            " times: median over seeds of training time (evaluation excluded).",
            "",
        ]
        header = ["optimizer", "lr", "seeds", "status", "final val loss", "final val acc", "best val loss"]
        header += [_target_label(k, v) for k, v in targets.items()]
        header += ["ms / step", "optimizer.step share"]
        rows = [_row(opt, lr, g, targets) for (opt, lr), g in sorted(group_runs(runs).items())]
        out += [_table(header, rows), ""]
        for r in [r for r in runs if r.damaged]:
            out.append(f"- ⚠ damaged metrics: {r.config.optimizer} lr={format_lr(r.config.lr)} seed={r.config.seed}: "
                       f"{r.damage_note()}; its numbers above rest on the readable lines")  # fmt: skip
        if any(r.damaged for r in runs):
            out.append("")
        diverged = [r for r in runs if r.status == "diverged"]
        for r in diverged:
            out.append(f"- diverged: {r.config.optimizer} lr={format_lr(r.config.lr)} seed={r.config.seed}: "
                       f"{(r.result or {}).get('message', '')}")  # fmt: skip
        if diverged:
            out.append("")
    if sweeps:
        out += ["## Learning-rate sweeps", ""]
        for opt in sorted({r.config.optimizer for r in sweeps}):
            summary = summarize_sweep([r for r in sweeps if r.config.optimizer == opt])
            rows = []
            for row in summary["results"]:
                v = row["val_loss"]
                mark = "**" if row["lr"] == summary["best_lr"] else ""
                status = ", ".join(sorted(set(row["statuses"])))
                cell = "diverged" if v is None else f"{v:.4f}"
                rows.append([f"{mark}{format_lr(row['lr'])}{mark}", str(row["seeds"]), f"{mark}{cell}{mark}", status])
            best = "none (every lr diverged)" if summary["best_lr"] is None else format_lr(summary["best_lr"])
            out += [f"### {opt}: best lr {best} ({summary['steps']} steps)", ""]
            out += [_table(["lr", "seeds", "final val loss", "status"], rows), ""]
            hurt = [r for r in sweeps if r.config.optimizer == opt and r.damaged]
            for r in hurt:
                out.append(f"- ⚠ damaged metrics: lr={format_lr(r.config.lr)} seed={r.config.seed}: {r.damage_note()}")
            if hurt:
                out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_reports(root: str | os.PathLike, targets: Mapping[str, float] | None = None) -> list[tuple[Path, str]]:
    """Write ``report.md`` into every task folder under ``root``; returns ``(path, text)`` pairs.
    ``targets`` (e.g. ``{"val_acc": 0.9}``) replace the tasks' default targets."""
    by_task: dict[tuple[str, Path], tuple[list[Run], list[Run]]] = {}
    for r in load_runs(root):
        plain, sweep = by_task.setdefault((r.config.task, task_dir(r)), ([], []))
        (sweep if r.config.kind == "sweep" else plain).append(r)
    written = []
    for (task, folder), (plain, sweep) in sorted(by_task.items()):
        text = report_task(task, plain, sweep, targets)
        path = folder / "report.md"
        path.write_text(text, encoding="utf-8")
        written.append((path, text))
    return written
