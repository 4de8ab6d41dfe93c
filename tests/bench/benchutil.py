"""Helpers of the bench tests: tiny CIFAR-10 and TinyStories folders in their exact on-disk formats,
subprocess environments."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

CIFAR_LABELS = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_cifar10(root: Path, per_batch: int = 24, n_test: int = 40, seed: int = 0) -> Path:
    """A CIFAR-10 "python version" folder ``root/cifar-10-batches-py`` with tiny batches: dicts
    with bytes keys, b'data' uint8 (N, 3072) in channel-major order, b'labels' a list of ints."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int, label: bytes) -> dict:
        labels = [int(i % 10) for i in range(n)]
        # Class-dependent brightness so that a model can learn something.
        data = rng.integers(0, 128, size=(n, 3072), dtype=np.uint8) + (np.array(labels, dtype=np.uint8)[:, None] * 12)
        return {
            b"batch_label": label,
            b"labels": labels,
            b"data": data.astype(np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per_batch, f"training batch {i} of 5".encode()), f, protocol=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test, b"testing batch 1 of 1"), f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"num_cases_per_batch": per_batch, b"label_names": CIFAR_LABELS, b"num_vis": 3072}, f, protocol=2)
    return folder


STORY_WORDS = "once upon a time there was a little cat who liked to play in the sun with her red ball".split()


def write_tinystories(root: Path, n_train: int = 60, n_valid: int = 15, seed: int = 0) -> Path:
    """``TinyStories-train.txt`` / ``TinyStories-valid.txt``: stories separated by lines
    holding ``<|endoftext|>``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)

    def stories(n: int) -> str:
        out = []
        for _ in range(n):
            words = rng.choice(STORY_WORDS, size=int(rng.integers(15, 40)))
            out.append(" ".join(words).capitalize() + ".\nThe end.")
        return "\n<|endoftext|>\n".join(out) + "\n<|endoftext|>\n"

    (root / "TinyStories-train.txt").write_text(stories(n_train), encoding="utf-8")
    (root / "TinyStories-valid.txt").write_text(stories(n_valid), encoding="utf-8")
    return root


def src_dir() -> str:
    """The ``src`` folder this ``steepest`` was imported from (for subprocesses)."""
    import steepest

    return str(Path(steepest.__file__).resolve().parents[1])


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = src_dir() + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("STEEPEST_DATA", None)
    env.update(extra)
    return env
