"""Fine-tuning: start a run's model from a checkpoint (``--init-from``).

A run with ``RunConfig.init_from`` builds its model as usual, then copies the weights of the
checkpoint into it before the optimizer is built, so that the weights start pretrained and the
optimizer starts fresh (no moments, no step count). Three spellings of a checkpoint are read:

- a run folder of this harness (the folder holding ``ckpt.pt``),
- such a ``ckpt.pt`` (a dict whose ``"model"`` is the state dict and ``"config"`` the run's
  :class:`~steepest.bench.config.RunConfig`), or any dict with a ``"model"`` state dict,
- a bare ``model.state_dict()`` saved with ``torch.save``.

Files are read with ``torch.load(weights_only=True)``: tensors and plain containers only, no
pickled code. The checkpoint must be of the same model: the same parameter names and shapes,
and, when it records its run's config, the same model options but ``dropout`` (``block_size``
of a rotary GPT changes no shape, so shapes alone would not catch it) and a compatible vocabulary (character
vocabularies are built from each corpus, so they match only within one task; the byte
tokenizer is shared by all corpora). A mismatch is a :class:`BenchError` naming ``--init-from``
and what differs, raised before anything is trained or written.

``config.json`` records the checkpoint's path and the sha256 of its file (``run.init_from``,
``run.init_sha256``; a resumed run refuses a different file) and, under ``"init"``, the sha256
of the loaded weights (names, dtypes, shapes and bytes, in name order: unlike the file's hash it
does not depend on the wall-clock times a harness checkpoint also stores, so a regenerated
checkpoint can be checked against it on the same hardware and software) with the source run's
task, optimizer and step.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import RunConfig
from .errors import BenchError

__all__ = [
    "FLAG",
    "CKPT_NAME",
    "resolve_checkpoint",
    "file_sha256",
    "weights_sha256",
    "read_checkpoint",
    "check_compatible",
    "load_init",
    "text_corpus_record",
]

FLAG = "--init-from"
CKPT_NAME = "ckpt.pt"
# Model options that change no weight, free to differ between pretraining and fine-tuning.
_FREE_OPTIONS = frozenset({"dropout"})
# Prefixes that torch.compile and DistributedDataParallel put in front of parameter names.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file ``path`` names: the file itself, or a run folder's ``ckpt.pt``."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / CKPT_NAME).is_file():
            return p / CKPT_NAME
        raise BenchError(f"{FLAG} {path}: the folder holds no {CKPT_NAME} (pass a run folder of a finished or checkpointed run, or a checkpoint file)")
    if not p.is_file():
        raise BenchError(f"{FLAG} {path}: no such file or folder")
    return p


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the file's bytes (memoised by path, size and modification time)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 over a state dict's entries in name order: each name, dtype, shape and the
    tensor's raw bytes."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any]]:
    """``(state_dict, source RunConfig dict or None, extra)`` of the checkpoint ``path`` names
    (see the module docstring); ``extra`` holds the checkpoint's ``step`` when it records one."""
    file = resolve_checkpoint(path)
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise BenchError(f"{FLAG} {path}: not a readable torch checkpoint of tensors ({type(e).__name__}: {first[:160]})") from None
    source, extra = None, {}
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        if isinstance(obj.get("config"), Mapping):
            source = dict(obj["config"])
        if isinstance(obj.get("step"), int):
            extra["step"] = obj["step"]
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise BenchError(f"{FLAG} {path}: expected a model state_dict (names to tensors) or a checkpoint dict with one under 'model'")
    state = dict(obj)
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, source, extra


def _names(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def check_compatible(model: nn.Module, state: Mapping[str, torch.Tensor], source: Mapping[str, Any] | None, cfg: RunConfig, path: str) -> None:
    """Refuse (a :class:`BenchError` naming ``--init-from``) a checkpoint that is not of ``cfg``'s
    model: other model options or vocabulary in its recorded config, other parameter names or shapes."""
    where = f"{FLAG} {path}"
    if source is not None:
        src_model = source.get("model") or {}
        for key in sorted(set(src_model) | set(cfg.model)):
            if key not in _FREE_OPTIONS and src_model.get(key) != cfg.model.get(key):
                raise BenchError(
                    f"{where}: model option {key} is {src_model.get(key)!r} in the checkpoint, {cfg.model.get(key)!r} here "
                    f"(fine-tune with the pretraining run's model options, e.g. the same --model-size)"
                )
        src_tok, tok = (source.get("data") or {}).get("tokenizer"), cfg.data.get("tokenizer")
        if src_tok and tok and src_tok != tok:
            raise BenchError(f"{where}: the checkpoint's tokenizer is {src_tok!r}, this run's {tok!r} (use --tokenizer byte for both)")
        if "char" in (src_tok, tok) and source.get("task") != cfg.task:
            raise BenchError(
                f"{where}: character vocabularies are built from each corpus, so {source.get('task')}'s does not fit {cfg.task}'s "
                f"(pretrain and fine-tune with --tokenizer byte)"
            )
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"lacks {_names(missing)}")
        if unexpected:
            parts.append(f"has {_names(unexpected)} that this model does not")
        raise BenchError(f"{where}: not this model's checkpoint: it {' and '.join(parts)} (fine-tune with the pretraining run's model options)")
    for name, t in own.items():
        if tuple(state[name].shape) != tuple(t.shape):
            hint = "a different vocabulary: pretrain and fine-tune with --tokenizer byte" if name in ("wte.weight", "lm_head.weight") else "other model options"
            raise BenchError(
                f"{where}: {name} has shape {tuple(state[name].shape)} in the checkpoint, {tuple(t.shape)} here ({hint})"
            )


def load_init(model: nn.Module, cfg: RunConfig) -> dict[str, Any]:
    """Copy the weights of ``cfg.init_from`` into ``model`` (in place, cast to its parameters'
    dtypes) after checking that they fit (:func:`check_compatible`) and that the file is the one
    ``cfg.init_sha256`` names; sets ``cfg.init_sha256`` when it is unset. Returns the record that
    ``config.json`` keeps under ``"init"``."""
    if not cfg.init_from:
        raise ValueError("load_init needs cfg.init_from")
    file = resolve_checkpoint(cfg.init_from)
    digest = file_sha256(file)
    if cfg.init_sha256 is None:
        cfg.init_sha256 = digest
    elif cfg.init_sha256 != digest:
        raise BenchError(
            f"{FLAG} {cfg.init_from}: the file's sha256 is {digest[:12]}..., but this run started from {cfg.init_sha256[:12]}... "
            f"(pass the checkpoint it started from, or --overwrite to restart it)"
        )
    state, source, extra = read_checkpoint(cfg.init_from)
    check_compatible(model, state, source, cfg, cfg.init_from)
    model.load_state_dict(state, strict=True)
    record: dict[str, Any] = {"path": cfg.init_from, "file": str(file), "sha256": digest, "weights_sha256": weights_sha256(state)}
    if source is not None:
        record["source"] = {k: source.get(k) for k in ("task", "optimizer", "lr", "seed", "steps", "data")}
    record.update(extra)
    return record


def text_corpus_record(name: str, source: str, train: str, val: str) -> dict[str, Any]:
    """What ``config.json`` keeps under ``"corpus"`` for a text task: its name and source, the
    character counts of its splits and the sha256 of ``train + val`` as UTF-8."""
    h = hashlib.sha256(train.encode("utf-8"))
    h.update(val.encode("utf-8"))
    return {"name": name, "source": source, "train_chars": len(train), "val_chars": len(val), "sha256": h.hexdigest()}
