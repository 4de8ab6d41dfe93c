"""benchmarks/cpu_muon.py runs and prints its table with the CPU named (tiny settings; its
timings are never asserted: docs/performance.md has the measured figures)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "benchmarks"


def test_cpu_muon_table():
    rows = "steepest.Muon default,torch.optim.Muon,matmul floor bf16,matmul floor float32,torch.optim.AdamW(fused=True)"
    result = subprocess.run([sys.executable, str(ROOT / "cpu_muon.py"), "--smoke", "--layers", "1", "--rows", rows],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "CPU: " in out and "kind " in out and "msgn iteration dtype here" in out
    for row in rows.split(","):
        line = next(l for l in out.splitlines() if l.startswith(f"| {row} |"))
        assert float(line.split("|")[2]) > 0
    assert "our default / its matmul floor" in out
