"""The training loop: one run = one task x optimizer x lr x seed, with metrics, checkpoints and
exact resumption.

A run directory holds ``config.json`` (the :class:`RunConfig` plus versions and device; for a
text task the corpus's source and hash under ``corpus``; for a fine-tuned run, see
:mod:`.finetune`, its checkpoint's hashes under ``init``),
``metrics.jsonl`` (one line per step: ``step``, ``time`` (seconds of training so far, evaluation
and checkpointing excluded), ``opt_time`` (seconds of it inside ``optimizer.step``),
``train_loss``, ``lr``, and at evaluation steps ``val_loss``/``val_acc``; step 0 is the initial
evaluation), ``ckpt.pt`` (model, optimizer, global RNG states, step, clocks) and, once the run
ends, ``result.json`` (``status``: ``completed`` or ``diverged``).

Batches are pure functions of (seed, step) (see :mod:`.data`), so restoring the checkpoint
restores the whole state of the run: a resumed run's losses equal an uninterrupted run's bit
for bit (same device and software).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import RunConfig, environment, format_lr, run_dir
from .dist import DistContext
from .errors import BenchError
from ..optim import NonFiniteGradientError
from .models import count_parameters
from .tasks import Problem, get_task

__all__ = ["RunResult", "Diverged", "Incompatible", "train", "read_metrics", "KILL_ENV"]

CONFIG, METRICS, CKPT, RESULT = "config.json", "metrics.jsonl", "ckpt.pt", "result.json"
# For tests of --resume: SIGKILL this process right after the given step (and its checkpoint).
KILL_ENV = "STEEPEST_BENCH_KILL_AT_STEP"


class Diverged(Exception):
    """The training loss became NaN or infinite."""


class Incompatible(BenchError):
    """The optimizer refuses the task's model (e.g. a 2-D-only optimizer and conv weights)."""


@dataclass
class RunResult:
    """How a run ended: ``status`` ``completed`` or ``diverged``; ``skipped`` when it had
    already ended before this call (nothing was trained)."""

    config: RunConfig
    path: Path
    status: str
    message: str = ""
    final: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a torn last line, from a killed run, is skipped)."""
    records = []
    p = Path(path)
    if not p.exists():
        return records
    with open(p, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _plan(rd: Path, cfg: RunConfig, resume: bool, overwrite: bool) -> str:
    """``fresh``, ``resume`` or ``skip`` for the run directory ``rd``; refuses a different run."""
    if rd.exists() and not rd.is_dir():
        raise BenchError(f"output path {rd} exists and is not a folder")
    if not (rd / CONFIG).exists():
        if rd.exists() and any(rd.iterdir()) and not overwrite:
            raise BenchError(f"output folder {rd} is not empty and holds no run; pass --overwrite to use it anyway")
        return "fresh"
    if overwrite:
        return "fresh"
    try:
        old = RunConfig.from_dict(json.loads((rd / CONFIG).read_text())["run"])
    except (OSError, ValueError, KeyError, TypeError):
        raise BenchError(f"{rd / CONFIG} is unreadable; pass --overwrite to replace that run") from None
    diff = cfg.diff(old)
    if diff:
        shown = "; ".join(f"{k}: {b!r} there, {a!r} now" for k, (a, b) in list(diff.items())[:3])
        raise BenchError(f"output folder {rd} holds a different run ({shown}); pass --overwrite to replace it")
    if (rd / RESULT).exists():
        return "skip"
    if resume:
        return "resume"
    raise BenchError(f"output folder {rd} holds an unfinished run; pass --resume to continue it or --overwrite to restart it")


def _reuse_sweep_twin(out: str | os.PathLike, cfg: RunConfig, rd: Path) -> bool:
    """Copy a completed sweep run with the same settings (same lr and seed) into ``rd``.

    ``run --lr-from-sweep`` would otherwise retrain, bit for bit, the sweep's seed-0 run at the
    chosen rate. The copy's ``config.json`` records ``reused_from``.
    """
    if cfg.kind != "run":
        return False
    twin = run_dir(out, RunConfig.from_dict({**cfg.to_dict(), "kind": "sweep"}))
    if not (twin / RESULT).exists() or rd.exists():
        return False
    try:
        saved = json.loads((twin / CONFIG).read_text())
        old = RunConfig.from_dict(saved["run"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if {k for k in cfg.diff(old) if k != "kind"}:
        return False
    rd.mkdir(parents=True)
    for name in (METRICS, RESULT):
        shutil.copy2(twin / name, rd / name)
    saved["run"] = cfg.to_dict()
    saved["reused_from"] = str(twin.relative_to(Path(out)))
    _write_json(rd / CONFIG, saved)
    return True


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _evaluate(model: nn.Module, problem: Problem, ctx: DistContext, autocast, device: torch.device) -> dict[str, float]:
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for x, y in problem.eval_batches(ctx.rank, ctx.world):
        with autocast():
            out = model(x)
        n = y.numel()
        totals[0] += problem.loss(out, y, train=False).double() * n
        totals[1] += problem.correct(out, y).double()
        totals[2] += n
    ctx.all_sum(totals)
    model.train(was_training)
    loss, correct, count = totals.tolist()
    return {"val_loss": loss / max(count, 1), "val_acc": correct / max(count, 1)}


def _warm_up(task, problem: Problem, cfg: RunConfig, device: torch.device, autocast, ctx: DistContext) -> None:
    """One untimed training step of a throwaway copy of the run's model and optimizer, so that
    one-time costs (lazy library loading, kernel selection, allocator growth) are not charged to
    the run's clock. The global RNG is restored afterwards: the run's numbers do not change."""
    from steepest.optim.build import build_optimizer

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = _initialise(task.build_model(problem, cfg.model).to(device), cfg, task)
        optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.lr, adamw_lr=cfg.adamw_lr, head=task.head)
        x, y = problem.train_batch(0, ctx.rank, ctx.world)
        with autocast():
            out = model(x)
        problem.loss(out, y).backward()
        optimizer.step()
        _sync(device)
    del model, optimizer


PROGRESS_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal


class _Progress:
    """Progress of one run on stderr (main rank, unless quiet): tqdm's bar on a terminal;
    otherwise (nohup, CI, a pipe) one line every ``every`` seconds (0: none), e.g.
    ``shakespeare-gpt muon lr=0.02 seed=0: step 120/500 (24%), train loss 2.3456, 4.1 steps/s, ~93 s left``."""

    def __init__(self, cfg: RunConfig, start: int, quiet: bool, ctx: DistContext, every: float):
        self.desc = f"{cfg.task} {cfg.optimizer} lr={format_lr(cfg.lr)} seed={cfg.seed}"
        self.total, self.n, self.every = cfg.steps, start, every
        show = ctx.is_main and not quiet
        self.bar = None
        if show and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.steps, initial=start, desc=self.desc, leave=False, dynamic_ncols=True, unit="step")
        self.lines = show and self.bar is None and every > 0
        self.mark = (time.monotonic(), start)

    def update(self, loss: float) -> None:
        """One step done, with its training loss."""
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
            if self.n % 10 == 0 or self.n == self.total:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            return
        if not self.lines:
            return
        now = time.monotonic()
        t0, n0 = self.mark
        if now - t0 < self.every or self.n == self.total:
            return
        rate = (self.n - n0) / (now - t0)
        left = (self.total - self.n) / rate if rate > 0 else math.inf
        print(
            f"{self.desc}: step {self.n}/{self.total} ({100 * self.n / self.total:.0f}%), train loss {loss:.4f}, "
            f"{rate:.3g} steps/s, ~{left:.0f} s left",
            file=sys.stderr,
            flush=True,
        )
        self.mark = (now, self.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _Run:
    """One run's objects: what it trains and with what, on which ranks, into which folder."""

    cfg: RunConfig
    ctx: DistContext
    rd: Path
    task: Any
    device: torch.device
    problem: Problem
    raw_model: nn.Module  # the model's own parameters and state_dict
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]
    init_record: dict[str, Any] | None = None
    model: nn.Module | None = None  # raw_model compiled and DDP-wrapped: what trains
    eval_model: nn.Module | None = None  # raw_model compiled, without DDP: what evaluates
    autocast: Callable[[], Any] = contextlib.nullcontext


def train(
    cfg: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    ctx: DistContext | None = None,
    callback: Callable[[int, float], None] | None = None,
    progress_every: float = PROGRESS_EVERY,
) -> RunResult:
    """Run (or resume, or skip if complete) ``cfg`` under ``out``; see the module docstring.

    Progress goes to stderr: a bar on a terminal, else a line every ``progress_every`` seconds.

    ``callback(step, train_loss)`` is called after every step (after its checkpoint); an
    exception it raises aborts the run as a crash would.
    """
    ctx = ctx or DistContext()
    task = get_task(cfg.task)
    device = ctx.device(cfg.device)
    rd = run_dir(out, cfg)
    action = _plan(rd, cfg, resume, overwrite)
    if action == "fresh" and not overwrite and not ctx.active and _reuse_sweep_twin(out, cfg, rd):
        action = "skip"
    if action == "skip":
        return _ended_run(cfg, rd)
    run = _build(cfg, ctx, rd, task, device)  # before the folder: errors leave no half-made run
    _start_folder(run, fresh=action == "fresh")
    start, clock, final = _restore(run) if action == "resume" else (0, {"time": 0.0, "opt_time": 0.0}, {})
    _wrap_model(run)
    if start < cfg.steps:
        _warm_up(task, run.problem, cfg, device, run.autocast, ctx)
    return _train_loop(run, start, clock, final, _Progress(cfg, start, quiet, ctx, progress_every), callback)


def _ended_run(cfg: RunConfig, rd: Path) -> RunResult:
    """The result of a run that had already ended (``result.json``)."""
    result = json.loads((rd / RESULT).read_text())
    return RunResult(cfg, rd, result["status"], result.get("message", ""), result.get("final", {}), skipped=True)


def _build(cfg: RunConfig, ctx: DistContext, rd: Path, task, device: torch.device) -> _Run:
    """The run's data, model (seeded; a fine-tuning run's pretrained weights, checked against
    the model) and fresh optimizer; :class:`Incompatible` when the optimizer refuses the model."""
    problem = task.build_problem(cfg, device)
    torch.manual_seed(cfg.seed)  # model initialisation (and dropout) use the global RNG
    raw_model = _initialise(task.build_model(problem, cfg.model).to(device), cfg, task)
    init_record = None
    if cfg.init_from:
        from .finetune import load_init

        init_record = load_init(raw_model, cfg)
    from steepest.optim.build import build_optimizer

    try:
        optimizer = build_optimizer(raw_model, cfg.optimizer, lr=cfg.lr, adamw_lr=cfg.adamw_lr, head=task.head)
    except (ValueError, TypeError) as e:
        raise Incompatible(f"optimizer {cfg.optimizer} cannot train task {cfg.task}'s model: {e}") from None
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    return _Run(cfg, ctx, rd, task, device, problem, raw_model, optimizer, base_lrs, init_record)


def _initialise(model: nn.Module, cfg: RunConfig, task) -> nn.Module:
    """``model`` with the run's initialisation: its own, or ``cfg.init == "modular"``'s
    :func:`steepest.modular_init` (the task's head, default radii), drawn from the seeded global RNG."""
    if cfg.init == "modular":
        from steepest.optim.modular_init import modular_init

        modular_init(model, head=task.head)
    return model


def _start_folder(run: _Run, fresh: bool) -> None:
    """For a fresh run, rank 0 (re)creates the run folder with its ``config.json``, once every
    rank has planned and loaded its data."""
    cfg, ctx, rd = run.cfg, run.ctx, run.rd
    ctx.barrier()
    if ctx.is_main and fresh:
        if rd.exists():
            shutil.rmtree(rd)
        rd.mkdir(parents=True)
        _write_json(rd / CONFIG, {
            "run": cfg.to_dict(),
            "task_description": run.task.description,
            "env": environment(str(run.device)),
            "argv": sys.argv,
            **({"init": run.init_record} if run.init_record else {}),
            **({"corpus": run.problem.corpus} if getattr(run.problem, "corpus", None) else {}),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })  # fmt: skip
    ctx.barrier()


def _restore(run: _Run) -> tuple[int, dict[str, float], dict[str, Any]]:
    """Resume from the checkpoint (model, optimizer, RNG states), if any: returns the step it
    holds, the clocks and the last evaluation record. Rank 0 drops what the interrupted run
    logged after its checkpoint, which is about to be redone."""
    start, clock = 0, {"time": 0.0, "opt_time": 0.0}
    if (run.rd / CKPT).exists():
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest to the device.
        ckpt = torch.load(run.rd / CKPT, map_location="cpu", weights_only=False)
        run.raw_model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        start, clock = ckpt["step"], ckpt["clock"]
        _set_rng_state(ckpt["rng"], run.device)
    if not run.ctx.is_main:
        return start, clock, {}
    kept = [r for r in read_metrics(run.rd / METRICS) if start > 0 and r.get("step", math.inf) <= start]
    with open(run.rd / METRICS, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    return start, clock, next((r for r in reversed(kept) if "val_loss" in r), {})


def _wrap_model(run: _Run) -> None:
    """``torch.compile`` (``cfg.compile``), DDP on several ranks, bf16 autocast (``cfg.amp`` on
    CUDA). Evaluation bypasses DDP: its forward may run collectives (buffer broadcasts) and
    ranks can hold different numbers of validation batches."""
    model = torch.compile(run.raw_model) if run.cfg.compile else run.raw_model
    run.eval_model = model
    if run.ctx.active:
        ids = [run.device.index] if run.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    run.model = model
    if run.cfg.amp and run.device.type == "cuda":
        run.autocast = lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)


class _RunFiles:
    """What a run writes into its folder: ``metrics.jsonl`` lines, checkpoints and
    ``result.json``; rank 0 only (on the other ranks, nothing is written)."""

    def __init__(self, run: _Run):
        self.run = run
        self.metrics = open(run.rd / METRICS, "a", encoding="utf-8") if run.ctx.is_main else None

    def log(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()

    def checkpoint(self, step: int, clock: dict[str, float]) -> None:
        run = self.run
        if not run.ctx.is_main:
            return
        tmp = (run.rd / CKPT).with_suffix(".pt.tmp")
        torch.save({
            "step": step, "clock": dict(clock), "model": run.raw_model.state_dict(),
            "optimizer": run.optimizer.state_dict(), "rng": _rng_state(run.device), "config": run.cfg.to_dict(),
        }, tmp)  # fmt: skip
        os.replace(tmp, run.rd / CKPT)

    def finish(self, status: str, message: str, final: dict[str, Any]) -> RunResult:
        run = self.run
        if run.ctx.is_main:
            steps_done = final["diverged_at"] - 1 if "diverged_at" in final else final.get("step", 0)
            _write_json(run.rd / RESULT, {
                "status": status, "message": message, "final": final, "steps_done": steps_done,
                "parameters": count_parameters(run.raw_model),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })  # fmt: skip
        return RunResult(run.cfg, run.rd, status, message, final)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


def _train_loop(
    run: _Run,
    start: int,
    clock: dict[str, float],
    final: dict[str, Any],
    bar: _Progress,
    callback: Callable[[int, float], None] | None,
) -> RunResult:
    """Evaluate at step 0, then train from ``start`` to ``cfg.steps``: log every step, evaluate
    every ``eval_every`` and checkpoint every ``ckpt_every`` steps (and at the last); a
    non-finite loss or gradient ends the run as ``diverged``."""
    cfg = run.cfg
    files = _RunFiles(run)
    loss_value: float | None = final.get("train_loss")
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
    step = start
    try:
        run.model.train()
        if start == 0:
            final = {"step": 0, "time": 0.0, "opt_time": 0.0, **_evaluate_run(run)}
            files.log(final)
        for step in range(start, cfg.steps):
            lr = cfg.lr * _schedule_lr(run, step)
            loss_value = _train_step(run, step, clock, loss_sum)
            done = step + 1
            record = {"step": done, "time": clock["time"], "opt_time": clock["opt_time"], "train_loss": loss_value, "lr": lr}
            if done % cfg.eval_every == 0 or done == cfg.steps:
                record.update(_evaluate_run(run))
                final = record
            files.log(record)
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                files.checkpoint(done, clock)
            bar.update(loss_value)
            if callback is not None:
                callback(done, loss_value)
            if kill_at and done == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
    except Diverged as e:
        files.log({"step": step + 1, "diverged": True, "message": str(e)})
        message = f"run {run.rd} diverged: {e}; stopped it (its files are kept)"
        return files.finish("diverged", message, {**final, "diverged_at": step + 1})
    finally:
        bar.close()
        files.close()
    return files.finish("completed", "", {**final, "train_loss": loss_value})


def _schedule_lr(run: _Run, step: int) -> float:
    """Set every group's lr to its base lr times the schedule's factor at ``step``; returns the factor."""
    factor = run.cfg.lr_factor(step)
    for group, base in zip(run.optimizer.param_groups, run.base_lrs):
        group["lr"] = base * factor
    return factor


def _train_step(run: _Run, step: int, clock: dict[str, float], loss_sum: torch.Tensor) -> float:
    """One step: batch, forward, backward, gradient clipping, ``optimizer.step``. Adds its seconds
    to ``clock["time"]`` (those of ``optimizer.step`` to ``clock["opt_time"]`` too) and returns the
    loss averaged over ranks; :class:`Diverged` on a non-finite loss or gradient."""
    ctx, device, optimizer = run.ctx, run.device, run.optimizer
    _sync(device)
    t0 = time.perf_counter()
    x, y = run.problem.train_batch(step, ctx.rank, ctx.world)
    with run.autocast():
        out = run.model(x)
    loss = run.problem.loss(out, y)
    loss_sum.copy_(loss.detach())
    loss_value = ctx.all_sum(loss_sum).item() / ctx.world
    if not math.isfinite(loss_value):
        raise Diverged(f"loss is {loss_value} at step {step + 1}")
    loss.backward()
    if run.cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(run.raw_model.parameters(), run.cfg.grad_clip)
    _sync(device)
    t1 = time.perf_counter()
    try:
        optimizer.step()
    except NonFiniteGradientError as e:
        raise Diverged(str(e)) from e
    _sync(device)
    t2 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    clock["time"] += t2 - t0
    clock["opt_time"] += t2 - t1
    return loss_value


def _evaluate_run(run: _Run) -> dict[str, float]:
    return _evaluate(run.eval_model, run.problem, run.ctx, run.autocast, run.device)
