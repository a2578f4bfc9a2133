"""Model zoo and float ViT: architecture, parameter counts, weights, packaged checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vit2hw.data import load_digits_split
from vit2hw.models import (
    UnknownModelError,
    VisionTransformer,
    build_model,
    count_params,
    create_model,
    format_model_table,
    get_spec,
    init_synthetic,
    list_models,
)
from vit2hw.models.evaluate import top1_correct
from vit2hw.models.zoo import asset_path


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_deit_tiny_has_the_official_parameter_count():
    with torch.device("meta"):
        model = build_model(get_spec("deit_tiny"))
    assert _n_params(model) == 5_717_416


@pytest.mark.parametrize("name", list_models())
def test_count_params_matches_the_built_model(name):
    with torch.device("meta"):
        model = build_model(get_spec(name))
    assert _n_params(model) == count_params(get_spec(name))


def test_zoo_specs_have_the_documented_geometry():
    tiny, small, base = get_spec("deit_tiny"), get_spec("deit_small"), get_spec("deit_base")
    assert (tiny.embed_dim, tiny.num_heads, small.embed_dim, small.num_heads, base.embed_dim, base.num_heads) == (
        192, 3, 384, 6, 768, 12,
    )
    assert all(s.num_tokens == 197 and s.num_classes == 1000 and s.depth == 12 for s in (tiny, small, base))
    assert tiny.download_url == "https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth"
    digits = get_spec("vit_digits")
    assert (digits.num_tokens, digits.embed_dim, digits.depth, digits.num_heads, digits.mlp_hidden) == (17, 64, 3, 4, 128)


def test_state_dict_keys_follow_the_deit_layout():
    keys = set(build_model(get_spec("vit_digits")).state_dict())
    expected_block = {
        f"blocks.2.{m}.{p}"
        for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for p in ("weight", "bias")
    }
    assert expected_block <= keys
    assert {"patch_embed.proj.weight", "cls_token", "pos_embed", "norm.weight", "head.bias"} <= keys
    assert not any(k.startswith("blocks.3.") for k in keys)


def test_forward_shape_and_layer_conventions():
    model = create_model("vit_digits", weights="synthetic")
    out = model(torch.zeros(5, 1, 8, 8))
    assert out.shape == (5, 10)
    assert model.blocks[0].norm1.eps == 1e-6
    assert model.blocks[0].mlp.act.approximate == "none"
    assert model.blocks[0].attn.scale == 16**-0.5


def test_attention_equals_torch_scaled_dot_product_attention():
    """The explicit attention is the standard one (guards the head split/merge order)."""
    torch.manual_seed(0)
    attn = build_model(get_spec("vit_digits")).blocks[0].attn
    x = torch.randn(2, 17, 64)
    q, k, v = attn.qkv(x).reshape(2, 17, 3, 4, 16).permute(2, 0, 3, 1, 4)
    ref = attn.proj(nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 17, 64))
    torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)


def test_synthetic_init_is_deterministic_and_ignores_global_rng():
    torch.manual_seed(1)
    a = create_model("vit_digits", weights="synthetic").state_dict()
    torch.manual_seed(2)
    state_before = torch.get_rng_state()
    b = create_model("vit_digits", weights="synthetic").state_dict()
    assert torch.equal(torch.get_rng_state(), state_before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = init_synthetic(build_model(get_spec("vit_digits")), seed=1).state_dict()
    assert not torch.equal(a["head.weight"], other["head.weight"])


def test_deit_without_weights_is_synthetic_with_a_notice(capsys):
    model = create_model("deit_tiny")
    assert "synthetic" in capsys.readouterr().err
    reference = init_synthetic(build_model(get_spec("deit_tiny")))
    assert torch.equal(model.head.weight, reference.head.weight)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match="deit_tiny.*vit_digits"):
        get_spec("deit_huge")
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        create_model("resnet50")


def test_model_table_lists_every_model():
    table = format_model_table()
    assert "5.72M" in table and "17" in table
    assert all(name in table for name in list_models())


def test_packaged_vit_digits_reproduces_its_recorded_accuracy():
    record = json.loads(asset_path("vit_digits.json").read_text())
    model = create_model("vit_digits")
    assert isinstance(model, VisionTransformer) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    correct = top1_correct(model, load_digits_split("test"), get_spec("vit_digits"))
    assert correct == record["test_correct"]
    assert record["test_accuracy"] >= 0.96
