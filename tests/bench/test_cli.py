"""The ``steepest-bench`` command: list, run, sweep, plot, report, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from benchutil import subprocess_env, write_cifar10, write_tinystories

from steepest.bench.cli import main
from steepest.bench.config import format_lr
from steepest.bench.tasks import TASKS, get_task
from steepest.optim.build import optimizer_names

FAST = ["--model-size", "tiny", "--device", "cpu", "--quiet"]


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def fails(capsys, argv: list[str], *fragments: str) -> str:
    """Run ``argv``; assert a non-zero exit with one line on stderr holding every fragment."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("steepest-bench: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in TASKS:
        assert f"  {name} " in out
    for name in optimizer_names():
        assert f"  {name} " in out


def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "steepest.bench", "list"], env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "digits-mlp" in proc.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "run" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["run", "--task", "nope"], ["unknown task 'nope'", "valid tasks: digits-mlp, digits-cnn"]),
        (["sweep", "--task", "nope", "--optimizer", "sgd"], ["unknown task 'nope'"]),
        (["run", "--optimizers", "sgd,nope"], ["unknown optimizer 'nope'", "valid optimizers:", "sgd", "adamw"]),
        (["sweep", "--optimizer", "nope"], ["unknown optimizer 'nope'", "valid optimizers:"]),
        (["run", "--optimizers", "muon(wd=0.1)"], ["muon has no option 'wd'", "weight_decay"]),
        (["run", "--optimizers", "muon(weight_decay=0.1"], ["bad optimizer variant", "NAME(KEY=VALUE,...)"]),
        (["run", "--steps", "0"], ["--steps", "positive integer"]),
        (["run", "--steps", "-3"], ["--steps", "positive integer"]),
        (["run", "--steps", "many"], ["--steps", "positive integer"]),
        (["run", "--seeds", "0"], ["--seeds", "positive integer"]),
        (["run", "--lr", "adamw"], ["bad --lr 'adamw'", "NAME=VALUE"]),
        (["run", "--lr", "adamw=fast"], ["bad --lr adamw=fast", "not a number"]),
        (["run", "--lr", "adamw=-1"], ["bad --lr adamw=-1", "positive"]),
        (["run", "--lr", "adamw=nan"], ["bad --lr adamw=nan", "positive finite"]),
        (["run", "--optimizers", "sgd", "--lr", "adamw=0.1"], ["'adamw' is not among the optimizers"]),
        (["sweep", "--optimizer", "sgd", "--lrs", "0.1,,x"], ["--lrs"]),
        (["run", "--model-size", "huge"], ["no model size 'huge'", "tiny"]),
        (["run", "--model", "depth=two"], ["model option depth", "int"]),
        (["run", "--model", "heads=2"], ["no model option 'heads'"]),
        (["run", "--task", "digits-mlp", "--tokenizer", "char"], ["no data option 'tokenizer'"]),
        (["run", "--resume", "--overwrite"], ["exclude each other"]),
        (["run", "--device", "tpu"], ["unknown device 'tpu'"]),
        (["run", "--bogus"], ["unrecognized arguments: --bogus"]),
        (["run", "--step", "10"], ["unrecognized arguments: --step 10", "did you mean --steps?"]),
        (["sweep", "--optimizer", "sgd", "--lr", "0.1"], ["unrecognized arguments: --lr", "--lrs"]),
        (["run", "--grad-clip", "nan"], ["--grad-clip", "finite"]),
        (["run", "--resume"], ["--resume: nothing to resume", "digits-mlp", "drop --resume"]),
        (["sweep", "--optimizer", "sgd", "--resume"], ["nothing to resume"]),
        (["frobnicate"], ["invalid choice"]),
        (["report", "runs", "--target-acc", "95"], ["--target-acc", "[0, 1]"]),
    ],
)
def test_bad_input_gives_one_line_error(capsys, tmp_path, argv, fragments):
    fails(capsys, [*argv, "--out", str(tmp_path)] if argv[0] in ("run", "sweep") else argv, *fragments)
    assert not any(tmp_path.iterdir())  # nothing was started


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(capsys, tmp_path):
    fails(capsys, ["run", "--device", "cuda", "--out", str(tmp_path)], "no CUDA device")


def test_missing_or_bad_data_dirs(capsys, tmp_path):
    out = ["--out", str(tmp_path / "out"), *FAST]
    fails(capsys, ["run", "--task", "cifar10-mlp", *out], "--data-dir", "STEEPEST_DATA", "cifar-10-python.tar.gz")
    fails(capsys, ["run", "--task", "cifar10-resnet", "--data-dir", str(tmp_path / "void"), *out], "does not exist")
    fails(capsys, ["run", "--task", "cifar10-mlp", "--data-dir", str(tmp_path), *out], "data_batch_1", "cifar-10-python.tar.gz")
    folder = write_cifar10(tmp_path / "partial")
    (folder / "data_batch_5").unlink()
    fails(capsys, ["run", "--task", "cifar10-mlp", "--data-dir", str(tmp_path / "partial"), *out], "missing", "data_batch_5")
    folder = write_cifar10(tmp_path / "garbled")
    (folder / "test_batch").write_text("hello")
    fails(capsys, ["run", "--task", "cifar10-mlp", "--data-dir", str(tmp_path / "garbled"), *out], "test_batch", "not a CIFAR-10")
    fails(capsys, ["run", "--task", "tinystories-gpt", *out], "TinyStories", "STEEPEST_DATA")
    write_tinystories(tmp_path / "ts")
    (tmp_path / "ts" / "TinyStories-valid.txt").unlink()
    fails(capsys, ["run", "--task", "tinystories-gpt", "--data-dir", str(tmp_path / "ts"), *out], "TinyStories-valid.txt")


def test_data_dir_from_environment(monkeypatch, tmp_path, cifar_root):
    monkeypatch.setenv("STEEPEST_DATA", str(cifar_root))
    argv = ["run", "--task", "cifar10-mlp", "--optimizers", "sgd", "--seeds", "1", "--steps", "2", "--batch-size", "16", "--no-plots"]
    assert main([*argv, *FAST, "--out", str(tmp_path)]) == 0


def test_output_folder_holding_another_run(capsys, tmp_path):
    base = ["run", "--optimizers", "adamw", "--seeds", "1", "--no-plots", "--out", str(tmp_path), *FAST]
    assert main([*base, "--steps", "4"]) == 0
    assert main([*base, "--steps", "4"]) == 0  # the same run again: already complete, nothing to do
    fails(capsys, [*base, "--steps", "5"], "holds a different run", "steps", "--overwrite")
    fails(capsys, [*base, "--steps", "5", "--resume"], "holds a different run")
    assert main([*base, "--steps", "5", "--overwrite"]) == 0
    cfg = json.loads(next(tmp_path.rglob("config.json")).read_text())
    assert cfg["run"]["steps"] == 5
    (tmp_path / "file").write_text("x")
    fails(capsys, [*base[:-len(FAST) - 2], "--out", str(tmp_path / "file"), *FAST], "not a folder")


def test_nan_loss_stops_that_run_and_keeps_the_others(capsys, tmp_path):
    argv = ["run", "--optimizers", "sgd,adamw", "--lr", "sgd=1e6", "--seeds", "1", "--steps", "15", "--out", str(tmp_path), *FAST]
    assert run_cli(argv) == 1
    captured = capsys.readouterr()
    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == 1 and "diverged" in err_lines[0] and "nan" in err_lines[0].lower()
    task = tmp_path / "digits-mlp"
    sgd = json.loads(next((task / "sgd").rglob("result.json")).read_text())
    adamw = json.loads(next((task / "adamw").rglob("result.json")).read_text())
    assert sgd["status"] == "diverged" and adamw["status"] == "completed"
    assert (task / "validation.png").exists() and "diverged" in (task / "report.md").read_text()


def test_run_plot_report(capsys, tmp_path):
    argv = ["run", "--optimizers", "sgd,adamw", "--seeds", "2", "--steps", "12", "--eval-every", "4", "--out", str(tmp_path), *FAST, "--no-plots"]
    assert main(argv) == 0
    task = tmp_path / "digits-mlp"
    assert not (task / "validation.png").exists()
    capsys.readouterr()
    assert main(["plot", str(tmp_path)]) == 0
    for stem in ("validation", "train_loss"):
        for ext in ("png", "svg"):
            assert (task / f"{stem}.{ext}").stat().st_size > 1000
    assert main(["report", str(task), "--target-acc", "0.3"]) == 0
    out = capsys.readouterr().out
    report = (task / "report.md").read_text()
    assert report in out
    assert "| optimizer | lr | seeds |" in report and "time to val_acc ≥ 0.3" in report
    task_ = get_task("digits-mlp")
    for name in ("adamw", "sgd"):
        assert f"| {name} | {format_lr(task_.default_lr(name))} | 2 | 2 completed |" in report
    assert "optimizer.step share" in report


def test_variants_run_side_by_side_in_their_own_folders(capsys, tmp_path):
    """``NAME(KEY=VALUE,...)`` runs that optimizer with those options, under that name: its own
    folder, report row, lr (``--lr NAME(...)=VALUE``) and resume, next to the plain name."""
    cautious = "muon(weight_decay=0.1,cautious_weight_decay=True)"
    argv = ["run", "--optimizers", f"muon,{cautious}", "--lr", f"{cautious}=0.01", "--seeds", "1", "--steps", "6",
            "--eval-every", "3", "--out", str(tmp_path), *FAST, "--no-plots"]
    assert main(argv) == 0
    folder = tmp_path / "digits-mlp" / cautious / "lr=0.01" / "seed=0"
    cfg = json.loads((folder / "config.json").read_text())["run"]
    assert cfg["optimizer"] == cautious
    assert main(["report", str(tmp_path)]) == 0
    report = (tmp_path / "digits-mlp" / "report.md").read_text()
    assert f"| {cautious} | 0.01 | 1 | 1 completed |" in report and "| muon |" in report
    assert main([*argv, "--resume"]) == 0  # ended runs are found again under the variant's name


def test_thin_keeps_evaluations_and_every_nth_step(capsys, tmp_path):
    argv = ["run", "--optimizers", "sgd", "--seeds", "1", "--steps", "23", "--eval-every", "5", "--out", str(tmp_path), *FAST, "--no-plots"]
    assert main(argv) == 0
    metrics = next(tmp_path.rglob("metrics.jsonl"))
    before = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert main(["report", str(tmp_path)]) == 0
    report = (tmp_path / "digits-mlp" / "report.md").read_text()
    capsys.readouterr()
    assert main(["thin", str(tmp_path), "--every", "4"]) == 0
    after = [json.loads(line) for line in metrics.read_text().splitlines()]
    evals = {r["step"] for r in before if "val_loss" in r}
    assert evals == {0, 5, 10, 15, 20, 23}
    assert [r["step"] for r in after] == sorted(evals | {4, 8, 12, 16})
    assert f"kept {len(after)} of {len(before)}" in capsys.readouterr().out
    assert [r for r in before if r["step"] in evals] == [r for r in after if r["step"] in evals]
    assert main(["report", str(tmp_path)]) == 0  # the report needs only what thinning keeps
    assert (tmp_path / "digits-mlp" / "report.md").read_text() == report
    fails(capsys, ["thin", str(tmp_path), "--every", "0"], "--every")


def test_plot_a_subset_under_a_name(capsys, tmp_path):
    argv = ["run", "--optimizers", "sgd,adamw", "--seeds", "1", "--steps", "6", "--eval-every", "3", "--out", str(tmp_path), *FAST, "--no-plots"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["plot", str(tmp_path), "--optimizers", "sgd", "--name", "claim1"]) == 0
    assert (tmp_path / "digits-mlp" / "claim1-validation.png").stat().st_size > 1000
    assert (tmp_path / "digits-mlp" / "claim1-validation.svg").stat().st_size > 1000
    assert not (tmp_path / "digits-mlp" / "validation.png").exists()
    assert main(["plot", str(tmp_path), "--name", "pngonly", "--formats", "png"]) == 0
    assert (tmp_path / "digits-mlp" / "pngonly-validation.png").exists()
    assert not (tmp_path / "digits-mlp" / "pngonly-validation.svg").exists()
    fails(capsys, ["plot", str(tmp_path), "--optimizers", "muon"], "no runs of muon")
    fails(capsys, ["plot", str(tmp_path), "--name", "a/b"], "--name must be")
    fails(capsys, ["plot", str(tmp_path), "--formats", "pdf"], "--formats takes png and/or svg")


def test_plot_and_report_need_runs(capsys, tmp_path):
    fails(capsys, ["plot", str(tmp_path)], "no runs found")
    fails(capsys, ["report", str(tmp_path / "missing")], "does not exist")


def test_sweep_then_run_with_the_best_lr(capsys, tmp_path):
    sweep = ["sweep", "--optimizer", "sgd", "--lrs", "0.01,0.1,1e6", "--steps", "15", "--out", str(tmp_path), *FAST]
    assert main(sweep) == 0
    summary = json.loads((tmp_path / "digits-mlp" / "sweep" / "sgd" / "sweep.json").read_text())
    assert summary["best_lr"] in (0.01, 0.1)
    statuses = {row["lr"]: row["statuses"] for row in summary["results"]}
    assert statuses[1e6] == ["diverged"]
    assert (tmp_path / "digits-mlp" / "sweep.png").exists()
    assert "Learning-rate sweeps" in (tmp_path / "digits-mlp" / "report.md").read_text()
    capsys.readouterr()
    run = ["run", "--optimizers", "sgd,adamw", "--seeds", "1", "--steps", "5", "--lr-from-sweep", "--out", str(tmp_path), *FAST]
    assert main(run) == 0
    assert "no sweep result for adamw" in capsys.readouterr().err
    best = summary["best_lr"]
    assert (tmp_path / "digits-mlp" / "sgd" / f"lr={best:.6g}" / "seed=0" / "result.json").exists()
    assert (tmp_path / "digits-mlp" / "adamw" / f"lr={format_lr(get_task('digits-mlp').default_lr('adamw'))}").exists()
    fails(capsys, ["run", "--lr-from-sweep", str(tmp_path / "nothing"), "--out", str(tmp_path), *FAST], "no sweep results")


def test_default_run_writes_figures(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path), "--steps", "10", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    task = tmp_path / "digits-mlp"
    expected = [n for n in get_task("digits-mlp").optimizers if n in optimizer_names()] or ["sgd", "adamw"]
    assert sorted(p.name for p in task.iterdir() if p.is_dir()) == sorted(expected)
    seeds = get_task("digits-mlp").seeds
    assert len(list(task.rglob("result.json"))) == seeds * len(expected)
    assert (task / "validation.png").exists() and (task / "validation.svg").exists()
    assert f"wrote {task / 'report.md'}" in out


def test_gpt_size_flags(tmp_path):
    argv = ["run", "--task", "shakespeare-gpt", "--optimizers", "adamw", "--steps", "2", "--n-layer", "1", "--n-embd", "16",
            "--n-head", "2", "--block-size", "8", "--batch-size", "4", "--tokenizer", "byte", "--data", "eval_windows=4",
            "--no-plots", "--out", str(tmp_path), *FAST]  # fmt: skip
    assert main(argv) == 0
    cfg = json.loads(next(Path(tmp_path).rglob("config.json")).read_text())["run"]
    assert cfg["model"]["n_layer"] == 1 and cfg["model"]["block_size"] == 8 and cfg["data"]["tokenizer"] == "byte"


def test_optimizer_refusing_the_model_keeps_the_others(monkeypatch, capsys, tmp_path):
    import steepest.optim.build as build

    real = build.build_optimizer

    def picky(model, name, **kw):
        if name == "sgd":
            raise ValueError("sgd only supports 2-D parameters (a stand-in for a real refusal)")
        return real(model, name, **kw)

    monkeypatch.setattr(build, "build_optimizer", picky)
    argv = ["run", "--optimizers", "sgd,adamw", "--seeds", "2", "--steps", "3", "--out", str(tmp_path), *FAST]
    assert run_cli(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optimizer sgd cannot train task digits-mlp" in err[0] and "2-D" in err[0]
    assert not (tmp_path / "digits-mlp" / "sgd").exists()
    assert len(list((tmp_path / "digits-mlp" / "adamw").rglob("result.json"))) == 2


def test_out_under_a_file_fails_before_loading(monkeypatch, capsys, tmp_path):
    import steepest.bench.train as train_module

    def no_training(*a, **k):
        raise AssertionError("--out must be checked before any data or model loads")

    monkeypatch.setattr(train_module, "train", no_training)
    (tmp_path / "file").write_text("x")
    for command in (["run"], ["sweep", "--optimizer", "sgd"]):
        line = fails(capsys, [*command, "--out", str(tmp_path / "file" / "sub"), *FAST], "--out", "is a file", "choose another --out")
        assert str(tmp_path / "file") in line


def test_resume_starts_the_runs_that_never_started(capsys, tmp_path):
    base = ["run", "--seeds", "1", "--steps", "3", "--no-plots", "--out", str(tmp_path), *FAST]
    assert main([*base, "--optimizers", "sgd"]) == 0
    assert main([*base, "--optimizers", "sgd,adamw", "--resume"]) == 0
    assert (tmp_path / "digits-mlp" / "adamw").is_dir()


def _unavailable(monkeypatch, name: str) -> None:
    import dataclasses

    import steepest.optim.build as build

    monkeypatch.setitem(build.OPTIMIZERS, name, dataclasses.replace(build.OPTIMIZERS[name], available=lambda: False))


def test_missing_peer_names_the_extra(monkeypatch, capsys, tmp_path):
    _unavailable(monkeypatch, "heavyball-muon")
    assert main(["list"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("  heavyball-muon "))
    assert 'not installed: pip install -e ".[peers]"' in line
    fails(capsys, ["run", "--optimizers", "heavyball-muon", "--out", str(tmp_path)], "'heavyball-muon'", 'pip install -e ".[peers]"')
    fails(capsys, ["sweep", "--optimizer", "muon,heavyball-muon", "--out", str(tmp_path)], 'pip install -e ".[peers]"')
    assert not any(tmp_path.iterdir())


def test_list_shows_every_registered_optimizer(capsys):
    from steepest.optim.build import OPTIMIZERS

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, spec in OPTIMIZERS.items():  # variants registered on use by other tests are not listed
        assert (f"  {name} " in out) != bool(spec.variant_of)
    assert any(spec.peer for spec in OPTIMIZERS.values())


def test_report_warns_about_damaged_metrics(capsys, tmp_path):
    argv = ["run", "--optimizers", "sgd", "--seeds", "2", "--steps", "8", "--eval-every", "4", "--out", str(tmp_path), *FAST, "--no-plots"]
    assert main(argv) == 0
    metrics = tmp_path / "digits-mlp" / "sgd" / f"lr={format_lr(get_task('digits-mlp').default_lr('sgd'))}" / "seed=1" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[3] = "garbage from a bad copy"
    lines.append(lines[-1][: len(lines[-1]) // 2])  # a torn write
    metrics.write_text("\n".join(lines))
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("steepest-bench: warning: ")
    assert str(metrics) in err[0] and f"lines 4, {len(lines)}" in err[0]
    report = (tmp_path / "digits-mlp" / "report.md").read_text()
    assert "2 completed (1 with damaged metrics" in report
    assert f"damaged metrics: sgd lr={format_lr(get_task('digits-mlp').default_lr('sgd'))} seed=1" in report and str(metrics) in report
    assert main(["plot", str(tmp_path), "--formats", "png"]) == 0
    assert str(metrics) in capsys.readouterr().err
    fails(capsys, ["thin", str(tmp_path)], str(metrics), "line")


def test_tinystories_shorter_than_one_window(capsys, tmp_path):
    write_tinystories(tmp_path / "ts")
    short = tmp_path / "ts" / "TinyStories-valid.txt"
    short.write_text("Once upon a time.\n<|endoftext|>\n")
    argv = ["run", "--task", "tinystories-gpt", "--data-dir", str(tmp_path / "ts"), "--block-size", "64", "--out", str(tmp_path / "out"), *FAST]
    fails(capsys, argv, str(short), "--block-size", "complete file")


def test_progress_lines_when_stderr_is_not_a_terminal(capsys, tmp_path):
    argv = ["run", "--optimizers", "sgd", "--seeds", "1", "--steps", "30", "--device", "cpu", "--model-size", "tiny", "--no-plots",
            "--out", str(tmp_path)]  # fmt: skip
    assert main([*argv, "--progress-every", "1e-9"]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) >= 20, lines
    assert all(" sgd lr=" in l and "steps/s" in l and "s left" in l for l in lines), lines
    steps = [int(l.split(": step ")[1].split("/")[0]) for l in lines]
    assert steps == sorted(steps) and steps[-1] < 30 and all(f"/30 (" in l for l in lines)
    assert main([*argv, "--progress-every", "0", "--overwrite"]) == 0
    assert capsys.readouterr().err == ""


def test_init_modular_reaches_the_model_and_its_own_folder(capsys, tmp_path):
    """``--init modular``: recorded in the run's config, its own folder next to the default init's,
    and the model that trains is modular_init's (the step-0 weights differ from the default's)."""
    from steepest.bench.config import RunConfig, run_dir
    from steepest.bench.train import _initialise

    argv = ["run", "--optimizers", "scion", "--seeds", "1", "--steps", "4", "--eval-every", "2", "--out", str(tmp_path), *FAST, "--no-plots"]
    assert main([*argv, "--init", "modular"]) == 0
    assert main(argv) == 0
    lr = format_lr(get_task("digits-mlp").default_lr("scion"))
    ours = tmp_path / "digits-mlp" / "scion" / "init=modular" / f"lr={lr}" / "seed=0"
    cfg = RunConfig.from_dict(json.loads((ours / "config.json").read_text())["run"])
    assert cfg.init == "modular" and run_dir(tmp_path, cfg) == ours
    assert (tmp_path / "digits-mlp" / "scion" / f"lr={lr}" / "seed=0" / "result.json").exists()
    assert main([*argv, "--init", "modular", "--resume"]) == 0  # found again under its folder
    from steepest.bench.results import load_runs, task_dir

    assert {task_dir(r) for r in load_runs(tmp_path)} == {tmp_path / "digits-mlp"}  # reports and figures go there
    task = get_task("digits-mlp")
    from steepest.bench.models import MLP

    mlp = _initialise(MLP(64, 10, width=16, depth=2), cfg, task)
    assert not mlp.hidden[0].bias.any() and torch.equal(mlp.head.weight.abs(), torch.full((10, 16), 2.0**10 / 16))
    plain = MLP(64, 10, width=16, depth=2)
    assert _initialise(plain, RunConfig.from_dict({**cfg.to_dict(), "init": "default"}), task).head.bias.any()
    with pytest.raises(ValueError, match="unknown init 'orthogonal'; accepted values: 'default', 'modular'"):
        RunConfig(task="digits-mlp", optimizer="scion", lr=0.1, init="orthogonal")
    fails(capsys, [*argv, "--init", "orthogonal"], "--init")
