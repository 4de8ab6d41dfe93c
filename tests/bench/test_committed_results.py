"""The committed results in docs/results/ regenerate the committed reports (issue 8)."""

from __future__ import annotations

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


def test_every_committed_figure_is_drawn_from_committed_runs():
    for task in TASKS:
        for figure in (RESULTS / task).glob("*.png"):
            assert figure.with_suffix(".svg").is_file(), f"{figure} has no SVG twin"
        assert any((RESULTS / task).glob("*/lr=*/seed=*/metrics.jsonl")), f"no committed runs for {task}"
