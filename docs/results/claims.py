"""Tables for claims 3-5 of docs/results.md, from the committed shakespeare-gpt runs.

    python docs/results/claims.py > docs/results/shakespeare-gpt/claims.md

Steps and seconds to a target validation loss (the worst final value among the optimizers
compared, so that every seed reaches it) are read off each seed's validation curve
(evaluations every 50 steps), linearly interpolated between evaluations, then the median over
seeds is taken. Seconds are training time (evaluation excluded).
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

from steepest.bench.results import Run, group_runs, load_runs

TASK = "shakespeare-gpt"


def crossing(run: Run, target: float) -> tuple[float, float]:
    """``(step, seconds)`` where the validation loss first reaches ``target`` (interpolated), or nans."""
    points = [(r["step"], r["time"], r["val_loss"]) for r in run.evals if "val_loss" in r]
    for (s0, t0, v0), (s1, t1, v1) in zip(points, points[1:]):
        if v1 <= target < v0:
            f = (v0 - target) / (v0 - v1)
            return s0 + f * (s1 - s0), t0 + f * (t1 - t0)
    if points and points[0][2] <= target:
        return float(points[0][0]), float(points[0][1])
    return math.nan, math.nan


def final_val(run: Run) -> float:
    return run.final("val_loss")


def main(root: Path) -> None:
    finished = [r for r in load_runs(root / TASK, kind="run") if r.status != "unfinished"]
    groups = {opt: runs for (opt, _lr), runs in group_runs(finished).items()}
    lrs = {opt: runs[0].config.lr for opt, runs in groups.items()}
    mean_final = {opt: statistics.mean(final_val(r) for r in runs) for opt, runs in groups.items()}

    print(f"# {TASK}: claims 3-5\n")
    print("| optimizer | lr | seeds | final val loss (mean ± std) | ms / step | optimizer share |")
    print("|---|---|---|---|---|---|")
    for opt in sorted(groups, key=mean_final.get):
        runs = groups[opt]
        finals = [final_val(r) for r in runs]
        std = statistics.stdev(finals) if len(finals) > 1 else 0.0
        last = [r.metrics[-1] for r in runs]
        ms = statistics.median(1e3 * m["time"] / m["step"] for m in last)
        share = statistics.median(m["opt_time"] / m["time"] for m in last)
        print(f"| {opt} | {lrs[opt]:g} | {len(runs)} | {mean_final[opt]:.4f} ± {std:.4f} | {ms:.1f} | {share:.1%} |")

    def race(title: str, names: list[str]) -> None:
        names = [n for n in names if n in groups]
        if len(names) < 2:
            return
        # The loss every seed of every optimizer compared reaches: the worst final value among them.
        target = max(final_val(r) for n in names for r in groups[n])
        print(f"\n## {title}\n\ntarget: validation loss {target:.4f} (the worst final value among these runs)\n")
        print(f"| optimizer | steps to target (median) | seconds to target (median) | steps vs {names[0]} | seconds vs {names[0]} |")
        print("|---|---|---|---|---|")
        base = None
        for n in names:
            hits = [h for h in (crossing(r, target) for r in groups[n]) if not math.isnan(h[0])]
            steps = statistics.median(h[0] for h in hits)
            secs = statistics.median(h[1] for h in hits)
            base = base or (steps, secs)
            note = "" if len(hits) == len(groups[n]) else f" ({len(hits)}/{len(groups[n])} seeds)"
            ratios = " | ".join(f"{v / b:.3f}" if b > 0 else "–" for v, b in zip((steps, secs), base))
            print(f"| {n} | {steps:.0f}{note} | {secs:.1f} | {ratios} |")

    race("Claim 3: Neon vs Muon", ["muon", "neon-nuclear", "neon-fstar"])
    race("Claim 4: Newton-Muon vs Muon", ["muon", "newton-muon"])
    race("Claim 5: Muon vs AdamW", ["adamw", "muon"])


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
