"""The committed results in docs/results/ regenerate the committed reports (issue 8)."""

from __future__ import annotations

import math
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


@pytest.mark.parametrize("folder,name,task", [("transfer", "claim7", "digits-mlp"), ("transfer-modular-gpt", "claim7-modular-gpt", "shakespeare-gpt")])
def test_transfer_table_rebuilds_from_the_committed_sweep(tmp_path, folder, name, task):
    """Claim 7's tables (docs/results/transfer, and the all-normed GPT rerun) regenerate from the committed runs."""
    committed = RESULTS / folder
    table = committed / f"{name}-{task}-transfer.md"
    assert table.is_file(), "run docs/results/regenerate.sh"
    copy = tmp_path / folder
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("*.png", "*.svg", "*.pt", "claim7-*"))
    assert main(["plot", str(copy), "--transfer", "--name", name, "--formats", "png"]) == 0
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


def test_modular_defaults_are_what_the_rule_chose():
    """The registered rate and radii of ``modular`` and ``scion`` are the setting that
    docs/results/defaults.md's radii tables pick (least worst share over the tasks)."""
    import inspect

    from steepest.optim.modular import Modular
    from steepest.optim.registry import registration

    text = (RESULTS / "defaults.md").read_text()
    defaults = inspect.signature(Modular).parameters
    for name in ("modular", "scion"):
        table = text.split(f"## {name}: radii and rate")[1]
        m = re.search(r"Least worst share: (\S+) at lr (\S+)\.", table)
        assert m, f"no winner in {name}'s radii table"
        radii = dict(kv.split("=") for kv in m.group(1).split(","))
        assert math.isclose(registration(name).default_lr, float(m.group(2)), rel_tol=0.01)
        for key, value in radii.items():
            assert defaults[key].default == float(value), f"{name}: {key}"
