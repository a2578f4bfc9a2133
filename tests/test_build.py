"""`vit2hw build` end to end on vit_digits with a small array: files, report schema,
byte-for-byte determinism, and bad input rejected with one error line and nothing written."""

from __future__ import annotations

import json

import pytest

from hdl.config import AcceleratorConfig
from vit2hw.cli import main
from vit2hw.cyclemodel import program_cycles
from vit2hw.isa import Program

ARGS = ["build", "--model", "vit_digits", "--bits", "8", "--calib-images", "8", "--array", "4x8", "--quiet"]


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    for run in ("a", "b"):
        assert main([*ARGS, "--out", str(root / run)]) == 0
    return root / "a", root / "b"


def test_build_writes_everything(two_builds):
    """RTL, program (binary + JSON), graph, report.json/md and three plots are written."""
    out, _ = two_builds
    names = set(_files(out))
    assert {"rtl/accelerator.v", "rtl/config.json", "program.bin", "program.json", "program_io.json",
            "graph/graph.json", "graph/consts.npz", "report.json", "report.md", "plots/cycles_by_unit.png",
            "plots/utilization.png", "plots/dram_traffic.png"} <= names
    assert "concurrently" in (out / "report.md").read_text()


def test_report_schema(two_builds):
    """report.json has the fixed keys; its totals agree with the cycle model of program.bin."""
    out, _ = two_builds
    rep = json.loads((out / "report.json").read_text())
    for key in ("total_cycles", "ideal_cycles", "utilization", "clock_mhz", "latency_ms", "fps", "dram_bytes",
                "resources", "bits", "per_layer", "estimates", "cycles_by_unit"):
        assert key in rep, key
    res = rep["resources"]
    assert set(res["estimate"]) == set(res["capacity"]) == {"dsp", "lut", "ff", "bram"}
    assert isinstance(res["fits"], bool) and res["method"] == "analytic"
    cfg = AcceleratorConfig.from_dict(rep["config"])
    assert (cfg.rows, cfg.cols) == (4, 8)
    prog = Program.from_bytes((out / "program.bin").read_bytes())
    assert rep["total_cycles"] == program_cycles(prog, cfg)
    assert rep["ideal_cycles"] <= rep["total_cycles"]
    assert sum(l["cycles"] for l in rep["per_layer"]) == rep["total_cycles"]
    # the per-operation summary regroups the layers: same totals, every node counted once
    ops = rep["by_op"]
    assert sum(e["cycles"] for e in ops) == rep["total_cycles"]
    assert sum(e["nodes"] for e in ops) == len(rep["per_layer"])
    assert len({e["op"] for e in ops}) == len(ops) == len({l["op"] for l in rep["per_layer"]})
    for u in ("load", "store", "array", "vector"):
        assert sum(e["by_unit"][u] for e in ops) == rep["cycles_by_unit"][u]
    assert [e["cycles"] for e in ops] == sorted((e["cycles"] for e in ops), reverse=True)
    assert "Where the cycles go" in (out / "report.md").read_text()
    assert rep["latency_ms"] == pytest.approx(rep["total_cycles"] / (rep["clock_mhz"] * 1e3), rel=1e-5)
    assert rep["estimates"]["pipelined"]["total_cycles"] <= rep["total_cycles"]
    assert set(rep["bits"]) == {f"blocks.{i}.{m}" for i in range(3) for m in ("attn", "mlp")}


def test_build_is_deterministic(two_builds):
    """Two builds of the same inputs are byte-identical, file for file (RTL, program, report, plots)."""
    a, b = two_builds
    fa, fb = _files(a), _files(b)
    assert set(fa) == set(fb)
    diff = [n for n in fa if fa[n] != fb[n]]
    assert not diff, diff


@pytest.mark.parametrize("extra,msg", [
    (["--target", "nope"], "unknown accelerator preset"),
    (["--target", "pynq-z2", "--array", "64x64"], "DSP"),
    (["--array", "4by8"], "not of the form RxC"),
])
def test_bad_config_is_one_error_line(tmp_path, capsys, extra, msg):
    """Unknown targets, arrays beyond the device and malformed shapes: exit 2, one line, nothing written."""
    argv = [a for a in ARGS if a not in ("--array", "4x8")] + extra + ["--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vit2hw: error:") and msg in err[0]
    assert not (tmp_path / "o").exists()


def test_buffers_too_small_is_one_error_line(tmp_path, capsys):
    """A configuration whose A scratchpad cannot hold one tile fails after calibration, writing nothing."""
    cfg = AcceleratorConfig(name="tiny", rows=4, cols=8, vector_lanes=8, act_buf_bytes=4 * 8 * 2,
                            weight_buf_bytes=8 * 8 * 16, out_buf_bytes=8 * 4 * 64, mem_bus_bits=64,
                            max_tokens=32, max_channels=128)
    path = cfg.save(tmp_path / "tiny.json")
    argv = ["build", "--model", "vit_digits", "--bits", "8", "--calib-images", "4", "--quiet",
            "--config", str(path), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "buffers too small for a tile" in err[0]
    assert not (tmp_path / "o").exists()
