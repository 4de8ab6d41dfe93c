"""Learning-rate transfer across width: ``sweep --widths`` lays runs out by width, and
``plot --transfer`` finds each curve's optimal rate and the optimum's shift per doubling of width.

The analysis is checked on synthetic sweeps whose losses are exact parabolas in log2(lr) with a
known optimum per width and seed (so the shift per doubling is known exactly), and end to end on a
tiny real sweep (2 widths x 2 rates x 1 seed, 4 steps) against the losses read back from its files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from steepest.bench.cli import main
from steepest.bench.config import format_lr, run_dir
from steepest.bench.results import load_runs
from steepest.bench.tasks import get_task
from steepest.bench.transfer import analyse, optimum_log2_lr, shift_per_doubling, transfer_table, width_folder
from steepest.optim.build import build_optimizer

WIDTHS = [32, 64, 128, 256]
# A non-uniform grid in log2(lr): the parabola's vertex must not assume equal spacing.
LOG2_LRS = [-10.0, -9.0, -8.5, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0]
SLOPES = {0: -0.5, 1: -0.3}  # per seed: log2(lr*) moves by this per doubling of width


def fails(capsys, argv: list[str], *fragments: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("steepest-bench: error: "), err
    for f in fragments:
        assert f in err[0], err[0]


def write_run(out: Path, width: int, lr: float, seed: int, final: float | None, steps: int = 10, optimizer: str = "muon") -> Path:
    """A run folder as ``sweep --widths`` writes it; ``final=None``: the run diverged."""
    cfg = get_task("digits-mlp").config(optimizer, lr=lr, seed=seed, steps=steps, model={"width": width}, kind="sweep")
    rd = run_dir(width_folder(out, width), cfg)
    rd.mkdir(parents=True)
    (rd / "config.json").write_text(json.dumps({"run": cfg.to_dict(), "env": {"processor": "test", "cpu_count": 2, "torch_threads": 1}}))
    records = [{"step": 0, "val_loss": 2.3}]
    if final is not None:
        records.append({"step": steps, "val_loss": final})
    (rd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (rd / "result.json").write_text(json.dumps({"status": "diverged" if final is None else "completed"}))
    return rd


def parabola(log2_lr: float, width: int, seed: int) -> float:
    """Loss with its minimum at log2(lr*) = -6 + slope·log2(width/32)."""
    c = -6.0 + SLOPES[seed] * math.log2(width / 32)
    return 0.1 + 0.05 * (log2_lr - c) ** 2


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    for w in WIDTHS:
        for x in LOG2_LRS:
            for seed in SLOPES:
                diverged = w == 256 and x == LOG2_LRS[-1] and seed == 0
                write_run(tmp_path, w, 2.0**x, seed, None if diverged else parabola(x, w, seed))
    return tmp_path


def test_optimum_is_the_parabola_vertex_on_an_uneven_grid():
    x = np.array([-10.0, -9.0, -8.5, -7.0, -4.0])
    for c in (-9.3, -8.7, -7.9, -6.0):
        y = 0.2 + 0.7 * (x - c) ** 2
        log2_lr, i, bracketed = optimum_log2_lr(2.0**x, y)
        assert bracketed and abs(log2_lr - c) < 1e-9, (c, log2_lr)
    # The best rate at an edge: the grid point, flagged as a bound.
    y = (x + 11.0) ** 2
    assert optimum_log2_lr(2.0**x, y) == (-10.0, 0, False)
    assert optimum_log2_lr(2.0**x, (x + 1.0) ** 2) == (-4.0, 4, False)
    # A diverged neighbour: no parabola through it, the grid point stands.
    y = np.array([3.0, 1.0, 0.5, math.inf, math.inf])
    assert optimum_log2_lr(2.0**x, y) == (-8.5, 2, True)
    assert optimum_log2_lr(2.0**x, [math.inf] * 5) is None
    with pytest.raises(ValueError, match="strictly increasing"):
        optimum_log2_lr([1e-2, 1e-3], [1.0, 2.0])


def test_shift_per_doubling_is_the_least_squares_slope():
    w = np.array([32, 64, 128, 256, 512])
    rng = np.random.default_rng(0)
    v = 1.5 - 0.37 * np.log2(w) + 0.01 * rng.standard_normal(5)
    expected = np.polyfit(np.log2(w).astype(np.float64), v, 1)[0]
    assert abs(shift_per_doubling(w, v) - expected) < 1e-12
    assert abs(shift_per_doubling(w, 1.5 - 0.37 * np.log2(w)) + 0.37) < 1e-12
    assert math.isnan(shift_per_doubling([32, 64], [1.0, math.nan]))


def test_analysis_recovers_known_optima_and_shifts(synthetic):
    (t,) = analyse(load_runs(synthetic))
    assert [c.width for c in t.curves] == WIDTHS
    for c in t.curves:
        for seed in SLOPES:
            expected = -6.0 + SLOPES[seed] * math.log2(c.width / 32)
            assert abs(c.seed_optima[seed][0] - expected) < 1e-9
        # Equal curvatures: the seed-mean curve's vertex is the mean of the seeds' vertices.
        assert abs(c.optimum[0] - (-6.0 + np.mean(list(SLOPES.values())) * math.log2(c.width / 32))) < 1e-9
    assert abs(t.shift - np.mean(list(SLOPES.values()))) < 1e-9
    for seed, slope in SLOPES.items():
        assert abs(t.seed_shifts[seed] - slope) < 1e-9
    assert t.bracketed
    # The diverged run counts as +inf at its rate (width 256, largest lr, seed 0).
    last = t.curves[-1]
    assert math.isinf(last.finals[-1, 0]) and math.isfinite(last.finals[-1, 1])
    d = t.to_dict()
    assert d["curves"][-1]["finals"][-1][0] == "inf"
    assert abs(math.log2(d["optimal_lr"]["32"]) + 6.0) < 1e-9
    assert abs(d["seed_shift_std"] - 0.1) < 1e-9


def test_plot_transfer_writes_figure_and_table(synthetic, capsys):
    assert main(["plot", str(synthetic), "--transfer", "--formats", "png,svg", "--name", "claim7"]) == 0
    out = capsys.readouterr().out
    for ext in ("png", "svg", "md", "json"):
        assert (synthetic / f"claim7-digits-mlp-transfer.{ext}").is_file()
    assert (synthetic / "claim7-digits-mlp-transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    row = next(line for line in out.splitlines() if line.startswith("| muon |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{2.0**-6:.3g}"  # lr* at width 32
    assert cells[5].startswith("-0.40")  # the seed-mean shift per doubling
    assert cells[6].startswith("-0.40 ± 0.10 [-0.50, -0.30]")
    saved = json.loads((synthetic / "claim7-digits-mlp-transfer.json").read_text())
    assert saved[0]["optimizer"] == "muon" and abs(saved[0]["shift_per_doubling"] + 0.4) < 1e-9


def test_unbracketed_optimum_is_reported_as_a_bound(tmp_path):
    for w in (32, 64):
        for x in (-8.0, -7.0, -6.0):
            write_run(tmp_path, w, 2.0**x, 0, 0.1 + (x + 9.0) ** 2)  # best below the grid
    (t,) = analyse(load_runs(tmp_path))
    assert not t.bracketed
    table = transfer_table([t])
    assert f"<= {2.0**-8:.3g}" in table and "a bound" in table


def test_mixed_settings_and_single_width_are_refused(tmp_path, capsys):
    write_run(tmp_path, 32, 1e-2, 0, 0.5)
    fails(capsys, ["plot", str(tmp_path), "--transfer"], "no optimizer has runs at two or more widths")
    write_run(tmp_path, 64, 1e-2, 0, 0.5, steps=20)
    fails(capsys, ["plot", str(tmp_path), "--transfer"], "differ in steps")


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--widths", "32"], ["at least two widths"]),
        (["--widths", "32,x"], ["'x' is not a positive integer"]),
        (["--widths", "16,32", "--width", "64"], ["--widths sets the model option width", "--width"]),
        (["--widths", "16,32", "--model", "width=64"], ["--widths sets the model option width"]),
        (["--widths", "16,32", "--task", "cifar10-resnet"], ["no single width option", "digits-mlp", "shakespeare-gpt"]),
    ],
)
def test_bad_widths(capsys, tmp_path, extra, fragments):
    fails(capsys, ["sweep", "--optimizers", "muon", "--lrs", "1e-2,1e-1", "--out", str(tmp_path)] + extra, *fragments)


def test_tiny_real_sweep_over_widths(tmp_path, capsys):
    """2 widths x 2 rates x 1 seed of the real task: each run found again by its folder, and the
    transfer table's numbers equal the losses read back from the runs' own metrics files."""
    out = tmp_path / "transfer"
    widths, lrs = [8, 16], [1e-3, 1e-1]
    argv = ["sweep", "--task", "digits-mlp", "--optimizers", "muon-rms-to-rms", "--widths", ",".join(map(str, widths)),
            "--lrs", ",".join(map(str, lrs)), "--steps", "4", "--eval-every", "2", "--device", "cpu", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    finals = {}
    for w in widths:
        for lr in lrs:
            rd = out / f"width={w}" / "digits-mlp" / "sweep" / "muon-rms-to-rms" / f"lr={format_lr(lr)}" / "seed=0"
            cfg = json.loads((rd / "config.json").read_text())["run"]
            assert cfg["model"]["width"] == w and cfg["lr"] == lr and cfg["optimizer"] == "muon-rms-to-rms"
            evals = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]
            assert evals[-1]["step"] == 4
            finals[(w, lr)] = evals[-1]["val_loss"]
    assert (out / "digits-mlp-transfer.png").is_file()
    (saved,) = json.loads((out / "digits-mlp-transfer.json").read_text())
    for c in saved["curves"]:
        assert c["finals"] == [[finals[(c["width"], lr)]] for lr in lrs]
        best = min(lrs, key=lambda lr: finals[(c["width"], lr)])
        assert saved["grid_best_lr"][str(c["width"])] == best
        assert saved["bracketed"][str(c["width"])] is False  # two rates: the best is always an edge
    expected = math.log2(saved["grid_best_lr"]["16"] / saved["grid_best_lr"]["8"])
    assert abs(saved["shift_per_doubling"] - expected) < 1e-12
    # Rerunning the same command retrains nothing: every run is found again.
    capsys.readouterr()
    assert main(argv[:-1] + ["--no-plots"]) == 0
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize("name, scale", [("muon-rms-to-rms", "rms_to_rms"), ("muon-match-adamw", "match_adamw")])
def test_muon_scale_is_selectable_by_name(name, scale):
    """The first update of each hidden matrix is the plain ``muon`` one (scale "original",
    √max(1, m/n)) times the ratio of the scales: √(m/n) for rms_to_rms, 0.2·√max(m, n) for
    match_adamw (a 128x256 and a 256x128 weight)."""
    expected = {
        "rms_to_rms": lambda m, n: math.sqrt(m / n) / math.sqrt(max(1.0, m / n)),
        "match_adamw": lambda m, n: 0.2 * math.sqrt(max(m, n)) / math.sqrt(max(1.0, m / n)),
    }[scale]
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))
    x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))
    deltas = {}
    for opt_name in ("muon", name):
        model = nn.Sequential(*[type(m)(m.in_features, m.out_features) if isinstance(m, nn.Linear) else m for m in base])
        model.load_state_dict(base.state_dict())
        opt = build_optimizer(model, opt_name, lr=1e-2)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        deltas[opt_name] = [(model[i].weight - base[i].weight).detach().double() for i in (0, 2)]
    groups = [g for o in opt.optimizers for g in o.param_groups if "scale" in g]
    assert groups and all(g["scale"] == scale for g in groups)
    for d_new, d_ref, (m, n) in zip(deltas[name], deltas["muon"], [(128, 256), (256, 128)]):
        ratio = torch.linalg.vector_norm(d_new) / torch.linalg.vector_norm(d_ref)
        assert abs(ratio.item() / expected(m, n) - 1) < 1e-4, (m, n, ratio.item())
        cos = (d_new * d_ref).sum() / (torch.linalg.vector_norm(d_new) * torch.linalg.vector_norm(d_ref))
        assert cos.item() > 1 - 1e-6
