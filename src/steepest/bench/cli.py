"""``steepest-bench``: run, sweep, plot, report and list optimizer benchmarks.

``steepest-bench run`` with no options trains the default comparison on the digits task and
writes its figures and report under ``runs/digits-mlp/``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .config import INITS
from .errors import BenchError

__all__ = ["main", "build_parser"]

PROG = "steepest-bench"
DEFAULT_TASK = "digits-mlp"
DEFAULT_OUT = "runs"
BENCH_EXTRAS = {"sklearn", "matplotlib", "tqdm"}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit status 2, and no abbreviated options
    (``--step 10`` is an error, not ``--steps 10``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse's, but an unknown option is answered with the closest option of the
        chosen subcommand (``--step``: did you mean ``--steps``?)."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            import difflib

            options = self._long_options(getattr(ns, "command", None))
            close = [m for a in extras if a.startswith("--")
                     for m in difflib.get_close_matches(a.split("=")[0], options, n=1)]  # fmt: skip
            hint = f" (did you mean {', '.join(dict.fromkeys(close))}?)" if close else ""
            self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return ns

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see {self.prog} --help)")

    def _long_options(self, command: str | None) -> list[str]:
        """The long options of subcommand ``command`` (or of this parser)."""
        for a in self._actions:
            if command and isinstance(a, argparse._SubParsersAction) and command in a.choices:
                return a.choices[command]._long_options(None)
        return [o for a in self._actions for o in a.option_strings if o.startswith("--")]


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return v


def _training_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--task", default=DEFAULT_TASK, help=f"task name (default {DEFAULT_TASK}; see `{PROG} list`)")
    g.add_argument("--steps", type=_positive_int, help="optimizer steps per run (default: the task's)")
    g.add_argument("--seeds", type=_positive_int, help="number of seeds, 0..K-1 (default: the task's)")
    g.add_argument("--batch-size", type=_positive_int, help="global batch size (default: the task's)")
    g.add_argument("--eval-every", type=_positive_int, help="steps between validations (default: the task's)")
    g.add_argument("--ckpt-every", type=_positive_int, help="steps between checkpoints (default: a fifth of the run)")
    g.add_argument("--adamw-lr", type=_positive_float, help="lr of the AdamW that matrix optimizers use for embeddings, head and 1-D parameters")
    g.add_argument("--warmup-steps", type=_nonneg_int, help="linear lr warmup steps (default: the task's)")
    g.add_argument("--cooldown-frac", type=_fraction, help="final fraction of the run over which the lr decays linearly to 0")
    g.add_argument("--grad-clip", type=_nonneg_float, default=0.0, help="clip the gradient norm to this (default 0: off)")
    m = p.add_argument_group("model and data")
    m.add_argument("--model-size", help="model preset of the task (see `list`), e.g. tiny, small, medium")
    m.add_argument("--model", action="append", default=[], metavar="KEY=VALUE", help="override a model option (repeatable)")
    for flag in ("n-layer", "n-head", "n-embd", "block-size", "width"):
        m.add_argument(f"--{flag}", type=_positive_int, help=f"model option {flag.replace('-', '_')}")
    m.add_argument("--tokenizer", choices=("char", "byte"), help="shakespeare-gpt: character- or byte-level")
    m.add_argument("--data", action="append", default=[], metavar="KEY=VALUE", help="override a data option (repeatable)")
    m.add_argument("--data-dir", help="folder with the task's data (CIFAR-10, TinyStories); default $STEEPEST_DATA")
    m.add_argument("--init", choices=INITS, default="default", help="the model's initialisation: its own (default) or "
                   "'modular' (steepest.modular_init: orthogonal x sqrt(fan_out/fan_in) hidden layers, unit-RMS embedding rows, x radius)")
    m.add_argument("--init-from", metavar="PATH", help="fine-tune: start the model's weights from this checkpoint of the same "
                   "model config (a run folder, its ckpt.pt, or a saved state_dict); the optimizer starts fresh")
    h = p.add_argument_group("hardware and output")
    h.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    h.add_argument("--no-amp", action="store_true", help="on CUDA, train in float32 instead of bf16 autocast")
    h.add_argument("--compile", action="store_true", help="torch.compile the model")
    h.add_argument("--threads", type=_positive_int, help="torch CPU threads per process (default: the task's, else torch's)")
    h.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    h.add_argument("--resume", action="store_true", help="continue unfinished runs from their last checkpoint")
    h.add_argument("--overwrite", action="store_true", help="replace runs already in the output folder")
    h.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")
    h.add_argument("--progress-every", type=_nonneg_float, default=30.0, metavar="SECONDS",
                   help="when stderr is not a terminal (nohup, CI), a progress line every SECONDS (default 30; 0: none)")
    h.add_argument("--no-plots", action="store_true", help="do not write figures and report afterwards")


def build_parser() -> argparse.ArgumentParser:
    """The ``steepest-bench`` argument parser."""
    p = _Parser(prog=PROG, description="Benchmark matrix-aware optimizers on small tasks.")
    sub = p.add_subparsers(dest="command", metavar="{run,sweep,plot,report,thin,list}", parser_class=_Parser)

    run = sub.add_parser("run", help="train optimizers on a task (no options: the default digits comparison)")
    run.add_argument("--optimizers", help="comma-separated optimizer names, or 'all' (default: the task's comparison)")
    run.add_argument("--lr", action="append", default=[], metavar="NAME=VALUE", help="learning rate of one optimizer (repeatable)")
    run.add_argument("--lr-from-sweep", nargs="?", const="", metavar="DIR", help="take each optimizer's lr from the sweep results in DIR (default: --out)")
    _training_options(run)

    sweep = sub.add_parser("sweep", help="learning-rate sweep of optimizers on a task")
    sweep.add_argument("--optimizer", "--optimizers", dest="optimizers", required=True, help="optimizer name (or comma-separated names)")
    sweep.add_argument("--lrs", help="comma-separated learning rates (default: the task's lr times 1/10, 1/3, 1, 3, 10)")
    sweep.add_argument("--metric", default="val_loss", choices=("val_loss", "val_acc"), help="what picks the best lr")
    sweep.add_argument("--widths", metavar="W1,W2,...", help="sweep at each model width (the task's width or n_embd option), each under OUT/width=W/; then draws the lr-transfer figure")
    _training_options(sweep)

    plot = sub.add_parser("plot", help="figures (PNG and SVG) from saved results")
    plot.add_argument("dir", help="an output folder (or one task's folder in it)")
    plot.add_argument("--optimizers", help="comma-separated optimizers to draw (default: all that ran)")
    plot.add_argument("--name", help="prefix of the figure files, e.g. 'claim1' gives claim1-validation.png")
    plot.add_argument("--formats", default="png,svg", help="comma-separated figure formats: png, svg (default: both)")
    plot.add_argument("--transfer", action="store_true", help="lr transfer across width (runs of `sweep --widths`): loss against lr per width, and the optimum's shift per doubling")

    report = sub.add_parser("report", help="Markdown table from saved results")
    report.add_argument("dir", help="an output folder (or one task's folder in it)")
    report.add_argument("--target-loss", type=_positive_float, help="validation loss target for the time-to-target column")
    report.add_argument("--target-acc", type=_fraction, help="validation accuracy target for the time-to-target column")

    thin = sub.add_parser("thin", help="shrink saved metrics for archiving (keeps evaluations and every N-th step)")
    thin.add_argument("dir", help="an output folder (or one task's folder in it)")
    thin.add_argument("--every", type=_positive_int, default=10, help="keep every N-th training record (default 10)")

    lst = sub.add_parser("list", help="tasks and optimizers, one line each")
    lst.add_argument("--task", help="show this task's default learning rate for each optimizer instead of the registry's")
    return p


# ----------------------------------------------------------------------------------------------
# helpers


def _key_values(items: list[str], what: str) -> dict[str, str]:
    from steepest.optim.registry import split_names

    out: dict[str, str] = {}
    for item in items:
        for part in split_names(item) if what == "--lr" else [item]:
            key, sep, value = part.rpartition("=") if what == "--lr" else part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise BenchError(f"bad {what} {part!r}: expected NAME=VALUE")
            out[key.strip()] = value.strip()
    return out


def _install_hint(name: str) -> str:
    """How to make the registered but unavailable optimizer ``name`` available (its registration's hint)."""
    from steepest.optim.registry import OPTIMIZERS

    return OPTIMIZERS[name].install_hint or "unavailable"


def _optimizer_names(raw: str | None, default: Sequence[str]) -> list[str]:
    from steepest.optim.build import optimizer_names, register_routes
    from steepest.optim.registry import register_variant, split_names

    valid = optimizer_names()
    registered = optimizer_names(include_unavailable=True)
    if raw is None:
        names = [n for n in default if n in valid] or [n for n in ("sgd", "adamw") if n in valid]
        return names
    if raw.strip() == "all":
        return list(valid)
    names = [n.strip() for n in split_names(raw) if n.strip()]
    if not names:
        raise BenchError(f"no optimizer named; valid optimizers: {', '.join(valid)}")
    for n in names:
        head = n.split("(")[0]
        if "(" in n and "=" not in head and "+" not in head:  # a variant: 'muon(weight_decay=0.1)'
            try:
                register_variant(n)
            except ValueError as e:
                raise BenchError(str(e)) from None
            n = head.strip()
        elif "=" in n:  # per-module routes, e.g. '*.mlp.*=neon-fstar+muon' (lr: a multiplier of each route's default)
            try:
                register_routes(n, n)
            except ValueError as e:
                raise BenchError(f"bad optimizer routes {n!r}: {e}") from None
            continue
        if n in registered and n not in valid:
            raise BenchError(f"optimizer {n!r} is {_install_hint(n)}")
        if n not in valid:
            raise BenchError(f"unknown optimizer {n!r}; valid optimizers: {', '.join(valid)}")
    return list(dict.fromkeys(names))


def _parse_lr(name: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise BenchError(f"bad --lr {name}={text}: {text!r} is not a number") from None
    if not (math.isfinite(v) and v > 0):
        raise BenchError(f"bad --lr {name}={text}: the learning rate must be a positive finite number")
    return v


def _resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.split(":")[0] not in ("cpu", "cuda"):
        raise BenchError(f"unknown device {requested!r}; use cpu, cuda or auto")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device is available on this machine")
    return requested


def _base_configs(args: argparse.Namespace, task, optimizers: list[str], lrs: dict[str, Any], kind: str):
    """One RunConfig per (optimizer, lr, seed); ``lrs`` maps each optimizer to an lr or a list."""
    model: dict[str, Any] = _key_values(args.model, "--model")
    for flag in ("n_layer", "n_head", "n_embd", "block_size", "width"):
        if getattr(args, flag) is not None:
            model[flag] = getattr(args, flag)
    data: dict[str, Any] = _key_values(args.data, "--data")
    if args.tokenizer is not None:
        data["tokenizer"] = args.tokenizer
    device = _resolve_device(args.device)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    batch = args.batch_size or task.batch_size
    if batch % world:
        raise BenchError(f"batch size {batch} is not divisible by WORLD_SIZE={world}")
    seeds = args.seeds or (task.seeds if kind == "run" else 1)
    data_dir = args.data_dir or os.environ.get("STEEPEST_DATA") or None
    configs = []
    for opt in optimizers:
        for lr in lrs[opt] if isinstance(lrs[opt], list) else [lrs[opt]]:
            for seed in range(seeds):
                configs.append(task.config(
                    opt, lr=lr, seed=seed, steps=args.steps, batch_size=batch, eval_every=args.eval_every,
                    ckpt_every=args.ckpt_every, adamw_lr=args.adamw_lr, warmup_steps=args.warmup_steps,
                    cooldown_frac=args.cooldown_frac, model_size=args.model_size, model=model, data=data,
                    grad_clip=args.grad_clip, data_dir=str(Path(data_dir).expanduser()) if data_dir else None,
                    init_from=args.init_from, init=args.init,
                    device=device, amp=device.startswith("cuda") and not args.no_amp, compile=args.compile,
                    world_size=world, kind=kind,
                ))  # fmt: skip
    return configs


def _set_threads(args: argparse.Namespace, device: str, task) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        return
    threads = task.threads
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")) or 1)
    if local_world > 1 and not device.startswith("cuda"):
        # Processes sharing the CPU: split the cores instead of oversubscribing them.
        share = max(1, (os.cpu_count() or 1) // local_world)
        threads = min(threads or share, share)
    if threads:
        torch.set_num_threads(threads)


def _check_resume(args: argparse.Namespace, configs) -> None:
    """``--resume`` needs at least one of the runs to exist under ``--out`` already; the ones that
    do not (a sweep killed before reaching them) start fresh, with a note."""
    if not args.resume or int(os.environ.get("RANK", "0") or 0) != 0:
        return  # rank 0 decides (other nodes may not see its files); torchrun stops the rest
    from .config import run_dir
    from .train import CONFIG

    found = [cfg for cfg in configs if (run_dir(args.out, cfg) / CONFIG).is_file()]
    if not found:
        where = Path(args.out) / configs[0].task
        raise BenchError(
            f"--resume: nothing to resume: no run with these settings under {where} "
            "(check --out and the other options, or drop --resume to start them)"
        )
    if len(found) < len(configs) and not args.quiet:
        print(f"{PROG}: note: --resume: {len(configs) - len(found)} of {len(configs)} runs had not started; they start fresh", file=sys.stderr)


def _train_all(args: argparse.Namespace, configs) -> tuple[list, Any]:
    from .dist import init_distributed
    from .train import Incompatible, RunResult, train

    from .tasks import get_task

    ctx = init_distributed(configs[0].device)
    _set_threads(args, configs[0].device, get_task(configs[0].task))
    results = []
    refused: set[str] = set()
    for cfg in configs:
        if cfg.optimizer in refused:
            continue
        try:
            r = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet, ctx=ctx,
                      progress_every=args.progress_every)
        except Incompatible as e:
            # One optimizer that cannot handle this model must not cancel the others' runs.
            refused.add(cfg.optimizer)
            if ctx.is_main:
                print(f"{PROG}: error: {e}", file=sys.stderr)
            results.append(RunResult(cfg, Path(), "refused", str(e)))
            continue
        results.append(r)
        if not ctx.is_main:
            continue
        if r.status == "diverged":
            print(f"{PROG}: error: {r.message}", file=sys.stderr)
        elif not args.quiet:
            f = r.final
            acc = f" val_acc {f['val_acc']:.4f}" if "val_acc" in f else ""
            note = " (already complete)" if r.skipped else ""
            print(
                f"{cfg.task} {cfg.optimizer} lr={cfg.lr:g} seed={cfg.seed}: val_loss {f.get('val_loss', float('nan')):.4f}"
                f"{acc} after {f.get('step', 0)} steps, {f.get('time', 0.0):.1f} s{note}",
                flush=True,
            )
    return results, ctx


def _outputs(args: argparse.Namespace, ctx, task_name: str) -> None:
    if not ctx.is_main or args.no_plots:
        return
    from .plots import plot_results
    from .report import write_reports

    folder = Path(args.out) / task_name
    figures = plot_results(folder)
    reports = write_reports(folder)
    if not args.quiet:
        for p in figures + [p for p, _ in reports]:
            print(f"wrote {p}")


def _check_out(path: str) -> None:
    """Refuse an ``--out`` that cannot become a folder (it, or a folder above it, is a file; or
    the nearest existing folder above it is not writable) before any data or model loads."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise BenchError(f"--out {path}: {p} exists and is not a folder; choose another --out")
    for parent in [p, *p.parents]:
        if not parent.exists():
            continue
        if not parent.is_dir():
            raise BenchError(f"--out {path}: {parent} is a file, so no folder can be made under it; choose another --out")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise BenchError(f"--out {path}: the folder {parent} is not writable; choose another --out")
        break


# ----------------------------------------------------------------------------------------------
# commands


def cmd_run(args: argparse.Namespace) -> int:
    from .results import find_sweep_lr
    from .tasks import get_task

    task = get_task(args.task)
    _check_out(args.out)
    optimizers = _optimizer_names(args.optimizers, task.optimizers)
    given = _key_values(args.lr, "--lr")
    lrs: dict[str, float] = {}
    for name, text in given.items():
        if name not in optimizers:
            raise BenchError(f"--lr {name}={text}: {name!r} is not among the optimizers of this run ({', '.join(optimizers)})")
        lrs[name] = _parse_lr(name, text)
    if args.lr_from_sweep is not None:
        root = args.lr_from_sweep or args.out
        found = {o: find_sweep_lr(root, task.name, o) for o in optimizers if o not in lrs}
        if found and all(v is None for v in found.values()):
            raise BenchError(f"--lr-from-sweep: no sweep results for {task.name} under {root} (run `{PROG} sweep` first)")
        for o, v in found.items():
            if v is None:
                print(f"{PROG}: note: no sweep result for {o} on {task.name} under {root}; using its default lr", file=sys.stderr)
            else:
                lrs[o] = v
    for o in optimizers:
        lrs.setdefault(o, task.default_lr(o))
    configs = _base_configs(args, task, optimizers, lrs, "run")
    _check_resume(args, configs)
    results, ctx = _train_all(args, configs)
    _outputs(args, ctx, task.name)
    return 1 if any(r.status in ("diverged", "refused") for r in results) else 0


def _sweep_widths(args: argparse.Namespace) -> int:
    """``sweep --widths``: the same sweep at each width, under ``OUT/width=<w>/``, then the
    transfer figure and table in ``OUT`` (see :mod:`.transfer`)."""
    import copy

    from .tasks import get_task
    from .transfer import parse_widths, width_folder, width_option, write_transfer

    task = get_task(args.task)
    key = width_option(task)
    widths = parse_widths(args.widths)
    if getattr(args, key) is not None or key in _key_values(args.model, "--model"):
        raise BenchError(f"--widths sets the model option {key}; drop --{key.replace('_', '-')} and --model {key}=...")
    _check_out(args.out)
    status = 0
    for w in widths:
        sub = copy.copy(args)
        sub.widths, sub.out, sub.no_plots = None, str(width_folder(args.out, w)), True
        sub.resume = args.resume and (Path(sub.out) / task.name).is_dir()  # a width not reached starts fresh
        setattr(sub, key, w)
        status = max(status, cmd_sweep(sub))
    if not args.no_plots and int(os.environ.get("RANK", "0") or 0) == 0:
        for p in write_transfer(args.out, formats=("png",)):
            if not args.quiet:
                print(f"wrote {p}")
    return status


def cmd_sweep(args: argparse.Namespace) -> int:
    from .results import write_sweep_summary
    from .tasks import get_task

    if getattr(args, "widths", None):
        return _sweep_widths(args)
    task = get_task(args.task)
    _check_out(args.out)
    optimizers = _optimizer_names(args.optimizers, ())
    lrs: dict[str, Any] = {}
    if args.lrs:
        values = []
        for part in args.lrs.split(","):
            try:
                v = float(part)
            except ValueError:
                v = math.nan
            if not (math.isfinite(v) and v > 0):
                raise BenchError(f"bad --lrs {args.lrs!r}: {part.strip()!r} is not a positive number (expected e.g. 1e-3,3e-3,1e-2)")
            values.append(v)
        for o in optimizers:
            lrs[o] = sorted(set(values))
    else:
        for o in optimizers:
            base = task.default_lr(o)
            lrs[o] = [base * f for f in (0.1, 0.3, 1.0, 3.0, 10.0)]
    configs = _base_configs(args, task, optimizers, lrs, "sweep")
    _check_resume(args, configs)
    results, ctx = _train_all(args, configs)
    refused = {r.config.optimizer for r in results if r.status == "refused"}
    if ctx.is_main:
        for o in optimizers:
            if o in refused:
                continue
            path, summary = write_sweep_summary(args.out, task.name, o, args.metric)
            best = summary["best_lr"]
            if not args.quiet:
                shown = "none (every lr diverged)" if best is None else f"{best:g} ({args.metric} {summary['best']:.4f})"
                print(f"{task.name} {o}: best lr {shown}; wrote {path}")
    _outputs(args, ctx, task.name)
    return 1 if refused else 0


def _warn_damaged(runs) -> None:
    """One warning line per run whose ``metrics.jsonl`` has unreadable lines."""
    for r in runs:
        if r.damaged:
            print(f"{PROG}: warning: {r.damage_note()}; the run is marked in the report", file=sys.stderr)


def cmd_plot(args: argparse.Namespace) -> int:
    from steepest.optim.registry import split_names

    from .plots import FIGURE_FORMATS, plot_results
    from .results import load_runs

    runs = load_runs(args.dir)
    if not runs:
        raise BenchError(f"no runs found under {args.dir}")
    _warn_damaged(runs)
    names = [n.strip() for n in split_names(args.optimizers) if n.strip()] if args.optimizers else None
    if names:
        missing = sorted(set(names) - {r.config.optimizer for r in runs})
        if missing:
            raise BenchError(f"no runs of {', '.join(missing)} under {args.dir}")
    if args.name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
        raise BenchError(f"--name must be letters, digits, '.', '_' or '-', got {args.name!r}")
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    unknown = sorted(set(formats) - set(FIGURE_FORMATS))
    if unknown or not formats:
        raise BenchError(f"--formats takes png and/or svg, got {args.formats!r}")
    if args.transfer:
        from .transfer import write_transfer

        for p in write_transfer(args.dir, names, args.name, formats):
            if p.suffix == ".md":
                print(p.read_text())
            print(f"wrote {p}")
        return 0
    for p in plot_results(args.dir, names, args.name, formats):
        print(f"wrote {p}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_reports
    from .results import load_runs

    runs = load_runs(args.dir)
    if not runs:
        raise BenchError(f"no runs found under {args.dir}")
    _warn_damaged(runs)
    targets: dict[str, float] | None = None
    if args.target_loss is not None or args.target_acc is not None:
        targets = {}
        if args.target_loss is not None:
            targets["val_loss"] = args.target_loss
        if args.target_acc is not None:
            targets["val_acc"] = args.target_acc
    for path, text in write_reports(args.dir, targets):
        print(text)
        print(f"wrote {path}\n")
    return 0


def cmd_thin(args: argparse.Namespace) -> int:
    from .results import thin_metrics

    before, after = thin_metrics(args.dir, args.every)
    if before == 0:
        raise BenchError(f"no metrics found under {args.dir}")
    print(f"kept {after} of {before} metric records under {args.dir}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from steepest.optim.build import OPTIMIZERS, optimizer_names

    from .tasks import TASKS, get_task

    task = get_task(args.task) if args.task else None
    print("tasks:")
    width = max(map(len, TASKS))
    for name, t in TASKS.items():
        print(f"  {name:<{width}}  {t.description} [{t.steps} steps, batch {t.batch_size}; sizes: {', '.join(t.model_sizes)}]")
    print("optimizers:")
    names = optimizer_names(include_unavailable=True)
    available = set(optimizer_names())
    width = max(map(len, names), default=0)
    for name in names:
        spec = OPTIMIZERS[name]
        lr = f"{task.name} lr {task.default_lr(name):g}" if task else f"default lr {spec.default_lr:g}"
        missing = "" if name in available else f" ({_install_hint(name)})"
        print(f"  {name:<{width}}  {spec.description} [{lr}]{missing}")
    return 0


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "plot": cmd_plot, "report": cmd_report, "thin": cmd_thin, "list": cmd_list}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``steepest-bench``; returns the exit status (user errors raise
    ``SystemExit(2)`` after a one-line message on stderr)."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        _fail("--resume and --overwrite exclude each other")
    try:
        return COMMANDS[args.command](args)
    except BenchError as e:
        _fail(str(e))
    except ModuleNotFoundError as e:
        if e.name in BENCH_EXTRAS:
            _fail(f"{PROG} needs {e.name}, one of the 'bench' extras: pip install 'steepest[bench]'")
        raise
    except KeyboardInterrupt:
        _fail("interrupted", code=130)
    finally:
        if args.command in ("run", "sweep"):
            from .dist import shutdown_distributed

            shutdown_distributed()
