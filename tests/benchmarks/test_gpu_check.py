"""benchmarks/gpu_check.py: its --smoke mode runs every stage on the CPU at tiny sizes, so the
script is known to work before a GPU is lent; what it writes fits what the device tool brings
back (at most 8 plain files, names of letters, digits, '.', '_' and '-')."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_smoke_mode_runs_every_stage(tmp_path):
    out = tmp_path / "out"
    proc = _run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert all((out / f).is_file() for f in files)
    for name in ("summary.md", "log.txt", "cuda_tests.txt", "directions.md", "train_step.md", "shakespeare.md", "raw.tar.gz"):
        assert name in files
    summary = (out / "summary.md").read_text()
    assert summary in proc.stdout  # printed last, where the device tool's reply shows it
    stages = dict(re.findall(r"^\| ([a-z_ -]+?) \| ([^|]+?) \| [0-9.]+ \|$", summary, flags=re.M))
    for stage in ("cuda tests", "directions", "train_step", "shakespeare adamw", "shakespeare muon"):
        assert stages.get(stage) == "ok", (stage, stages)
    assert "test_cuda.py" in (out / "cuda_tests.txt").read_text()
    assert "| steepest Neon nuclear |" in (out / "directions.md").read_text()
    assert "| muon |" in (out / "train_step.md").read_text()
    table = (out / "shakespeare.md").read_text()
    for name in ("adamw", "muon"):
        row = next(l for l in table.splitlines() if l.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[2] == "completed" and cells[3] == "not reached" and int(cells[7]) == 6, row  # tiny run: 6 steps, loss ≫ 1.47
        assert float(cells[5]) > 1.47


def test_smoke_of_one_stage_and_the_run_report(tmp_path):
    """Only the Shakespeare stage, with a target the tiny runs reach: the steps and seconds to it
    are read from the runs' evaluations."""
    out = tmp_path / "out"
    proc = _run("--smoke", "--out", str(out), "--skip", "tests,kernel,directions,train_step", "--optimizers", "adamw", "--target-loss", "10")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    row = next(l for l in (out / "shakespeare.md").read_text().splitlines() if l.startswith("| adamw |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[3] == "0" and float(cells[4]) == 0.0  # the initial evaluation is already below 10


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_without_a_gpu_the_full_check_refuses_in_one_line(tmp_path):
    proc = _run("--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["gpu_check: error: no CUDA device here; run with --smoke to check the script on the CPU"]


def test_it_finds_the_cuda_tests():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_check import cuda_test_files
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert "tests/cuda/test_cuda.py" in cuda_test_files()
