"""The committed results in docs/results/ regenerate the committed reports (issue 8)."""

from __future__ import annotations

import re
import subprocess
import sys
import shutil
from pathlib import Path

import pytest

from steepest.bench.cli import main

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
TASKS = ["digits-mlp", "digits-cnn", "shakespeare-gpt"]


@pytest.mark.parametrize("task", TASKS)
def test_report_rebuilds_the_committed_table(tmp_path, task):
    committed = RESULTS / task
    assert (committed / "report.md").is_file(), f"{committed}/report.md is missing: run docs/results/regenerate.sh"
    copy = tmp_path / task
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("*.png", "*.svg", "*.pt", "report.md"))
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.md").read_text() == (committed / "report.md").read_text()


def test_every_figure_in_the_results_doc_is_committed():
    doc = (RESULTS.parent / "results.md").read_text()
    figures = re.findall(r"\]\((results/[^)]+\.png)\)", doc)
    assert len(figures) >= 5, "results.md should show a figure per claim"
    for figure in figures:
        assert (RESULTS.parent / figure).is_file(), f"{figure} is missing: run docs/results/regenerate.sh"
    for task in TASKS:
        assert any((RESULTS / task).glob("*/lr=*/seed=*/metrics.jsonl")), f"no committed runs for {task}"


def test_transfer_table_rebuilds_from_the_committed_sweep(tmp_path):
    """Claim 7's table (docs/results/transfer) regenerates from the committed runs."""
    committed = RESULTS / "transfer"
    table = committed / "claim7-digits-mlp-transfer.md"
    assert table.is_file(), "run docs/results/regenerate.sh"
    copy = tmp_path / "transfer"
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("*.png", "*.svg", "*.pt", "claim7-*"))
    assert main(["plot", str(copy), "--transfer", "--name", "claim7", "--formats", "png"]) == 0
    assert (copy / table.name).read_text() == table.read_text()


def test_defaults_table_rebuilds_from_the_committed_sweeps():
    """docs/results/defaults.md, the registered default rates scored against the sweeps, is what
    docs/results/defaults.py makes of the committed runs and the current registry."""
    committed = RESULTS / "defaults.md"
    assert committed.is_file(), "run docs/results/regenerate.sh"
    out = subprocess.run([sys.executable, str(RESULTS / "defaults.py"), str(RESULTS)], capture_output=True, text=True, check=True).stdout
    assert out == committed.read_text()
    for name in ("muon", "dion", "neon-nuclear", "neon-fstar"):
        assert f"## {name} (registered default" in out
