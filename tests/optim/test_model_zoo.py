"""Hugging Face models built from configs (random weights, nothing downloaded): the parameter split,
a few steps with every optimizer, bf16 resume, and Trainer / accelerate save and resume.

Tiny configs (2 layers, width 64, MLP 128 or 256) keep the module fast; every model has a matrix
with a side >= 128.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import steepest
from steepest.optim.split import classify_parameters

from ..registered import registered

T = pytest.importorskip("transformers")
T.logging.set_verbosity_error()
from transformers.pytorch_utils import Conv1D  # noqa: E402

VOCAB = 128
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def gpt2():
    cfg = T.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return T.GPT2LMHeadModel(cfg)


def _llama(**kw):
    return T.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1, vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw)


def llama_lm():
    return T.LlamaForCausalLM(_llama())


def llama_cls():
    return T.LlamaForSequenceClassification(_llama(num_labels=3))


def bert():  # 3 labels: no embedding has 3 rows (2 token types, 64 positions, 128 words)
    return T.BertForSequenceClassification(T.BertConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2, vocab_size=VOCAB, max_position_embeddings=64, num_labels=3, **NO_DROPOUT))


def roberta():  # 5 labels; the classifier's out_proj is the head, its dense layer a hidden matrix
    return T.RobertaForSequenceClassification(T.RobertaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2, vocab_size=VOCAB, max_position_embeddings=66, num_labels=5, pad_token_id=1, **NO_DROPOUT))


def vit():
    return T.ViTForImageClassification(T.ViTConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2, image_size=32, patch_size=8, num_labels=7, **NO_DROPOUT))


def resnet():
    return T.ResNetForImageClassification(T.ResNetConfig(embedding_size=16, hidden_sizes=[32, 128], depths=[1, 1], layer_type="basic", num_labels=7))


def batch(model, step: int = 0, n: int = 2) -> dict:
    gen = torch.Generator().manual_seed(step)
    if isinstance(model, (T.ViTForImageClassification, T.ResNetForImageClassification)):
        return dict(pixel_values=torch.randn(n, 3, 32, 32, generator=gen), labels=torch.randint(0, 7, (n,), generator=gen))
    ids = torch.randint(3, VOCAB, (n, 16), generator=gen)
    if "SequenceClassification" in type(model).__name__:
        return dict(input_ids=ids, labels=torch.randint(0, model.config.num_labels, (n,), generator=gen))
    return dict(input_ids=ids, labels=ids)


# name -> (builder, {parameter name: kind} that the split must give)
ZOO = {
    "gpt2": (gpt2, {"transformer.wte.weight": "embedding", "transformer.wpe.weight": "embedding"}),
    "llama-lm": (llama_lm, {"model.embed_tokens.weight": "embedding", "lm_head.weight": "head"}),
    "llama-cls": (llama_cls, {"model.embed_tokens.weight": "embedding", "score.weight": "head"}),
    "bert": (bert, {"classifier.weight": "head", "bert.pooler.dense.weight": "matrix", "bert.embeddings.position_embeddings.weight": "embedding", "bert.embeddings.token_type_embeddings.weight": "embedding"}),
    "roberta": (roberta, {"classifier.out_proj.weight": "head", "classifier.dense.weight": "matrix"}),
    "vit": (vit, {"vit.embeddings.cls_token": "embedding-like", "vit.embeddings.position_embeddings": "embedding-like", "classifier.weight": "head", "vit.embeddings.patch_embeddings.projection.weight": "matrix"}),
    "resnet": (resnet, {"classifier.1.weight": "head", "resnet.embedder.embedder.convolution.weight": "matrix"}),
}


def expected_view(module: nn.Module) -> tuple[int, int]:
    """(out, in) from the module's own attributes (independent of the split's arithmetic)."""
    if isinstance(module, Conv1D):
        return (module.nf, module.weight.shape[0])
    if isinstance(module, nn.Linear):
        return (module.out_features, module.in_features)
    if isinstance(module, nn.modules.conv._ConvNd):
        return (module.out_channels, module.in_channels // module.groups * math.prod(module.kernel_size))
    raise AssertionError(f"unexpected matrix module {type(module).__name__}")


@pytest.mark.parametrize("zoo", list(ZOO))
def test_split(zoo):
    build, kinds = ZOO[zoo]
    torch.manual_seed(0)
    model = build()
    split = classify_parameters(model)
    got = split.kinds()
    for name, kind in kinds.items():
        assert got[name] == kind, (name, got[name])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert [id(i.param) for i in split.params] == list(dict.fromkeys(id(i.param) for i in split.params))  # once each
    assert {id(i.param) for i in split.params} == trainable
    assert all(i.param.ndim >= 2 for i in split.matrix) and len(split.matrix) >= 7
    assert max(max(i.shape) for i in split.matrix) >= 128
    for info in split.matrix:
        assert info.shape == expected_view(info.module), info.name
        assert info.transposed == isinstance(info.module, Conv1D)
    assert {i.kind for i in split.other} <= {"head", "embedding", "embedding-like", "other"}
    if zoo == "gpt2":  # tied head: its second name is an alias of the embedding, and head= accepts it
        assert "lm_head.weight" in {a for i in split.params for a in i.aliases}
        assert classify_parameters(model, head=["lm_head.weight"]).kinds() == got
        assert split.matrix[0].name == "transformer.h.0.attn.c_attn.weight" and split.matrix[0].shape == (192, 64)


# One name per class and mode (the scale, sigma and error-feedback variants differ from it in arithmetic only).
CLASSES = registered(matrix=True, peer=False, one_per_kind=True)


def round_robin(model) -> dict[str, str]:
    """Routes giving the model's matrices to every optimizer class in turn (exact-name patterns):
    one training loop exercises all of them on attention, MLP, conv and Conv1D weights."""
    routes = {}
    names = [n for n in CLASSES]
    for k, info in enumerate(classify_parameters(model).matrix):
        routes[info.name] = names[k % len(names)]
    return routes


def _step(model, opt, steps, dtype=None):
    for step in steps:
        opt.zero_grad()
        b = batch(model, step)
        if dtype is not None:
            b = {k: v.to(dtype) if v.is_floating_point() else v for k, v in b.items()}
        loss = model(**b).loss
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()


@pytest.mark.parametrize("zoo", list(ZOO))
def test_every_optimizer_steps(zoo):
    """Two steps with every optimizer class (routed round-robin over the matrices): finite loss,
    every matrix moved; then Newton-Muon on the whole model hooks every matrix and gets its input
    moment at the first step (no MultiheadAttention in these models)."""
    build, _ = ZOO[zoo]
    torch.manual_seed(0)
    model = build()
    pristine = copy.deepcopy(model)
    routes = round_robin(model)
    opt = steepest.build_optimizer(model, routes)
    assert len(opt.optimizers) == len(set(routes.values())) + 1  # + AdamW
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in routes}
    _step(model, opt, range(2))
    stuck = [n for n, p in model.named_parameters() if n in before and torch.equal(p, before[n])]
    assert not stuck, stuck
    opt = steepest.build_optimizer(pristine, "newton-muon")
    nm = opt.optimizers[0]
    assert len(nm._sums) == len(routes)
    _step(pristine, opt, range(1))
    assert all(nm.state[p]["input_moment"].shape == (nm.matrix_shape(p)[1],) * 2 for p in nm._sums)
    assert all(not torch.equal(nm.state[p]["input_moment"], nm.init_diag * torch.eye(nm.matrix_shape(p)[1])) for p in nm._sums)


@pytest.mark.parametrize("zoo", ["gpt2"])  # (in, out) weights, tied head; bf16 convs are slow on AVX2 CPUs
def test_bf16_resume(zoo, tmp_path):
    """bf16 model, every optimizer class (round-robin routes): 2 steps, checkpoint, 1 step; a
    fresh model and optimizer loaded from the checkpoint take the same step bit for bit (the
    same computation run twice) and keep bf16 weights."""
    build, _ = ZOO[zoo]
    torch.manual_seed(0)
    pristine = build().to(torch.bfloat16)
    model = copy.deepcopy(pristine)
    routes = round_robin(model)
    opt = steepest.build_optimizer(model, routes)
    _step(model, opt, range(2), torch.bfloat16)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    _step(model, opt, range(2, 3), torch.bfloat16)
    ckpt = torch.load(tmp_path / "ckpt.pt")
    again = copy.deepcopy(pristine)
    again.load_state_dict(ckpt["model"])
    opt2 = steepest.build_optimizer(again, routes)
    opt2.load_state_dict(ckpt["opt"])
    _step(again, opt2, range(2, 3), torch.bfloat16)
    for (n, a), b in zip(model.named_parameters(), again.parameters()):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b), n


# roles that Modular must give (the rest follow from the split's kinds, checked in test_split)
MODULAR_ROLES = {
    "gpt2": {"transformer.wte.weight": "head", "transformer.wpe.weight": "embedding", "transformer.h.0.attn.c_attn.weight": "hidden"},
    "llama-lm": {"model.embed_tokens.weight": "embedding", "lm_head.weight": "head", "model.norm.weight": "vector"},
    "bert": {"classifier.weight": "head", "bert.embeddings.word_embeddings.weight": "embedding", "bert.pooler.dense.bias": "vector"},
    "vit": {"vit.embeddings.cls_token": "embedding-like", "vit.embeddings.position_embeddings": "embedding-like", "classifier.weight": "head"},
    "resnet": {"classifier.1.weight": "head", "resnet.embedder.embedder.convolution.weight": "hidden"},
}


def modular_roles(opt) -> dict[str, str]:
    return {n: g["role"] for g in opt.param_groups for n in g["param_names"]}


@pytest.mark.parametrize("zoo", list(ZOO))
@pytest.mark.parametrize("name", ["modular", "scion"])
def test_modular_holds_every_parameter_and_trains(zoo, name):
    """``build_optimizer(model, "modular")``: one Modular holds every trainable parameter once (no
    AdamW), with its role; five steps on one batch lower the loss and move every parameter that
    got a gradient. At most lr 2⁻⁸: scion's registered rate (2⁻⁶, Scion's MLP setting) overshoots
    the first step of a GPT-2 whose head is tied (Scion trains nanoGPT at 2⁻¹² with radii 50/3000)."""
    build, _ = ZOO[zoo]
    torch.manual_seed(0)
    model = build()
    opt = steepest.build_optimizer(model, name, lr=min(steepest.optim.OPTIMIZERS[name].default_lr, 2**-8))
    assert [type(o) for o in opt.optimizers] == [steepest.Modular]
    held = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(held) == sorted({id(p) for p in model.parameters() if p.requires_grad})
    assert MODULAR_ROLES.get(zoo, {}).items() <= modular_roles(opt).items()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = model(**batch(model, 0)).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    stuck = [n for n, p in model.named_parameters() if p.grad is not None and torch.equal(p, before[n])]
    assert not stuck, stuck


@pytest.mark.parametrize("zoo,dtype", [("gpt2", torch.bfloat16), ("vit", torch.bfloat16), ("llama-lm", torch.float32), ("resnet", torch.float32)])
@pytest.mark.parametrize("name", ["modular", "scion"])
def test_modular_resume_is_exact(zoo, dtype, name, tmp_path):
    """2 steps, checkpoint, 1 step; a fresh model and optimizer loaded from the checkpoint take the
    same step bit for bit and keep the model's dtype (its momentum too)."""
    build, _ = ZOO[zoo]
    torch.manual_seed(0)
    pristine = build().to(dtype)
    model = copy.deepcopy(pristine)
    opt = steepest.build_optimizer(model, name)
    _step(model, opt, range(2), dtype)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    _step(model, opt, range(2, 3), dtype)
    ckpt = torch.load(tmp_path / "ckpt.pt")
    again = copy.deepcopy(pristine)
    again.load_state_dict(ckpt["model"])
    opt2 = steepest.build_optimizer(again, name)
    opt2.load_state_dict(ckpt["opt"])
    _step(again, opt2, range(2, 3), dtype)
    for (n, a), b in zip(model.named_parameters(), again.parameters()):
        assert a.dtype == dtype and torch.equal(a, b), n
    assert all(s["momentum_buffer"].dtype == dtype for s in opt2.optimizers[0].state.values())


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int = 16):
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, VOCAB, (n, 16), generator=gen)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_trainer_save_resume(tmp_path):
    """HF Trainer: 3 steps straight vs 2 steps, checkpoint, resume for 1: identical weights (float32),
    with per-module routes (Neon F* on GPT-2's Conv1D MLPs, Newton-Muon elsewhere) and its scheduler."""
    routes = {"*.mlp.*": "neon-fstar", "*": "newton-muon"}

    def trainer(out, max_steps, save_steps):
        torch.manual_seed(0)
        model = gpt2()
        opt = steepest.build_optimizer(model, routes, adamw_lr=1e-3)
        args = T.TrainingArguments(
            output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, save_steps=save_steps,
            logging_steps=1000, report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0, lr_scheduler_type="linear",
            warmup_steps=1, disable_tqdm=True,
        )  # fmt: skip
        return model, T.Trainer(model=model, args=args, train_dataset=_Rows(), optimizers=(opt, None))

    class StopAt(T.TrainerCallback):  # an interrupted run: same schedule, stopped after the save
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_training_stop = True

    straight, t1 = trainer(tmp_path / "a", 3, 1000)
    t1.train()
    _, t2 = trainer(tmp_path / "b", 3, 2)
    t2.add_callback(StopAt())
    t2.train()
    resumed, t3 = trainer(tmp_path / "b", 3, 1000)
    t3.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    assert t3.state.global_step == 3
    for (n, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n


def test_accelerate_save_resume(tmp_path):
    """accelerate: save_state after 2 steps, load_state into a fresh model and optimizer: the next
    2 steps are bit-identical (float32, ViT with Shampoo on the MLPs and Muon elsewhere)."""
    accelerate = pytest.importorskip("accelerate")

    def setup():
        torch.manual_seed(0)
        model = vit()
        opt = steepest.build_optimizer(model, {"*.mlp.*": "shampoo", "*": "muon"})
        acc = accelerate.Accelerator(cpu=True)
        return (*acc.prepare(model, opt), acc)

    def run(model, opt, acc, steps):
        for step in steps:
            opt.zero_grad()
            acc.backward(model(**batch(model, step)).loss)
            opt.step()

    model, opt, acc = setup()
    run(model, opt, acc, range(2))
    acc.save_state(str(tmp_path / "state"))
    run(model, opt, acc, range(2, 4))
    again, opt2, acc2 = setup()
    acc2.load_state(str(tmp_path / "state"))
    run(again, opt2, acc2, range(2, 4))
    for (n, a), b in zip(model.named_parameters(), again.parameters()):
        assert torch.equal(a, b), n
