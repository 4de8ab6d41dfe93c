"""Every task trains on tiny data; every optimizer trains; resumption is exact."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from benchutil import subprocess_env

from steepest.bench.cli import main
from steepest.bench.config import format_lr
from steepest.bench.tasks import get_task, task_names
from steepest.bench.train import KILL_ENV, Incompatible, read_metrics, train
from tests.registered import registered

# Every registered optimizer; third-party peers (those of an optional dependency group: slow to
# build on CPU, e.g. compiled kernels) only with STEEPEST_BENCH_TEST_PEERS=1. torch.optim.Muon
# ships with torch and is kept.
OPTIMIZER_NAMES = registered(extras=os.environ.get("STEEPEST_BENCH_TEST_PEERS") == "1")

# The smallest sensible shape of each task (data folders come from fixtures).
TINY = {
    "digits-mlp": dict(model_size="tiny", batch_size=32),
    "digits-cnn": dict(model_size="tiny", batch_size=32),
    "cifar10-mlp": dict(model_size="tiny", batch_size=16),
    "cifar10-resnet": dict(model_size="tiny", batch_size=16),
    "shakespeare-gpt": dict(model_size="tiny", batch_size=8, data={"eval_windows": 16}),
    "pydoc-gpt": dict(model_size="tiny", batch_size=8, data={"eval_windows": 16}),
    "tinystories-gpt": dict(model_size="tiny", batch_size=8, data={"eval_windows": 16}),
}
# Where the CLI puts digits-mlp's adamw run at its default lr, seed 0.
ADAMW_RUN = Path("digits-mlp") / "adamw" / f"lr={format_lr(get_task('digits-mlp').default_lr('adamw'))}" / "seed=0"
DATA = {"cifar10-mlp": "cifar_root", "cifar10-resnet": "cifar_root", "tinystories-gpt": "tinystories_root"}


def tiny_config(request, task: str, optimizer: str = "adamw", **kw):
    opts = {**TINY[task], **kw}
    if task in DATA:
        opts.setdefault("data_dir", str(request.getfixturevalue(DATA[task])))
    return get_task(task).config(optimizer, **opts)


def losses(run_dir) -> list[tuple[int, float | None, float | None]]:
    return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in read_metrics(run_dir / "metrics.jsonl")]


def test_every_task_has_a_tiny_shape():
    assert set(TINY) == set(task_names())


@pytest.mark.parametrize("task", list(TINY))
def test_task_trains_a_few_steps(request, tmp_path, task):
    cfg = tiny_config(request, task, steps=6, eval_every=3)
    result = train(cfg, tmp_path, quiet=True)
    assert result.status == "completed"
    records = read_metrics(result.path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(7))
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]
    assert all(math.isfinite(r["val_loss"]) and 0 <= r["val_acc"] <= 1 for r in evals)
    assert all(math.isfinite(r["train_loss"]) and r["opt_time"] <= r["time"] for r in records[1:])
    config = json.loads((result.path / "config.json").read_text())
    assert config["run"] == cfg.to_dict() and config["env"]["torch"] == torch.__version__
    assert (result.path / "ckpt.pt").exists()
    assert json.loads((result.path / "result.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("task", ["digits-mlp", "digits-cnn"])
@pytest.mark.parametrize("optimizer", OPTIMIZER_NAMES)
def test_every_optimizer_trains(request, tmp_path, task, optimizer):
    cfg = tiny_config(request, task, optimizer, steps=8, eval_every=8)
    try:
        result = train(cfg, tmp_path, quiet=True)
    except Incompatible as e:  # e.g. a 2-D-only optimizer on conv weights: refused with a clear message
        assert optimizer in str(e) and task in str(e)
        pytest.skip(str(e))
    assert result.status == "completed", result.message
    records = read_metrics(result.path / "metrics.jsonl")
    assert records[-1]["val_loss"] < records[0]["val_loss"] * 1.5
    assert all(math.isfinite(r["train_loss"]) for r in records[1:])


class Crash(Exception):
    pass


def _crash_at(k: int):
    def callback(step: int, loss: float) -> None:
        if step == k:
            raise Crash(f"injected at step {k}")

    return callback


def _assert_same_run(a, b):
    assert losses(a) == losses(b)  # exact: same floats, bit for bit
    ca = torch.load(a / "ckpt.pt", weights_only=False)
    cb = torch.load(b / "ckpt.pt", weights_only=False)
    assert ca["step"] == cb["step"]
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k


@pytest.mark.parametrize("optimizer", OPTIMIZER_NAMES)
def test_resume_is_exact_for_every_optimizer(request, tmp_path, optimizer):
    cfg = tiny_config(request, "digits-mlp", optimizer, steps=12, eval_every=4, ckpt_every=5)
    full = train(cfg, tmp_path / "full", quiet=True)
    with pytest.raises(Crash):
        train(cfg, tmp_path / "cut", quiet=True, callback=_crash_at(8))
    cut_dir = full.path.relative_to(tmp_path / "full")
    assert max(r["step"] for r in read_metrics(tmp_path / "cut" / cut_dir / "metrics.jsonl")) == 8
    resumed = train(cfg, tmp_path / "cut", resume=True, quiet=True)
    assert resumed.status == "completed"
    _assert_same_run(full.path, resumed.path)


@pytest.mark.parametrize(
    "task, optimizer, kw",
    [
        ("cifar10-resnet", "sgd", {}),  # batch norm, augmentation, label smoothing
        ("shakespeare-gpt", "adamw", {"model": {"dropout": 0.1}}),  # dropout draws from the global RNG
        ("digits-cnn", "adamw", {"warmup_steps": 3}),
    ],
)
def test_resume_is_exact_across_tasks(request, tmp_path, task, optimizer, kw):
    cfg = tiny_config(request, task, optimizer, steps=9, eval_every=3, ckpt_every=4, **kw)
    full = train(cfg, tmp_path / "full", quiet=True)
    with pytest.raises(Crash):
        train(cfg, tmp_path / "cut", quiet=True, callback=_crash_at(6))
    resumed = train(cfg, tmp_path / "cut", resume=True, quiet=True)
    _assert_same_run(full.path, resumed.path)


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    args = ["run", "--task", "digits-mlp", "--optimizers", "adamw", "--seeds", "1", "--steps", "20",
            "--ckpt-every", "5", "--eval-every", "5", "--model-size", "tiny", "--device", "cpu",
            "--quiet", "--no-plots"]  # fmt: skip
    killed = subprocess.run(
        [sys.executable, "-m", "steepest.bench", *args, "--out", str(tmp_path / "cut")],
        env=subprocess_env(**{KILL_ENV: "13"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    run = tmp_path / "cut" / ADAMW_RUN
    assert not (run / "result.json").exists()
    assert max(r["step"] for r in read_metrics(run / "metrics.jsonl")) == 13
    assert torch.load(run / "ckpt.pt", weights_only=False)["step"] == 10
    # without --resume the unfinished run is refused
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "cut")])
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    full = tmp_path / "full" / ADAMW_RUN
    _assert_same_run(full, run)


def test_schedule_warmup_and_cooldown():
    cfg = get_task("digits-mlp").config("sgd", steps=10, warmup_steps=2, cooldown_frac=0.5)
    f = [cfg.lr_factor(s) for s in range(10)]
    assert f[0] == 0.5 and f[1] == 1.0 and f[4] == 1.0 and f[5] == 1.0 and f[9] == pytest.approx(0.2)


def _torchrun(args: list[str]) -> None:
    # A session of its own, so that a hang kills the launcher and its workers together.
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "steepest.bench", *args],
        env=subprocess_env(OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("torchrun run hung (killed after 180 s)")
    assert proc.returncode == 0, err[-3000:]


def test_torchrun_two_ranks_match_one_process(tmp_path):
    """Two gloo ranks each take half of every batch; rank 0 alone writes; same losses as one process."""
    args = ["run", "--task", "digits-mlp", "--optimizers", "adamw", "--seeds", "1", "--steps", "6", "--eval-every", "3",
            "--batch-size", "32", "--model-size", "tiny", "--device", "cpu", "--quiet", "--no-plots"]  # fmt: skip
    _torchrun([*args, "--out", str(tmp_path / "ddp")])
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    run = ADAMW_RUN
    ddp, single = losses(tmp_path / "ddp" / run), losses(tmp_path / "single" / run)
    assert [s for s, _, _ in ddp] == list(range(7))  # one writer: no duplicated lines
    assert json.loads((tmp_path / "ddp" / run / "config.json").read_text())["run"]["world_size"] == 2
    for (_, a, va), (_, b, vb) in zip(ddp, single):
        assert (a is None) == (b is None) and (a is None or a == pytest.approx(b, rel=1e-4, abs=1e-6))
        assert (va is None) == (vb is None) and (va is None or va == pytest.approx(vb, rel=1e-4, abs=1e-6))


def test_torchrun_with_batch_norm_model(tmp_path):
    """BatchNorm buffers make DDP's forward a collective: evaluation must not deadlock."""
    _torchrun(["run", "--task", "digits-cnn", "--optimizers", "sgd", "--seeds", "1", "--steps", "2", "--batch-size", "32",
               "--model-size", "tiny", "--device", "cpu", "--quiet", "--no-plots", "--out", str(tmp_path)])  # fmt: skip
    assert json.loads(next(tmp_path.rglob("result.json")).read_text())["status"] == "completed"


def test_run_reuses_a_completed_sweep_run_with_the_same_settings(request, tmp_path):
    from dataclasses import replace

    cfg = tiny_config(request, "digits-mlp", "muon", steps=6, eval_every=3)
    sweep = train(replace(cfg, kind="sweep"), tmp_path, quiet=True)
    fresh = train(cfg, tmp_path / "elsewhere", quiet=True)  # the same run, trained
    reused = train(cfg, tmp_path, quiet=True)
    assert reused.skipped and reused.path != sweep.path
    config = json.loads((reused.path / "config.json").read_text())
    assert config["run"]["kind"] == "run"
    assert config["reused_from"] == str(sweep.path.relative_to(tmp_path))
    assert losses(reused.path) == losses(sweep.path)
    assert [(s, t) for s, t, _ in losses(reused.path)] == [(s, t) for s, t, _ in losses(fresh.path)]
    other_seed = train(replace(cfg, seed=1), tmp_path, quiet=True)  # no twin: trained
    assert not other_seed.skipped and "reused_from" not in json.loads((other_seed.path / "config.json").read_text())
