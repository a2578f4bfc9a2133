"""RTL runs of whole programs: the generic driver (sim/run_program.py) and `vit2hw sim`.

The driver test builds a small program by hand (GEMM → requantize → STORE → LOAD → uniform
softmax, the attention pattern), runs it on two different input matrices in one cocotb launch,
and checks both final memories against ``vit2hw.intops`` and both cycle counts against
``vit2hw.cyclemodel.program_cycles``. The acceptance tests run ``vit2hw sim`` on real
vit_digits test images: logits bit-exact with ``vit2hw.reference.run_graph``, RTL cycles equal
to the cycle model.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hdl.config import AcceleratorConfig
from vit2hw import intops as I
from vit2hw.cyclemodel import program_cycles
from vit2hw.isa import (PARAM_RECORD, Assembler, Geometry, SoftmaxMode, Target, pack_records, pack_rows,
                        unpack_rows, Segment)

needs_iverilog = pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog not installed")
needs_verilator = pytest.mark.skipif(shutil.which("verilator") is None, reason="Verilator not installed")

SMALL = AcceleratorConfig(name="sim4x4", rows=4, cols=4, vector_lanes=4, act_buf_bytes=4 * 4 * 64,
                          weight_buf_bytes=4 * 4 * 64, out_buf_bytes=16 * 64, mem_bus_bits=32,
                          max_tokens=32, max_channels=32)


def _scores_program(cfg, w: np.ndarray, m: int):
    """Scores ``S = requant(X @ W)`` as int16, stored, reloaded into V, uniform softmax, stored.
    X (int8 [m, k]) is the per-run input at ``x_addr``; returns the assembler's program, the
    requantization constants and the addresses."""
    g = Geometry.from_config(cfg)
    asm = Assembler(g)
    wb = g.bus_bytes
    k, n = w.shape
    k_lines = -(-k // wb)
    nt = -(-n // g.cols)
    addr = 0x1000
    x_addr = addr
    addr += m * k_lines * wb
    w_addr = addr
    asm.data(w_addr, pack_rows(w.T, 1, k_lines * wb), "w")
    addr += n * k_lines * wb
    mult, shift = I.choose_multiplier(np.full(n, 3.0), max_shift=20)
    bias = np.arange(n) * 37 - 100
    cols = nt * g.cols
    pad = lambda v: np.concatenate([np.asarray(v, np.int64), np.zeros(cols - n, np.int64)])
    params = pack_records(PARAM_RECORD, cols, bias=pad(bias), m=pad(mult), s=pad(shift), zp=0)
    p_addr = addr
    asm.data(p_addr, params, "params")
    addr += len(params)
    s_row = nt * g.words_per_line(Target.O, 2) * wb     # int16 scores, one O line per tile
    lpr = -(-n // g.lanes)
    assert s_row == lpr * g.words_per_line(Target.V, 2) * wb
    s_addr = addr
    addr += m * s_row
    p_row = lpr * g.words_per_line(Target.V, 1) * wb
    y_addr = addr
    asm.load(Target.A, x_addr, m, k_lines, 0)
    asm.load(Target.B, w_addr, n, k_lines, 0)
    asm.load(Target.P, p_addr, nt, 1, 0)
    asm.gemm(m, n, k, a_addr=0, b_addr=0, o_addr=0, p_addr=0, out_bits=16)
    asm.store(Target.O, s_addr, m, nt, 0, row_elems=n, ebytes=2)
    asm.load(Target.V, s_addr, m, lpr, 0, ebytes=2)
    asm.softmax(0, m * lpr, m, n, mode=SoftmaxMode.UNIFORM)
    asm.store(Target.V, y_addr, m, lpr, m * lpr, row_elems=n, ebytes=1)
    consts = dict(mult=mult, shift=shift, bias=bias)
    return asm.end(), consts, dict(x=x_addr, k_lines=k_lines, s=s_addr, s_row=s_row, y=y_addr, p_row=p_row)


@needs_iverilog
def test_run_program_two_images_bit_exact_and_cycles(tmp_path):
    """One cocotb launch runs a hand-built program on two inputs; each run's scores and uniform
    softmax probabilities equal intops, the rest of memory keeps the program's image, and each
    run's cycles equal program_cycles exactly."""
    from sim.run_program import MemoryRun, run_program
    rng = np.random.default_rng(3)
    m, k, n = 6, 9, 7
    w = rng.integers(-128, 128, (k, n))
    program, c, a = _scores_program(SMALL, w, m)
    g = Geometry.from_config(SMALL)
    xs = [rng.integers(-128, 128, (m, k)), rng.integers(-20, 20, (m, k))]
    runs = [MemoryRun(f"img{i}", (Segment(a["x"], pack_rows(x, 1, a["k_lines"] * g.bus_bytes), "x"),))
            for i, x in enumerate(xs)]
    results = run_program(SMALL, program, runs, tmp_path / "build")
    want_cycles = program_cycles(program, SMALL)
    assert [r.name for r in results] == ["img0", "img1"]
    for x, res in zip(xs, results):
        scores = I.requantize(I.int_gemm(x, w, 8, 8), c["mult"], c["shift"], 16, True, 0, c["bias"])
        got_s = unpack_rows(res.read(a["s"], m * a["s_row"]), m, n, 2, a["s_row"])
        np.testing.assert_array_equal(got_s, scores)
        got_p = unpack_rows(res.read(a["y"], m * a["p_row"]), m, n, 1, a["p_row"])
        np.testing.assert_array_equal(got_p, I.uniform_softmax(scores))
        assert res.cycles == want_cycles
        w_seg = next(s for s in program.segments if s.name == "w")
        assert res.read(w_seg.addr, len(w_seg.data)) == w_seg.data
    assert not np.array_equal(results[0].memory, results[1].memory)


@needs_iverilog
@needs_verilator
def test_verilator_harness_equals_the_cocotb_bench(tmp_path):
    """The Verilator-compiled RTL with its C++ memory model ends with the same memory, byte for
    byte, and the same cycle count as the Icarus + cocotb run of the same program and inputs."""
    from sim.run_program import MemoryRun, run_program
    from sim.verilator_run import run_program_verilator
    rng = np.random.default_rng(8)
    m, k, n = 5, 10, 6
    program, _, a = _scores_program(SMALL, rng.integers(-128, 128, (k, n)), m)
    g = Geometry.from_config(SMALL)
    runs = [MemoryRun("img", (Segment(a["x"], pack_rows(rng.integers(-128, 128, (m, k)), 1,
                                                         a["k_lines"] * g.bus_bytes), "x"),))]
    (ica,) = run_program(SMALL, program, runs, tmp_path / "icarus")
    (ver,) = run_program_verilator(SMALL, program, runs, tmp_path / "verilator", mem_size=len(ica.memory))
    assert ver.memory == ica.memory
    assert ver.cycles == ica.cycles == program_cycles(program, SMALL)
    assert (ver.mem_reads, ver.mem_writes) == (ica.mem_reads, ica.mem_writes)


def test_run_program_rejects_overlay_over_code(tmp_path):
    """A run whose segment overwrites the program's instructions is refused before simulating."""
    from sim.run_program import MemoryRun, run_program
    from vit2hw.isa import ProgramError
    program, _, _ = _scores_program(SMALL, np.ones((4, 4), np.int64), 4)
    if shutil.which("iverilog") is None:
        pytest.skip("Icarus Verilog not installed")
    with pytest.raises(ProgramError, match="code"):
        run_program(SMALL, program, [MemoryRun("bad", (Segment(0, b"\0" * 32),))], tmp_path)


# ------------------------------------------------------------------ vit2hw sim


def _sim_cli(argv):
    from vit2hw.cli import main
    return main(["sim", *argv])


def test_sim_without_icarus_is_one_clear_error(tmp_path, monkeypatch, capsys):
    """Without iverilog, `vit2hw sim` stops before quantizing with one error line naming the
    install command, exit status 2, and writes nothing."""
    import sim.runner
    monkeypatch.setattr(sim.runner.shutil, "which", lambda name: None)
    assert _sim_cli(["--model", "vit_digits", "--bits", "8", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Icarus Verilog not found" in err[0] and "apt-get install" in err[0]
    assert not (tmp_path / "o").exists()


def test_sim_without_verilator_is_one_clear_error(tmp_path, monkeypatch, capsys):
    """`--simulator verilator` without Verilator on PATH: one error line naming the install
    command and the alternative, exit status 2, nothing written."""
    import sim.verilator_run
    monkeypatch.setattr(sim.verilator_run.shutil, "which", lambda name: None)
    out = tmp_path / "o"
    assert _sim_cli(["--model", "vit_digits", "--bits", "8", "--simulator", "verilator", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Verilator not found" in err[0] and "--simulator icarus" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("blocks", ["0", "13"])
def test_sim_blocks_out_of_range_is_one_clear_error(tmp_path, capsys, blocks):
    """`--blocks` outside 1..depth is refused before anything is simulated or written."""
    out = tmp_path / "o"
    rc = _sim_cli(["--model", "vit_digits", "--bits", "8", "--blocks", blocks, "--simulator", "verilator",
                   "--out", str(out)]) if shutil.which("verilator") else None
    if rc is None:
        pytest.skip("Verilator not installed")
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--blocks must be between 1 and 3" in err[0]
    assert not out.exists()


def test_sim_default_config_fits_the_model():
    """The default simulated configuration is the small 4x4 / 32-bit one, with softmax and
    LayerNorm rows sized for the model (vit_digits: 17 tokens, 64 channels)."""
    from vit2hw.cli_sim import sim_config
    from vit2hw.models.zoo import get_spec
    cfg = sim_config(get_spec("vit_digits"))
    assert (cfg.rows, cfg.cols, cfg.mem_bus_bits, cfg.vector_lanes) == (4, 4, 32, 4)
    assert cfg.max_tokens == 20 and cfg.max_channels == 64
    assert sim_config(get_spec("vit_digits"), array="2x4").rows == 2


def _accept(tmp_path, argv, n_images):
    out = tmp_path / "sim"
    rc = _sim_cli(["--model", "vit_digits", *argv, "--images", str(n_images), "--jobs", "2", "--quiet",
                   "--out", str(out)])
    doc = json.loads((out / "sim.json").read_text())
    assert rc == 0, doc
    assert doc["bit_exact"] and doc["n_images"] == n_images
    assert all(r["bit_exact"] and r["mismatches"] == 0 for r in doc["images"])
    assert all(r["rtl_top1"] == r["reference_top1"] for r in doc["images"])
    assert doc["cycles_equal"] and doc["rtl_cycles"] == doc["model_cycles"]
    assert all(r["cycles"] == doc["model_cycles"] for r in doc["images"])
    assert (out / "sim.md").read_text().count("| yes |") == n_images
    return doc


@needs_verilator
@pytest.mark.parametrize("bits", ["8", "mixed"])
def test_sim_vit_digits_eight_images_verilator(tmp_path, bits):
    """`vit2hw sim --model vit_digits --bits 8|mixed --simulator verilator` on 8 real digits test
    images: every logit bit-exact with the integer reference, RTL cycles equal to the cycle
    model (the Verilator harness is checked against the cocotb bench above)."""
    doc = _accept(tmp_path, ["--bits", bits, "--simulator", "verilator"], 8)
    assert doc["simulator"] == "verilator" and doc["blocks"] == 3


@needs_verilator
def test_sim_vit_digits_dsp_mac_pes_verilator(tmp_path):
    """The same model on an accelerator whose PEs are DSP-slice MACs (int4_packing off, the
    zcu102 PE): 4 real digits test images bit-exact, RTL cycles equal to the model."""
    import dataclasses
    from vit2hw.cli_sim import sim_config
    from vit2hw.models.zoo import get_spec
    cfg = dataclasses.replace(sim_config(get_spec("vit_digits")), name="sim4x4-mac", int4_packing=False)
    path = cfg.save(tmp_path / "mac.json")
    doc = _accept(tmp_path, ["--bits", "8", "--simulator", "verilator", "--config", str(path)], 4)
    assert doc["config"]["int4_packing"] is False


@pytest.mark.slow
@needs_iverilog
def test_sim_vit_digits_w8a8_eight_images(tmp_path):
    """`vit2hw sim --model vit_digits --bits 8` on 8 real digits test images: every logit
    bit-exact with the integer reference, RTL cycles equal to the cycle model (~15 min, 2 jobs)."""
    _accept(tmp_path, ["--bits", "8"], 8)


@pytest.mark.slow
@needs_iverilog
def test_sim_vit_digits_uniform_attention(tmp_path):
    """With uniform 8-bit attention (SOFTMAX mode 1, MUL8 P·V) the RTL stays bit-exact and
    cycle-exact on 2 real images."""
    doc = _accept(tmp_path, ["--bits", "8", "--attn", "uniform"], 2)
    assert doc["method"]


@pytest.mark.slow
@needs_iverilog
def test_sim_vit_digits_mixed_precision(tmp_path):
    """`--bits mixed` (per-module widths, packed int4 GEMMs where chosen) is bit-exact and
    cycle-exact on 2 real images."""
    _accept(tmp_path, ["--bits", "mixed"], 2)


@pytest.mark.slow
@needs_iverilog
def test_sim_reports_a_mismatch(tmp_path, monkeypatch, capsys):
    """If the reference disagrees with the RTL in one logit, `vit2hw sim` exits 1, names that
    output in its error line and records it in sim.json."""
    import vit2hw.reference
    real = vit2hw.reference.run_graph

    def off_by_one(graph, inputs, keep=False):
        out = real(graph, inputs, keep)
        name = graph.outputs[0]
        out[name] = out[name].copy()
        out[name].reshape(out[name].shape[0], -1)[0, 3] += 1
        return out

    monkeypatch.setattr(vit2hw.reference, "run_graph", off_by_one)
    out = tmp_path / "sim"
    assert _sim_cli(["--model", "vit_digits", "--bits", "8", "--images", "1", "--quiet", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "differs from the reference: image 0: output" in err and "1 of" in err
    doc = json.loads((out / "sim.json").read_text())
    assert not doc["bit_exact"] and doc["images"][0]["mismatches"] == 1
