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
        model = task.build_model(problem, cfg.model).to(device)
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
        result = json.loads((rd / RESULT).read_text())
        return RunResult(cfg, rd, result["status"], result.get("message", ""), result.get("final", {}), skipped=True)
    # Data, model and optimizer first: their errors must not leave a half-made run folder.
    problem = task.build_problem(cfg, device)
    torch.manual_seed(cfg.seed)  # model initialisation (and dropout) use the global RNG
    raw_model = task.build_model(problem, cfg.model).to(device)
    init_record = None
    if cfg.init_from:  # fine-tuning: pretrained weights (checked against the model), a fresh optimizer
        from .finetune import load_init

        init_record = load_init(raw_model, cfg)
    from steepest.optim.build import build_optimizer

    try:
        optimizer = build_optimizer(raw_model, cfg.optimizer, lr=cfg.lr, adamw_lr=cfg.adamw_lr, head=task.head)
    except (ValueError, TypeError) as e:
        raise Incompatible(f"optimizer {cfg.optimizer} cannot train task {cfg.task}'s model: {e}") from None
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    ctx.barrier()  # every rank has planned (and loaded its data) before rank 0 changes the folder
    if ctx.is_main:
        if action == "fresh":
            if rd.exists():
                shutil.rmtree(rd)
            rd.mkdir(parents=True)
            _write_json(rd / CONFIG, {
                "run": cfg.to_dict(),
                "task_description": task.description,
                "env": environment(str(device)),
                "argv": sys.argv,
                **({"init": init_record} if init_record else {}),
                **({"corpus": problem.corpus} if getattr(problem, "corpus", None) else {}),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })  # fmt: skip
    ctx.barrier()

    start, clock = 0, {"time": 0.0, "opt_time": 0.0}
    ckpt_path = rd / CKPT
    if action == "resume" and ckpt_path.exists():
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest to the device.
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start, clock = ckpt["step"], ckpt["clock"]
        _set_rng_state(ckpt["rng"], device)
    final: dict[str, Any] = {}
    if ctx.is_main and action == "resume":
        # Drop what the interrupted run logged after its checkpoint; it is about to be redone.
        kept = [r for r in read_metrics(rd / METRICS) if start > 0 and r.get("step", math.inf) <= start]
        with open(rd / METRICS, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        final = next((r for r in reversed(kept) if "val_loss" in r), {})

    model: nn.Module = raw_model
    if cfg.compile:
        model = torch.compile(model)
    # Evaluation bypasses DDP: its forward may run collectives (buffer broadcasts) and ranks can
    # hold different numbers of validation batches.
    eval_model = model
    if ctx.active:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    autocast = (
        (lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16))
        if cfg.amp and device.type == "cuda"
        else contextlib.nullcontext
    )
    if start < cfg.steps:
        _warm_up(task, problem, cfg, device, autocast, ctx)
    kill_at = int(os.environ.get(KILL_ENV, "0") or 0)

    metrics = open(rd / METRICS, "a", encoding="utf-8") if ctx.is_main else None

    def log(record: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()

    def save_checkpoint(step: int) -> None:
        if not ctx.is_main:
            return
        tmp = ckpt_path.with_suffix(".pt.tmp")
        torch.save({
            "step": step, "clock": dict(clock), "model": raw_model.state_dict(),
            "optimizer": optimizer.state_dict(), "rng": _rng_state(device), "config": cfg.to_dict(),
        }, tmp)  # fmt: skip
        os.replace(tmp, ckpt_path)

    def finish(status: str, message: str, final: dict[str, Any]) -> RunResult:
        if ctx.is_main:
            steps_done = final["diverged_at"] - 1 if "diverged_at" in final else final.get("step", 0)
            _write_json(rd / RESULT, {
                "status": status, "message": message, "final": final, "steps_done": steps_done,
                "parameters": count_parameters(raw_model),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })  # fmt: skip
        return RunResult(cfg, rd, status, message, final)

    loss_value: float | None = final.get("train_loss")
    bar = _Progress(cfg, start, quiet, ctx, progress_every)
    try:
        model.train()
        if start == 0:
            final = {"step": 0, "time": 0.0, "opt_time": 0.0, **_evaluate(eval_model, problem, ctx, autocast, device)}
            log(final)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for step in range(start, cfg.steps):
            factor = cfg.lr_factor(step)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            _sync(device)
            t0 = time.perf_counter()
            x, y = problem.train_batch(step, ctx.rank, ctx.world)
            with autocast():
                out = model(x)
            loss = problem.loss(out, y)
            loss_sum.copy_(loss.detach())
            loss_value = ctx.all_sum(loss_sum).item() / ctx.world
            if not math.isfinite(loss_value):
                raise Diverged(f"loss is {loss_value} at step {step + 1}")
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
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

            done = step + 1
            record = {"step": done, "time": clock["time"], "opt_time": clock["opt_time"],
                      "train_loss": loss_value, "lr": cfg.lr * factor}  # fmt: skip
            if done % cfg.eval_every == 0 or done == cfg.steps:
                record.update(_evaluate(eval_model, problem, ctx, autocast, device))
                final = record
            log(record)
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                save_checkpoint(done)
            bar.update(loss_value)
            if callback is not None:
                callback(done, loss_value)
            if kill_at and done == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
    except Diverged as e:
        final = {**final, "diverged_at": step + 1}
        message = f"run {rd} diverged: {e}; stopped it (its files are kept)"
        log({"step": step + 1, "diverged": True, "message": str(e)})
        return finish("diverged", message, final)
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    final = {**final, "train_loss": loss_value}
    return finish("completed", "", final)
