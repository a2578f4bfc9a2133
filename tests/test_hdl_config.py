"""AcceleratorConfig: validation, JSON round trip, presets fit their devices, RxC parsing."""

from __future__ import annotations

import json

import pytest

from hdl.config import DEVICES, PRESETS, AcceleratorConfig, Device, get_preset, parse_array
from vit2hw.report import estimate_resources, scratchpad_bram_bytes


def test_round_trip_through_json(tmp_path):
    """save/load and to_dict/from_dict reproduce an equal config for every preset."""
    for name, cfg in PRESETS.items():
        path = cfg.save(tmp_path / f"{name}.json")
        assert AcceleratorConfig.load(path) == cfg
        assert AcceleratorConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_presets_fit_their_devices():
    """Array DSPs (one per PE, two per requantizer column) and buffers fit the target part."""
    for cfg in PRESETS.values():
        dev = cfg.target
        assert isinstance(dev, Device)
        assert cfg.pes + 2 * cfg.cols <= dev.dsp, cfg.name
        assert cfg.act_buf_bytes + cfg.weight_buf_bytes + cfg.out_buf_bytes <= dev.bram_bytes
        est = estimate_resources(cfg)        # scratchpad copies per read port, units, array
        assert est["fits"] and max(est["fraction"].values()) <= 0.96, (cfg.name, est["fraction"])
    assert get_preset("pynq-z2").device == "xc7z020"
    assert get_preset("zcu102").device == "xczu9eg"
    assert DEVICES["xczu9eg"].dsp == 2520 and DEVICES["xc7z020"].bram36 == 140
    assert (get_preset("default").rows, get_preset("default").cols) == (16, 16)


def test_block_ram_model_reference_is_the_default_top():
    """The BRAM model's reference scratchpad bytes are those of the default configuration
    (whose whole top was synthesized): A and B once, O twice, V three times, P once."""
    from vit2hw import report
    got = scratchpad_bram_bytes(get_preset("default"))
    assert got == {"A": 131072, "B": 131072, "O": 2 * 65536, "V": 3 * 65536, "P": 65536}
    assert sum(got.values()) == report._TOP_SPAD_BYTES
    assert estimate_resources(get_preset("default"))["estimate"]["bram"] == report._TOP_REF["bram"]


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="pynq-z2") as err:
        get_preset("kv260")
    assert "zcu102" in str(err.value) and "default" in str(err.value)


@pytest.mark.parametrize("field, value, message", [
    ("rows", 0, "rows"),
    ("cols", -3, "cols"),
    ("operand_bits", 4, "operand_bits"),
    ("acc_bits", 16, "acc_bits"),
    ("mem_bus_bits", 96, "mem_bus_bits"),
    ("vector_lanes", 12, "vector_lanes"),
    ("device", "xc7a35t", "device"),
    ("dataflow", "weight_stationary", "dataflow"),
    ("act_buf_bytes", 1000, "act_buf_bytes"),
    ("weight_buf_bytes", 10 * 2**20, "block RAM"),
    ("clock_mhz", 0, "clock_mhz"),
])
def test_validation_names_the_bad_field(field, value, message):
    d = AcceleratorConfig().to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=message):
        AcceleratorConfig.from_dict(d)


def test_unknown_fields_rejected():
    with pytest.raises(ValueError, match="unknown fields"):
        AcceleratorConfig.from_dict({**AcceleratorConfig().to_dict(), "colz": 3})


def test_derived_buffer_geometry():
    """Buffer words are one A column / one B row / one int32 output row; depths follow."""
    cfg = get_preset("default")
    assert cfg.act_word_bytes == 16 and cfg.weight_word_bytes == 16 and cfg.out_word_bytes == 64
    assert cfg.act_buf_depth * cfg.act_word_bytes == cfg.act_buf_bytes
    other = cfg.with_array(3, 5)
    assert (other.rows, other.cols) == (3, 5) and other.weight_buf_bytes % 5 == 0


def test_parse_array():
    assert parse_array("16x16") == (16, 16)
    assert parse_array(" 32X48 ") == (32, 48)
    for bad in ("16", "16x", "x4", "0x4", "4x4x4", "ax4"):
        with pytest.raises(ValueError, match="RxC|positive"):
            parse_array(bad)
