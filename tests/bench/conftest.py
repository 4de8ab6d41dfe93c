"""Fixtures of the bench tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from benchutil import write_cifar10, write_tinystories


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """A data folder holding a tiny ``cifar-10-batches-py/``."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root)
    return root


@pytest.fixture(scope="session")
def tinystories_root(tmp_path_factory) -> Path:
    """A data folder holding tiny TinyStories train/valid files."""
    return write_tinystories(tmp_path_factory.mktemp("tinystories"))


@pytest.fixture(autouse=True)
def _isolate(monkeypatch):
    """No data folder or torchrun variables from the developer's environment; one CPU thread
    (the tiny test models gain nothing from more, and a busy machine stalls them)."""
    monkeypatch.delenv("STEEPEST_DATA", raising=False)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
