"""Checkpoint reading and strict loading: formats, key prefixes, and one clear error per fault."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from vit2hw.checkpoint import CheckpointError, load_state_dict, load_weights
from vit2hw.models import build_model, create_model, get_spec


@pytest.fixture(scope="module")
def tiny_state():
    """A synthetic deit_tiny state dict, i.e. official DeiT key names and shapes."""
    return {k: v.clone() for k, v in create_model("deit_tiny", weights="synthetic").state_dict().items()}


def _equal(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_official_layout_round_trip_loads_strictly(tmp_path, tiny_state):
    path = tmp_path / "deit_tiny.pth"
    torch.save({"model": tiny_state}, path)
    model = create_model("deit_tiny", weights=path)
    assert _equal(model, tiny_state)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module_prefix"])
def test_other_torch_layouts_load(tmp_path, wrap):
    state = create_model("vit_digits", weights="synthetic").state_dict()
    obj = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "module_prefix": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    torch.save(obj, tmp_path / "ckpt.pt")
    assert _equal(load_weights(build_model(get_spec("vit_digits")), tmp_path / "ckpt.pt"), state)


def test_safetensors_loads(tmp_path):
    state = create_model("vit_digits", weights="synthetic").state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    assert _equal(load_weights(build_model(get_spec("vit_digits")), tmp_path / "w.safetensors"), state)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "nope.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_garbage_file(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="garbage"):
        load_state_dict(path)


def test_checkpoint_without_tensors(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="contains no tensors"):
        load_state_dict(tmp_path / "meta.pth")


def _failed_load_leaves_model_unchanged(state, match):
    model = create_model("vit_digits", weights="synthetic")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=match):
        load_weights(model, state)
    assert _equal(model, before)


def _zeros():
    return {k: torch.zeros_like(v) for k, v in build_model(get_spec("vit_digits")).state_dict().items()}


def test_missing_keys_are_counted_and_named():
    state = _zeros()
    del state["head.weight"], state["head.bias"]
    _failed_load_leaves_model_unchanged(state, r"2 missing key\(s\) \(head\.weight, head\.bias\)")


def test_unexpected_keys_are_counted_and_named():
    state = _zeros()
    state["blocks.9.attn.qkv.weight"] = torch.zeros(3, 3)
    _failed_load_leaves_model_unchanged(state, r"1 unexpected key\(s\) \(blocks\.9\.attn\.qkv\.weight\)")


def test_shape_mismatch_names_both_shapes(tiny_state):
    # A DeiT-Tiny checkpoint into vit_digits: everything mismatches; counts and examples shown.
    with pytest.raises(CheckpointError, match=r"108 unexpected key\(s\).*44 shape mismatch\(es\) \(cls_token: "
                       r"checkpoint \[1, 1, 192\] vs model \[1, 1, 64\].*\+41 more\)"):
        load_weights(build_model(get_spec("vit_digits")), tiny_state)


def test_error_is_a_value_error_with_one_message():
    state = _zeros()
    del state["norm.bias"]
    state["extra"] = torch.zeros(1)
    state["head.bias"] = torch.zeros(11)
    with pytest.raises(ValueError) as info:
        load_weights(build_model(get_spec("vit_digits")), state)
    message = str(info.value)
    assert "\n" not in message
    assert "1 missing" in message and "1 unexpected" in message and "1 shape mismatch" in message
