"""The speed and accuracy scripts run and print their tables (tiny settings; the timings themselves
are never asserted: speed is measured by running the scripts, see docs/performance.md)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "benchmarks"


def run(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_directions_table():
    out = run("directions.py", "--set", "gpt2-width128", "--rows", "polar express,neon nuclear,sign,adamw,svd_lowrank",
              "--repeats", "1", "--budget", "1", "--peak-size", "256")
    assert "| method | ms/step |" in out
    for row in ("steepest Muon, Polar Express", "steepest Neon nuclear", "steepest sign", "torch.optim.AdamW(fused=True)"):
        line = next(l for l in out.splitlines() if l.startswith(f"| {row} |"))
        assert float(line.split("|")[2]) > 0
    assert "our Muon / our Neon nuclear" in out


def test_train_step_table():
    out = run("train_step.py", "--optimizers", "adamw,muon", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
              "--block-size", "16", "--batch", "2", "--repeats", "1", "--peak-size", "256")
    assert "| optimizer | forward+backward ms |" in out and "| muon |" in out


def test_lowrank_accuracy_table():
    out = run("lowrank_accuracy.py", "--tasks", "digits-mlp", "--capture-at", "3", "--consecutive", "2")
    for prefix in ("| nuclear | warm | k + 8 ↑8 | 1 (default) |", "| fstar | warm | k + 8 ↑8 | 2 (default) |"):
        line = next(l for l in out.splitlines() if l.startswith(prefix))
        worst_sigma_error = float(line.split("|")[5].split("/")[1])
        assert worst_sigma_error < 1e-2, line


def test_shampoo_identity_table():
    out = run("shampoo_identity.py")
    line = next(l for l in out.splitlines() if l.startswith("| gaussian |"))
    assert float(line.split("|")[4]) < 1e-12


@pytest.mark.skipif(sys.platform != "linux", reason="spawns gloo processes")
def test_distributed_benchmark():
    out = run("distributed.py", "--worlds", "1", "2", "--layers", "1", "--width", "32", "--steps", "2", "--warmup", "1", "--threads", "1")
    assert "speed-up" in out or "speedup" in out
    out = run("distributed.py", "--simulate", "2", "--layers", "1", "--width", "32", "--steps", "2", "--warmup", "1")
    assert out.strip()


def test_neon_step_size_table(tmp_path):
    out = run("neon_step_size.py", "--task", "digits-mlp", "--results", str(tmp_path), "--steps", "20")
    rows = {l.split("|")[1].strip(): l for l in out.splitlines() if l.startswith("| ") and "optimizer" not in l}
    assert set(rows) >= {"muon", "neon-nuclear", "neon-nuclear-drop"}
    assert float(rows["neon-nuclear-drop"].split("|")[3]) == 1.0  # sigma dropped: ‖ΔW‖₂ = η exactly
