"""Scheduler: programs for real quantized graphs, checked by the ISA interpreter and the cycle model.

The interpreter (``vit2hw.isasim``) executes each instruction with ``vit2hw.intops``; running a
scheduled vit_digits on it must reproduce the integer reference executor's logits bit for bit,
for log2 and uniform attention and for array shapes that force GEMM blocking. Also: clear
capacity errors, per-instruction node attribution, cycle bookkeeping and determinism.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import numpy as np
import pytest

from hdl.config import AcceleratorConfig, get_preset
from vit2hw.cyclemodel import instruction_cycles, program_cycles, timeline
from vit2hw.hazards import conflicts
from vit2hw.isa import Engine, Geometry, Op, Target, engine_of, instr_engine, unpack_rows
from vit2hw.isasim import run_program
from vit2hw.pipeline import graph_input
from vit2hw.reference import run_graph
from vit2hw.report import analyze
from vit2hw.scheduler import TileError, read_output, schedule, write_input

#: small array and scratchpads: GEMMs need several row and column blocks, vector ops several chunks
SMALL = AcceleratorConfig(name="small4x8", rows=4, cols=8, vector_lanes=8, act_buf_bytes=4 * 8 * 24,
                          weight_buf_bytes=8 * 8 * 24, out_buf_bytes=8 * 4 * 48, mem_bus_bits=64,
                          max_tokens=32, max_channels=128)


def _run_image(sp, cfg, img) -> bytearray:
    """The memory image after interpreting ``sp``'s program on one input."""
    (pin,) = sp.inputs.values()
    mem = bytearray(sp.mem_bytes)
    write_input(mem, pin, img)
    run_program(sp.program, cfg, mem)
    return mem


def _run_images(graph, cfg, images):
    sp = schedule(graph, cfg)
    (pout,) = sp.outputs.values()
    return sp, np.stack([read_output(_run_image(sp, cfg, img), pout) for img in images])


def _quantize(digits_model, attn: str):
    from vit2hw.data import load_calib_data
    from vit2hw.pipeline import quantize_model
    model, spec = digits_model
    calib = load_calib_data(spec, None, 16).images
    return quantize_model(model, spec, calib, "8", "fqvit", progress=False, attn=attn).graph


@pytest.fixture(scope="module")
def digits_log2(digits_model):
    return _quantize(digits_model, "log2")


@pytest.fixture(scope="module")
def digits_uniform(digits_model):
    return _quantize(digits_model, "uniform")


@pytest.fixture(scope="module")
def test_codes(digits_test):
    return graph_input(digits_test.images[:3])


#: an odd number of rows: the per-token bias keeps one P line per output row (no bias_pairs)
ODD = AcceleratorConfig(name="odd5x8", rows=5, cols=8, vector_lanes=8, act_buf_bytes=5 * 8 * 24,
                        weight_buf_bytes=8 * 8 * 24, out_buf_bytes=8 * 4 * 48, mem_bus_bits=64,
                        max_tokens=32, max_channels=128)
#: even, not a multiple of four: two rows to a P line (bias_pairs, no bias_quads)
SIX = dataclasses.replace(ODD, name="six6x8", rows=6, act_buf_bytes=6 * 8 * 24)


def _per_token_layout(sp) -> set[str]:
    """How the patch embedding's GEMMs lay their per-token biases out in P."""
    return {"quads" if i["bias_quads"] else "pairs" if i["bias_pairs"] else "rows" if i["bias_per_row"] else "none"
            for i, n in zip(sp.program.instructions, sp.per_instr_layer) if i.op == Op.GEMM and n == "patch_embed"}


@pytest.mark.parametrize("cfg", [get_preset("default"), SMALL, SIX, ODD], ids=["default16x16", "small4x8", "six6x8",
                                                                                "odd5x8"])
def test_log2_program_bit_exact(digits_log2, test_codes, cfg):
    """The scheduled program, run by the ISA interpreter, gives exactly the reference logits
    (the patch embedding's per-token bias four rows to a P line where the rows are a multiple
    of four, two on the other even array, one on the odd one)."""
    g = digits_log2
    assert g.nodes["blocks.0.attn.softmax"].attrs.get("mode", "log2") == "log2"
    sp, got = _run_images(g, cfg, test_codes)
    assert _per_token_layout(sp) == {"quads" if cfg.rows % 4 == 0 else "pairs" if cfg.rows % 2 == 0 else "rows"}
    want = run_graph(g, test_codes)[g.outputs[0]]
    np.testing.assert_array_equal(got, want)


def test_per_token_biases_wider_than_24_bits_keep_bias_pairs(digits_log2, test_codes):
    """A per-token bias outside 24 bits cannot go into a quad record: the scheduler lays the
    patch embedding's biases out two rows to a P line instead, still bit-exact."""
    g = copy.deepcopy(digits_log2)
    bias = g.nodes["patch_embed"].consts["bias"]
    assert bias.ndim == 2
    bias[3, 1] = 1 << 24
    sp, got = _run_images(g, SMALL, test_codes)
    assert _per_token_layout(sp) == {"pairs"}
    np.testing.assert_array_equal(got, run_graph(g, test_codes)[g.outputs[0]])


def test_uniform_attention_program_bit_exact(digits_uniform, test_codes):
    """Uniform 8-bit attention (SOFTMAX mode 1, MUL8 P·V) is bit-exact too."""
    g = digits_uniform
    assert g.nodes["blocks.0.attn.softmax"].attrs["mode"] == "uniform"
    sp, got = _run_images(g, SMALL, test_codes)
    modes = {i["mode"] for i in sp.program.instructions if i.op == Op.SOFTMAX}
    assert modes == {1}
    np.testing.assert_array_equal(got, run_graph(g, test_codes)[g.outputs[0]])


def test_input_accepts_image_or_patches(digits_log2, test_codes):
    """The host patchifies: write_input takes the image codes or the patch matrix, same bytes."""
    sp = schedule(digits_log2, SMALL)
    (pin,) = sp.inputs.values()
    assert pin.transform == "patchify" and pin.source == digits_log2.inputs[0]
    a, b = bytearray(sp.mem_bytes), bytearray(sp.mem_bytes)
    write_input(a, pin, test_codes[0])
    patches = run_graph(digits_log2, test_codes[:1], keep=True)[pin.tensor][0]
    write_input(b, pin, patches)
    assert a == b


def test_layer_attribution(digits_log2):
    """Every instruction belongs to a graph node whose op matches the instruction's unit."""
    g = digits_log2
    sp = schedule(g, SMALL)
    instrs = sp.program.instructions
    assert len(sp.per_instr_layer) == len(instrs) and instrs[-1].op == Op.END
    allowed = {Op.GEMM: {"linear", "matmul_qk", "attn_v"}, Op.LAYERNORM: {"layernorm"},
               Op.SOFTMAX: {"softmax"}, Op.LUT: {"lut"}, Op.RESIDUAL_ADD: {"residual_add"},
               Op.MOVE: {"softmax"}}
    for ins, name in zip(instrs, sp.per_instr_layer):
        assert name in g.nodes, name
        if ins.op in allowed:
            assert g.nodes[name].op in allowed[ins.op], (ins, name)
    gemm_nodes = {n for i, n in zip(instrs, sp.per_instr_layer) if i.op == Op.GEMM}
    assert gemm_nodes == {n.name for n in g.nodes.values() if n.op in ("linear", "matmul_qk", "attn_v")}


@pytest.mark.parametrize("cfg", [get_preset("default"), SMALL], ids=["default16x16", "small4x8"])
def test_cycle_bookkeeping(digits_log2, cfg):
    """The per-node shares add up to program_cycles; the engines overlap, so the total is below
    the sequential sum of the instructions and at least the busiest engine's busy cycles;
    ideal ≤ actual."""
    sp = schedule(digits_log2, cfg)
    a = analyze(sp, cfg)
    tl = timeline(sp.program, cfg)
    sequential = sum(instruction_cycles(i, cfg) for i in sp.program.instructions)
    assert a.instr_cycles == tl.makespan_shares() and a.total_cycles == program_cycles(sp.program, cfg)
    assert sum(a.instr_cycles) == a.total_cycles == sum(l.cycles for l in a.layers.values())
    busy = {u: sum(l.by_unit[u] for l in a.layers.values()) for u in ("load", "store", "array", "vector")}
    per_engine = {}
    for ins, b in zip(tl.instructions, tl.busy):
        per_engine[instr_engine(ins)] = per_engine.get(instr_engine(ins), 0) + b
    assert per_engine[Engine.DMA] + per_engine[Engine.WDMA] == busy["load"] + busy["store"]
    assert per_engine[Engine.WDMA] > 0 and per_engine[Engine.DMA] > 0
    assert max(per_engine.values()) <= a.total_cycles < sequential
    assert 0 < a.ideal_cycles <= a.total_cycles and 0 < a.utilization <= 1
    for l in a.layers.values():
        assert l.ideal <= l.by_unit["array"], l.node
    pes = cfg.rows * cfg.cols
    assert a.ideal_cycles >= a.macs // pes


def test_no_conflicting_instructions_overlap(digits_log2):
    """Replayed on the cycle model, any two instructions whose engines are busy at the same
    time touch disjoint storage (the wait fields the scheduler's program carries suffice)."""
    for cfg in (SMALL, get_preset("default")):
        sp = schedule(digits_log2, cfg)
        g = Geometry.from_config(cfg)
        tl = timeline(sp.program, cfg)
        spans = [(x, f, ins) for ins, x, f in zip(tl.instructions, tl.issue, tl.finish) if engine_of(ins.op) is not None]
        overlapping = 0
        for i, (x0, f0, a) in enumerate(spans):
            for x1, f1, b in spans[i + 1:]:
                if x1 >= f0:
                    break       # issue is in order: later ones start later still
                overlapping += 1
                assert not conflicts(a, b, g), (a, b)
        assert overlapping > 0      # the engines do overlap


def test_weight_regions_keep_programs_bit_exact(digits_log2, test_codes):
    """With B's two weight regions, the weights that fit one go there in turn (each LOAD
    one line group), the program stays bit-exact on the ISA interpreter and no two
    instructions touching the same storage run at the same time."""
    cfg = get_preset("default")
    g = Geometry.from_config(cfg)
    sp = schedule(digits_log2, cfg, weight_regions=True)
    got = []
    for img in test_codes:
        mem = bytearray(sp.mem_bytes)
        write_input(mem, next(iter(sp.inputs.values())), img)
        run_program(sp.program, cfg, mem)
        got.append(read_output(mem, next(iter(sp.outputs.values()))))
    np.testing.assert_array_equal(np.stack(got), run_graph(digits_log2, test_codes)[digits_log2.outputs[0]])
    region = max(-(-n.consts["weight"].shape[0] // g.bus_bytes) * -(-n.consts["weight"].shape[1] // g.cols)
                 for n in digits_log2.nodes.values() if n.op == "linear")
    assert 2 * region <= g.b_depth * 3 // 4
    tops = sorted({ins["spad_addr"] for ins in sp.program.instructions
                   if ins.op == Op.LOAD and ins["target"] == Target.B and ins["spad_addr"] >= g.b_depth - 2 * region})
    assert tops and tops[0] == g.b_depth - 2 * region and any(t >= g.b_depth - region for t in tops)
    assert all(ins["rows"] <= g.cols for ins in sp.program.instructions
               if ins.op == Op.LOAD and ins["target"] == Target.B and ins["spad_addr"] >= g.b_depth - 2 * region)
    tl = timeline(sp.program, cfg)
    spans = [(x, f, ins) for ins, x, f in zip(tl.instructions, tl.issue, tl.finish) if engine_of(ins.op) is not None]
    for i, (x0, f0, a) in enumerate(spans):
        for x1, f1, b in spans[i + 1:]:
            if x1 >= f0:
                break
            assert not conflicts(a, b, g), (a, b)


def test_schedule_is_deterministic(digits_log2):
    """Two schedules of one graph give byte-identical programs and placements."""
    a, b = schedule(digits_log2, SMALL), schedule(digits_log2, SMALL)
    assert a.program.to_bytes() == b.program.to_bytes()
    assert a.inputs == b.inputs and a.outputs == b.outputs and a.per_instr_layer == b.per_instr_layer


def test_weight_reuse_skips_reloads(digits_log2):
    """q and k read the same LayerNorm output: the A block is loaded once for both."""
    sp = schedule(digits_log2, get_preset("default"))
    loads = [(i["ext_addr"], n) for i, n in zip(sp.program.instructions, sp.per_instr_layer)
             if i.op == Op.LOAD and i["target"] == 0]
    ln_out = sp.regions["blocks.0.norm1.out"].addr
    assert [n for a, n in loads if a == ln_out] == ["blocks.0.attn.q"]


@pytest.mark.parametrize("kw,msg", [
    (dict(act_buf_bytes=4 * 8 * 4), "buffers too small for a tile"),      # 4 A lines < K=64 bytes
    (dict(out_buf_bytes=8 * 4 * 2), "buffers too small for a tile"),      # O shallower than one tile
    (dict(vector_lanes=128, mem_bus_bits=64), "buffers too small for a tile"),  # 64 channels < 128 lanes
])
def test_capacity_errors(digits_log2, kw, msg):
    """Scratchpads that cannot hold one tile give a clear TileError naming the op."""
    cfg = AcceleratorConfig(**{**SMALL.to_dict(), **kw})
    with pytest.raises(TileError, match=msg):
        schedule(digits_log2, cfg)


@functools.lru_cache(maxsize=None)
def _deit_block(attn: str):
    """A one-block DeiT-Tiny (synthetic weights) quantized W8A8, and the two images used."""
    import dataclasses

    import torch

    from vit2hw.models.zoo import create_model, get_spec
    from vit2hw.pipeline import quantize_model
    spec = dataclasses.replace(get_spec("deit_tiny"), depth=1)
    model = create_model("deit_tiny", "synthetic")
    model.blocks = torch.nn.ModuleList(list(model.blocks)[:1])
    imgs = np.random.default_rng(0).integers(0, 256, (2, 3, 224, 224)).astype(np.uint8)
    return quantize_model(model, spec, imgs, "8", "fqvit", progress=False, attn=attn).graph, imgs


def test_deit_tiny_layernorm_output_loaded_once():
    """On zcu102 q and k read LayerNorm 1's 197 rows from A as 5 row blocks: each GEMM's
    blocks take their own places in A's two halves, so k finds all of q's blocks there and
    each block is LOADed once (when blocks took turns at each half's start, k reloaded all)."""
    g, _ = _deit_block("uniform")
    sp = schedule(g, get_preset("zcu102"))
    r = sp.regions["blocks.0.norm1.out"]
    loads = [n for i, n in zip(sp.program.instructions, sp.per_instr_layer)
             if i.op == Op.LOAD and i["target"] == Target.A and r.addr <= i["ext_addr"] < r.addr + r.rows * r.stride]
    assert loads == ["blocks.0.attn.q"] * 5


@pytest.mark.parametrize("attn", ["log2", "uniform"])
def test_deit_tiny_block_bit_exact(attn):
    """One DeiT-Tiny block (197 tokens, 192 channels, 3 heads; synthetic weights) on the zcu102
    and default presets: the interpreted program equals the reference exactly. On zcu102 the
    scores loop takes 40, 40, 40, 40 and 37 rows per head (80, 80 and 37 uncapped:
    test_scores_chunks_of_one_row_tile), so a head's short last chunk is followed, two chunks
    later, by a longer one whose scores reach into the lines where the short chunk's P·V
    output waits for its STORE (it must be stored first)."""
    g, _ = _deit_block(attn)
    for cfg in (get_preset("zcu102"), get_preset("default")):
        _check_deit_block(schedule(g, cfg), cfg, attn)


def _check_deit_block(sp, cfg, attn: str) -> None:
    """``sp`` (a schedule of ``_deit_block(attn)``) interpreted on its first image gives the
    reference's logits and attention output exactly."""
    g, imgs = _deit_block(attn)
    codes = graph_input(imgs[:1])
    ref = run_graph(g, codes, keep=True)
    # one block's logits see only the class token; the attention output (stored to memory
    # for the projection) has every token's row
    attn_out = "blocks.0.attn.out"
    (pout,) = sp.outputs.values()
    mem = _run_image(sp, cfg, codes[0])
    np.testing.assert_array_equal(read_output(mem, pout), ref[g.outputs[0]][0])
    r = sp.regions[attn_out]
    got = unpack_rows(bytes(mem[r.addr:r.addr + r.rows * r.stride]), r.rows, r.cols, r.ebytes, r.stride, True)
    np.testing.assert_array_equal(got.reshape(ref[attn_out][0].shape), ref[attn_out][0])


def test_scores_chunks_of_one_row_tile():
    """``scores_rows`` caps a scores loop's chunk: on zcu102 with 40 (one row tile) every
    SOFTMAX normalizes at most 40 rows and every P·V GEMM covers one row tile, where the
    uncapped loop takes 80-row chunks; both programs stay bit-exact. schedule() also tries
    the one-tile chunks and keeps them only when shorter: its program takes no more cycles
    than the uncapped one."""
    g, _ = _deit_block("uniform")
    cfg = get_preset("zcu102")
    cycles = {}
    for cap in (0, cfg.rows):
        sp = schedule(g, cfg, scores_rows=cap)
        sm = [i["rows"] for i in sp.program.instructions if i.op == Op.SOFTMAX]
        av = [i["m_tiles"] for i, n in zip(sp.program.instructions, sp.per_instr_layer)
              if i.op == Op.GEMM and n == "blocks.0.attn.av"]
        assert max(sm) == (cfg.rows if cap else 2 * cfg.rows) and max(av) == (1 if cap else 2)
        _check_deit_block(sp, cfg, "uniform")
        cycles[cap] = program_cycles(sp.program, cfg)
    assert program_cycles(schedule(g, cfg).program, cfg) <= cycles[0]
    with pytest.raises(ValueError, match="scores_rows"):
        schedule(g, cfg, scores_rows=-1)


def test_interleaving_keeps_every_dependent_pair_and_saves_cycles(digits_log2):
    """The cross-node reordering (vit2hw.reorder) is a permutation of the node-by-node program
    that keeps every dependent pair (scratchpad or external-memory RAW/WAR/WAW, V write half)
    in order, moves some instructions across nodes, gives some LOADs into B or P to the DMA
    engine (``on_dma``, nothing else about them changed), and takes fewer cycles."""
    from vit2hw.reorder import depends
    cfg = get_preset("default")
    g = Geometry.from_config(cfg)
    plain = schedule(digits_log2, cfg, interleave=False, blocking="serial", weight_regions=False)
    mixed = schedule(digits_log2, cfg, blocking="serial", weight_regions=False)
    a = [i.with_wait(0) for i in plain.program.instructions]
    assert not any(i.op == Op.LOAD and i["on_dma"] for i in a)
    moved = [i for i in mixed.program.instructions if i.op == Op.LOAD and i["on_dma"]]
    assert moved and all(Target(i["target"]) in (Target.B, Target.P) for i in moved)
    b = [i.with_wait(0).with_fields(on_dma=0) if i.op == Op.LOAD else i.with_wait(0)
         for i in mixed.program.instructions]
    assert sorted(map(str, a)) == sorted(map(str, b)) and a != b
    pos: dict[str, list[int]] = {}
    for k, ins in enumerate(b):
        pos.setdefault(str(ins), []).append(k)
    where = []
    seen: dict[str, int] = {}
    for ins in a:                       # the n-th copy of an instruction maps to its n-th copy
        key = str(ins)
        where.append(pos[key][seen.get(key, 0)])
        seen[key] = seen.get(key, 0) + 1
    for i in range(len(a)):
        for j in range(i + 1, min(len(a), i + 200)):
            if depends(a[i], a[j], g):
                assert where[i] < where[j], (a[i], a[j])
    assert program_cycles(mixed.program, cfg) < program_cycles(plain.program, cfg)


def test_gelu_table_runs_on_the_fc1_drain(digits_log2, test_codes):
    """Every GELU lookup whose input is only its MLP fc1's output is fused into that GEMM: the
    program has no LUT instruction, each fc1 GEMM carries the table flag and the table's width,
    and the program still reproduces the reference logits bit for bit."""
    g = digits_log2
    luts = [n for n in g.nodes.values() if n.op == "lut"]
    assert luts
    sp, got = _run_images(g, get_preset("default"), test_codes[:2])
    instrs = sp.program.instructions
    assert not any(i.op == Op.LUT for i in instrs)
    for lut in luts:
        fc1 = g.producer(lut.inputs[0])
        flags = {(i["lut"], i["lut_bits"]) for i, n in zip(instrs, sp.per_instr_layer)
                 if n == fc1.name and i.op == Op.GEMM}
        assert flags == {(1, g.tensors[lut.inputs[0]].bits)}, (fc1.name, flags)
    for img, logits in zip(test_codes[:2], got):
        np.testing.assert_array_equal(logits, run_graph(g, img[None])[g.outputs[0]][0])


def test_scores_and_residual_sums_stay_on_chip(digits_log2):
    """The attention scores go from the array to the softmax unit on chip (every SOFTMAX reads
    them in O): no instruction stores or loads the scores tensor's external region; the
    residual operands a linear computes reach V by MOVE; the LayerNorm of a residual sum takes
    the sum from V: none of its instructions is a LOAD of activations (only its constants)."""
    from vit2hw.isa import Target
    g = digits_log2
    sp = schedule(g, get_preset("default"))
    instrs = sp.program.instructions
    assert any(i.op == Op.MOVE for i in instrs)
    softmaxes = [i for i in instrs if i.op == Op.SOFTMAX]
    assert softmaxes and all(i["src_o"] == 1 and i["src_row_lines"] > 0 for i in softmaxes)
    for qk in (n for n in g.nodes.values() if n.op == "matmul_qk"):
        r = sp.regions[qk.output]
        lo, hi = r.addr, r.addr + r.rows * r.stride
        for i in instrs:
            if i.op in (Op.LOAD, Op.STORE):
                assert not lo <= i["ext_addr"] < hi, (qk.name, i)
    fused = [n for n in g.nodes.values() if n.op == "layernorm"
             and g.producer(n.inputs[0]) is not None and g.producer(n.inputs[0]).op == "residual_add"]
    assert fused
    for ln in fused:
        ops = [(i.op, i["target"] if i.op == Op.LOAD else None) for i, n in zip(instrs, sp.per_instr_layer)
               if n == ln.name]
        assert (Op.LAYERNORM, None) in ops and all(t == Target.LN_CONST for op, t in ops if op == Op.LOAD), ops


@pytest.mark.parametrize("cfg", [get_preset("default"), SMALL, get_preset("zcu102")],
                         ids=["default16x16", "small4x8", "zcu102"])
def test_pv_runs_inside_the_scores_loop(digits_log2, cfg):
    """The attention P·V of a chunk of rows is emitted right after that chunk's softmax, not
    after the whole head: in program order the P·V GEMMs of a block interleave with its
    SOFTMAXes (one before the last), and the probabilities are not re-read as a whole head
    (every P·V GEMM covers at most one chunk of rows). test_log2_program_bit_exact checks
    the results of the same programs."""
    sp = schedule(digits_log2, cfg)
    instrs, owners = sp.program.instructions, sp.per_instr_layer
    av_node = next(n.name for n in digits_log2.nodes.values() if n.op == "attn_v")
    sm_node = next(n.name for n in digits_log2.nodes.values() if n.op == "softmax")
    av = [i for i, (ins, o) in enumerate(zip(instrs, owners)) if o == av_node and ins.op == Op.GEMM]
    sm = [i for i, (ins, o) in enumerate(zip(instrs, owners)) if o == sm_node and ins.op == Op.SOFTMAX]
    assert av and sm and av[0] < sm[-1]
    chunk = max(instrs[i]["rows"] for i in sm)
    assert all(instrs[i]["m_tiles"] * cfg.rows <= -(-chunk // cfg.rows) * cfg.rows for i in av)


def test_blocking_models_both_tried(digits_log2):
    """schedule() keeps the faster of the serial and the overlap blocking models: its program
    takes no more cycles than either alone, and equals one of them."""
    cfg = get_preset("default")
    cycles = {b: program_cycles(schedule(digits_log2, cfg, blocking=b).program, cfg) for b in ("serial", "overlap")}
    best = program_cycles(schedule(digits_log2, cfg).program, cfg)
    assert best == min(cycles.values())
    with pytest.raises(ValueError, match="blocking"):
        schedule(digits_log2, cfg, blocking="fast")


def test_probabilities_and_mlp_hidden_stay_on_chip(digits_log2, test_codes):
    """STOREs into A hand the attention probabilities to P·V and the MLP's hidden activations
    (fc1 with its GELU table) to fc2 on chip: the program has STOREs into A owned by every
    softmax and every fc1, no LOAD or STORE touches those tensors' external regions, and the
    logits stay bit-exact with the reference."""
    g = digits_log2
    cfg = get_preset("default")
    sp, got = _run_images(g, cfg, test_codes[:2])
    instrs, owners = sp.program.instructions, sp.per_instr_layer
    on_chip = {o for ins, o in zip(instrs, owners) if ins.op == Op.STORE and ins["dst_a"]}
    softmaxes = {n.name for n in g.nodes.values() if n.op == "softmax"}
    luts = [n for n in g.nodes.values() if n.op == "lut"]
    fc1s = {g.producer(n.inputs[0]).name for n in luts}
    assert softmaxes and fc1s and softmaxes | fc1s <= on_chip
    for t in [n.output for n in g.nodes.values() if n.name in softmaxes] + [n.output for n in luts]:
        r = sp.regions[t]
        lo, hi = r.addr, r.addr + r.rows * r.stride
        for ins in instrs:
            if ins.op in (Op.LOAD, Op.STORE) and not (ins.op == Op.STORE and ins["dst_a"]):
                assert not lo <= ins["ext_addr"] < hi, (t, ins)
    np.testing.assert_array_equal(got, run_graph(g, test_codes[:2])[g.outputs[0]])
