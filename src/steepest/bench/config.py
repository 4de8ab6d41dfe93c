"""``RunConfig``: everything that determines one training run (task x optimizer x lr x seed)."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["RunConfig", "environment", "describe_hardware", "cpu_model_and_kind", "run_dir", "format_lr", "RESUME_IGNORED", "INITS"]

INITS = ("default", "modular")  # RunConfig.init: the model's own initialisation, or steepest.modular_init

# Fields that may differ between a run and its resumption without changing its numbers' meaning.
# (``init_from`` is the fine-tuning checkpoint's path as spelled; its ``init_sha256`` decides.)
RESUME_IGNORED = frozenset({"data_dir", "compile", "init_from"})


@dataclass
class RunConfig:
    """One run. Saved as ``config.json["run"]``; ``RunConfig(**that)`` reruns it."""

    task: str
    optimizer: str
    lr: float
    seed: int = 0
    steps: int = 100
    batch_size: int = 128
    eval_every: int = 25
    ckpt_every: int = 25
    adamw_lr: float = 3e-3
    warmup_steps: int = 0
    cooldown_frac: float = 0.5  # the lr decays linearly to 0 over this last fraction of the steps
    grad_clip: float = 0.0  # 0: no clipping
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    init_from: str | None = None  # fine-tuning: the checkpoint the model's weights start from
    init_sha256: str | None = None  # sha256 of that checkpoint file
    init: str = "default"  # the model's initialisation: "default" (its own) or "modular" (steepest.modular_init)
    device: str = "cpu"
    amp: bool = False  # bf16 autocast (CUDA)
    compile: bool = False
    world_size: int = 1
    kind: str = "run"  # "run" or "sweep"

    def __post_init__(self) -> None:
        # Hold options as JSON gives them back (tuples become lists), so that a config read from
        # config.json compares equal to the one that wrote it.
        self.model = json.loads(json.dumps(self.model))
        self.data = json.loads(json.dumps(self.data))
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; accepted values: {', '.join(map(repr, INITS))}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base learning rates at (0-based) ``step``: linear warmup, flat,
        linear cooldown to zero."""
        f = 1.0
        if self.warmup_steps > 0:
            f = min(f, (step + 1) / self.warmup_steps)
        cooldown = int(math.ceil(self.cooldown_frac * self.steps))
        if cooldown > 0:
            f = min(f, (self.steps - step) / cooldown)
        return max(f, 0.0)

    def diff(self, other: RunConfig) -> dict[str, tuple[Any, Any]]:
        """Fields (outside ``RESUME_IGNORED``) whose values differ: ``{name: (self's, other's)}``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b.get(k)) for k in a if k not in RESUME_IGNORED and a[k] != b.get(k)}


def format_lr(lr: float) -> str:
    """A short, exact-enough spelling of a learning rate for folder names (``3e-03`` -> ``0.003``)."""
    return f"{lr:.6g}"


def run_dir(out: str | os.PathLike, cfg: RunConfig) -> Path:
    """``OUT/<task>/[sweep/]<optimizer>/[init=<init>/]lr=<lr>/seed=<k>`` (``init=`` unless the model's own init)."""
    base = Path(out) / cfg.task
    if cfg.kind == "sweep":
        base = base / "sweep"
    base = base / cfg.optimizer
    if cfg.init != "default":
        base = base / f"init={cfg.init}"
    return base / f"lr={format_lr(cfg.lr)}" / f"seed={cfg.seed}"


def cpu_model_and_kind() -> tuple[str, str]:
    """This CPU's model name (``/proc/cpuinfo``, else the platform's processor) and its kind as far as
    bf16 matmuls go: ``"AMX"``, ``"AVX512-BF16"``, ``"AVX2"`` or ``"other"`` (torch's probes)."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.partition(":")[2].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    probe = lambda name: bool(getattr(torch.cpu, name, lambda: False)())  # noqa: E731
    kind = "AMX" if probe("_is_amx_tile_supported") else "AVX512-BF16" if probe("_is_avx512_bf16_supported") else "AVX2" if probe("_is_avx2_supported") else "other"
    return model, kind


def describe_hardware(env: dict[str, Any]) -> str:
    """One line naming the hardware of a run from its recorded ``env`` (for figure titles)."""
    if env.get("gpu"):
        return f"{env['gpu']} (CUDA {env.get('cuda', '?')}), torch {env.get('torch', '?')}"
    if env:
        cpu = env.get("cpu_model", env.get("processor", "?"))
        kind = f" ({env['cpu_kind']})" if env.get("cpu_kind") else ""
        return f"CPU {cpu}{kind}, {env.get('cpu_count', '?')} cores, torch {env.get('torch', '?')}, {env.get('torch_threads', '?')} threads"
    return "hardware not recorded"


def environment(device: str) -> dict[str, Any]:
    """Versions and hardware, recorded next to each run's config."""
    import numpy
    import torch

    import steepest

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "steepest": getattr(steepest, "__version__", "?"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    env["cpu_model"], env["cpu_kind"] = cpu_model_and_kind()
    if device.startswith("cuda") and torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name()
    return env
