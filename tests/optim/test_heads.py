"""Which layers are heads: ``get_output_embeddings()``, every matrix module named in
``HEAD_NAMES`` (secondary heads, classifiers, CLIP's two projections), else the last matrix
module. Checked on Hugging Face models built from small configs (nothing downloaded)."""

from __future__ import annotations

import pytest
from torch import nn

from steepest.optim.split import classify_parameters


def _kinds(model: nn.Module, *names: str) -> list[str]:
    kinds = classify_parameters(model).kinds()
    return [kinds[n] for n in names]


def test_bert_pretraining_next_sentence_head():
    from transformers import BertConfig, BertForPreTraining

    model = BertForPreTraining(BertConfig(vocab_size=128, hidden_size=128, num_hidden_layers=1, num_attention_heads=2, intermediate_size=256))
    assert _kinds(model, "cls.seq_relationship.weight", "cls.predictions.transform.dense.weight", "bert.pooler.dense.weight") == ["head", "matrix", "matrix"]


def test_gpt2_double_heads_multiple_choice_summary():
    from transformers import GPT2Config, GPT2DoubleHeadsModel

    model = GPT2DoubleHeadsModel(GPT2Config(vocab_size=128, n_embd=128, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0))
    assert _kinds(model, "multiple_choice_head.summary.weight", "transformer.wte.weight") == ["head", "embedding"]  # lm_head is tied to wte


def test_clip_projections_are_treated_alike():
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=128, hidden_size=128, num_hidden_layers=1, num_attention_heads=2, intermediate_size=256, bos_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=128, num_hidden_layers=1, num_attention_heads=2, intermediate_size=256, image_size=32, patch_size=8),
        projection_dim=64,
    )
    model = CLIPModel(config)
    assert _kinds(model, "text_projection.weight", "visual_projection.weight") == ["head", "head"]
    assert _kinds(model, "text_model.encoder.layers.0.mlp.fc1.weight")[0] == "matrix"


@pytest.mark.parametrize("layers", [2, 3])
def test_without_named_heads_the_last_matrix_module_is_the_head(layers):
    model = nn.Sequential(*[nn.Linear(128, 128) for _ in range(layers)])
    kinds = classify_parameters(model).kinds()
    assert [kinds[f"{i}.weight"] for i in range(layers)] == ["matrix"] * (layers - 1) + ["head"]
