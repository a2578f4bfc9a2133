"""Scheduler: lower a QuantizedGraph onto an accelerator configuration as one Program.

``schedule(graph, config) -> ScheduledProgram``. The graph's ops (in networkx
topological order) become instructions of :mod:`vit2hw.isa`:

=============== ==============================================================================
``linear``      tiled GEMM (:mod:`vit2hw.tiling`): A = activations (row-major), B = the weight's
                [out, in] rows, requantization records per column in P (MUL8; SHIFT for
                4-bit Shift-Log2 inputs). The patch embedding's per-token bias uses one
                record per output element (``bias_per_row``), four output rows to a P line
                (``bias_quads``: 24-bit biases) on an array whose rows are a multiple of four
                when the biases fit, else two (``bias_pairs``) on an even number of rows.
                A linear whose output is the V of an attention is computed *transposed*
                (Vᵀ = Wᵀ·Xᵀ: A = weight rows, B = token rows, one record per output row,
                ``C`` records to a P line: GEMM ``row_params``),
                because P·V needs Vᵀ rows (K contiguous) in B and there is no transpose DMA.
``matmul_qk``   one GEMM per head: A = q head slice, B = k head slice (strided loads), int16.
``softmax``     V-unit rows: LOAD V (int16 scores) → SOFTMAX → STORE V (codes / probabilities).
``attn_v``      one GEMM per head: A = probabilities, B = the head's Vᵀ rows; SHIFT mode for
                4-bit log2 codes, MUL8 for uniform 8-bit probabilities.
``layernorm``   LN constants → LN_CONST; LOAD V → LAYERNORM → STORE V, in row chunks.
``lut``         table → LUT_TABLE; fused into the GEMM of the linear that feeds it when that
                linear's output has no other use (the drain looks every code up, see
                ``plan_fusion``); otherwise LOAD V → LUT → STORE V.
``residual_add`` constants → RES_CONST; LOAD V a, LOAD V b → RESIDUAL_ADD → STORE V.
``take_rows`` / ``prepend_row``  no instructions: views of regions (:mod:`vit2hw.memplan`).
``patchify``    done by the host: the program's input is the patch matrix. The input
                :class:`Placement` records the transform so :func:`write_input` accepts
                either the image codes or the patches.
=============== ==============================================================================

On-chip hand-overs where a GEMM result's only use is a vector operation: attention scores →
softmax (``scores_softmax``: per head and chunk of rows a GEMM, then a SOFTMAX reading the
scores in O; the P·V of each chunk follows in the same loop, ``pv_chunk``) and a linear →
residual add (``linear_into_v``: the projection / fc2 computed chunk by chunk inside the
residual add, MOVE O → V); a LayerNorm of a residual sum runs on the sum in V. Every other
hand-over goes through external memory (STORE then LOAD), in particular everything a GEMM
reads (there is no path into A or B). Loads whose data is already resident in a
scratchpad (same source, same lines, nothing written over them since) are skipped, and a
GEMM's requantization parameters are loaded once when they all fit half of P.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vit2hw import intops as I
from vit2hw.graph import Node, QuantizedGraph, TensorSpec
from vit2hw.cyclemodel import program_cycles
from vit2hw.hazards import assign_waits, v_half_lines
from vit2hw.reorder import TIE_RULES, WINDOWS, reorder
from vit2hw.isa import (FIELDS, LN_RECORD, LUT_RECORD, PARAM_RECORD, RECORD_BYTES, RES_RECORD, Assembler,
                        Geometry, GemmMode, Op, Program, Segment, SoftmaxMode, Target, pack_quad_records,
                        pack_records, pack_rows, quad_biases_fit, store_row_words, unpack_rows)
from vit2hw.memplan import MemoryPlan, Region, element_bytes
from vit2hw.tiling import TileError, choose_blocking, resident_param_lines

__all__ = ["Placement", "ScheduledProgram", "GemmInfo", "schedule", "write_input", "read_output",
           "prepare_inputs", "TileError", "SOFTMAX_MODE_FIELD"]

#: the SOFTMAX field selecting the uniform 8-bit probability mode (value 1), once the ISA has it
SOFTMAX_MODE_FIELD = "mode"


#: output rows sharing a P line in each per-element parameter layout (GEMM bias_per_row,
#: with bias_pairs, with bias_quads)
_ROWS_PER_P_LINE = {"elem": 1, "elem2": 2, "elem4": 4}


def _pad_columns(v, ncols: int, total: int) -> np.ndarray:
    """A per-column value (or a scalar) for ``ncols`` columns, zero-padded to ``total``."""
    return np.pad(np.broadcast_to(np.asarray(v, np.int64), (ncols,)), (0, total - ncols))


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


# ------------------------------------------------------------------ public data

@dataclass(frozen=True)
class Placement:
    """Where a program input/output lives in external memory.

    A row-major matrix of ``prod(shape[:-1])`` rows and ``shape[-1]`` columns of
    ``ebytes``-byte little-endian integers (``signed`` or not, ``bits`` significant), row
    ``r`` at ``addr + r·row_stride``. ``tensor`` is the graph tensor stored there. For the
    input, ``source``/``source_shape``/``transform`` describe a host-side step from the graph
    input (``"patchify"`` with ``patch``): :func:`write_input` applies it when given the
    graph input's codes.
    """
    addr: int
    shape: tuple[int, ...]
    ebytes: int
    row_stride: int
    signed: bool
    bits: int
    tensor: str
    source: str = ""
    source_shape: tuple[int, ...] = ()
    transform: str = ""
    patch: int = 0

    @property
    def rows(self) -> int:
        return int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1

    @property
    def cols(self) -> int:
        return int(self.shape[-1])

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_stride

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"], d["source_shape"] = list(self.shape), list(self.source_shape)
        return d


@dataclass(frozen=True)
class GemmInfo:
    """What a GEMM-like node costs in MACs and how it runs on the array."""
    node: str
    op: str
    macs: int
    mode: str        # "mul8", "packed", "shift"
    packed: bool


@dataclass
class ScheduledProgram:
    """A Program plus everything needed to feed it, read it and attribute its cycles."""
    program: Program
    inputs: dict[str, Placement]
    outputs: dict[str, Placement]
    per_instr_layer: list[str]
    mem_bytes: int
    gemms: dict[str, GemmInfo] = field(default_factory=dict)
    regions: dict[str, Region] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)   # bytes per kind (weights, activations, ...)
    node_ops: dict[str, str] = field(default_factory=dict)
    node_modules: dict[str, str] = field(default_factory=dict)
    #: the memory plan: (kind, name, addr, size) per block, kinds weights/params/constants/activation/code
    layout: list[tuple[str, str, int, int]] = field(default_factory=list)



# ------------------------------------------------------------------ input / output helpers

def prepare_inputs(placement: Placement, codes: np.ndarray) -> np.ndarray:
    """``codes`` in the placement's shape: as given, or after the host transform (patchify)."""
    x = np.asarray(codes, np.int64)
    if tuple(x.shape) == tuple(placement.shape):
        return x
    if placement.transform == "patchify" and tuple(x.shape) == tuple(placement.source_shape):
        from vit2hw.reference import run_node
        node = Node("patchify", "patchify", [placement.source], placement.tensor, {"patch": placement.patch})
        spec = TensorSpec(placement.tensor, tuple(placement.shape), placement.bits, placement.signed)
        return run_node(node, {placement.tensor: spec}, [x[None]])[0]
    raise ValueError(f"input codes of shape {x.shape} match neither {placement.shape} nor "
                     f"{placement.source_shape or '-'}")


def write_input(image, placement: Placement, codes) -> None:
    """Write input ``codes`` into ``image`` (a ``bytearray`` memory image, or a dict
    ``{addr: bytes}`` of segments) at ``placement``; image codes are patchified first."""
    x = prepare_inputs(placement, codes).reshape(placement.rows, placement.cols)
    I.check_range(x, placement.bits, placement.signed, f"input {placement.tensor}")
    blob = pack_rows(x, placement.ebytes, placement.row_stride)
    if isinstance(image, dict):
        image[placement.addr] = blob
    else:
        if placement.addr + len(blob) > len(image):
            raise ValueError(f"memory image of {len(image)} bytes too small for input at {placement.addr:#x}")
        image[placement.addr:placement.addr + len(blob)] = blob


def read_output(mem_bytes, placement: Placement) -> np.ndarray:
    """The integer codes at ``placement`` (shape ``placement.shape``) from a memory image
    (bytes-like, or any object with ``read(addr, n)``)."""
    n = placement.nbytes
    if hasattr(mem_bytes, "read"):
        blob = bytes(mem_bytes.read(placement.addr, n))
    else:
        blob = bytes(memoryview(mem_bytes)[placement.addr:placement.addr + n])
    x = unpack_rows(blob, placement.rows, placement.cols, placement.ebytes, placement.row_stride,
                    placement.signed)
    return x.reshape(placement.shape)


# ------------------------------------------------------------------ operands

@dataclass(frozen=True)
class _Matrix:
    """A GEMM operand in external memory: ``rows`` rows of ``kbytes`` bytes, ``stride`` apart
    (``const``: weights, which no STORE of the program writes)."""
    addr: int
    rows: int
    stride: int
    const: bool = False


@dataclass(frozen=True)
class _Params:
    kind: str       # "col", "elem", "elem2", "elem4", "row", "rowrec" (see tiling.choose_blocking)
    addr: int
    line_stride: int  # bytes between consecutive row groups ("elem": one output row's lines, "elem2": a pair's,
                      # "elem4": four rows')


@dataclass(frozen=True)
class _AttnV:
    """An attention P·V, checked and with its constants placed (``_Scheduler.attn_v_plan``)."""
    mode: GemmMode
    heads: list[tuple[_Params, _Matrix]]  # per head: parameters and its Vᵀ rows
    probs: Region
    out: Region
    tokens: int
    head_width: int
    out_bits: int


class _Residency:
    """Which LOADs' data a scratchpad still holds (and where), so identical reloads are skipped."""

    def __init__(self):
        self.held: dict[int, list[tuple[tuple, int, int]]] = {}

    def lookup(self, target: Target, key: tuple) -> int | None:
        """The first line of ``key``'s data if the scratchpad still holds it."""
        for k, lo, _ in self.held.get(int(target), []):
            if k == key:
                return lo
        return None

    def record(self, target: Target, key: tuple, lo: int, hi: int) -> None:
        kept = [(k, a, b) for k, a, b in self.held.get(int(target), []) if b <= lo or a >= hi]
        self.held[int(target)] = kept + [(key, lo, hi)]


class _Halves:
    """Double buffering: each of A and B is used as two halves, taken in turn, so the DMA
    engines fill one half while a GEMM works on the other; each half of O and of P is a ring
    (:meth:`take_ring`), so the DMA or the vector engine drains earlier outputs while a GEMM
    writes the next, and small parameter blocks load ahead of the GEMMs that read them.
    The ``wait`` fields (:mod:`vit2hw.hazards`) keep any reuse correct; the alternation is
    what lets the engines overlap."""

    def __init__(self, g: Geometry, b_lines: int | None = None):
        # B's halves may share it with the two weight regions above them (``b_lines`` below)
        self.depth = {Target.A: g.a_depth, Target.B: g.b_depth if b_lines is None else b_lines,
                      Target.P: g.p_depth, Target.O: g.o_depth}
        self.turn = {t: 0 for t in self.depth}
        # O and P: the half in use and its next free line (take_ring)
        self.ring = {Target.O: [1, g.o_depth], Target.P: [1, g.p_depth]}

    def base(self, target: Target) -> int:
        return self.turn[target] * (self.depth[target] // 2)

    def flip(self, target: Target) -> None:
        self.turn[target] ^= 1

    def take(self, target: Target, lines: int) -> int:
        """The first line of the next block of ``lines`` lines of ``target``: the next place
        in its ring for O and P, the next half for A and B."""
        if target in self.ring:
            return self.take_ring(target, lines)
        at = self.base(target)
        self.flip(target)
        return at

    def take_o(self, lines: int) -> int:
        """The first of ``lines`` O lines for the next GEMM's output (:meth:`take_ring`).
        Consecutive outputs never overlap (the scheduler emits a GEMM's STOREs, and a scores
        chunk's P·V, after the next GEMM), and a small output (a 40-row tile of the
        192-column projection: 160 of 1 280 lines) leaves the latest few in place, so the
        next layer's larger GEMM (fc1's 640 lines) need not wait for the MOVE of the output
        just before it."""
        return self.take_ring(Target.O, lines)

    def take_ring(self, target: Target, lines: int) -> int:
        """The first of ``lines`` lines of O or P, each half of it used as a ring: they go
        right after the previous ones when they fit in that half, else to the start of the
        other half. Blocks of half the scratchpad alternate between the halves, as plain
        double buffering would; smaller ones stay longer, so their rewrite waits on an older
        reader (the patch embedding's per-token P lines, a quarter of P a row block, load
        up to three blocks ahead of the GEMM instead of one)."""
        half = self.depth[target] // 2
        if lines > half:
            raise AssertionError(f"a double-buffered block of {lines} {target.name} lines exceeds half of it ({half})")
        ring = self.ring[target]
        if ring[1] + lines > (ring[0] + 1) * half:
            ring[0] ^= 1
            ring[1] = ring[0] * half
        at = ring[1]
        ring[1] += lines
        return at


# ------------------------------------------------------------------ the scheduler

class _Scheduler:
    def __init__(self, graph: QuantizedGraph, config, mem_latency: int = 1, interleave: bool = True,
                 overlap_blocking: bool = False, weight_regions: bool = False, scores_rows: int = 0):
        self.interleave = interleave
        # rows per chunk of a scores loop at most (0: as many as the buffers allow)
        self.scores_rows = scores_rows
        self.scores_rows_used = 0                     # the largest chunk a scores loop took
        self.cycles = 0                               # run(): the cycles of the program it keeps
        self.overlap_blocking = overlap_blocking
        self.graph = graph
        self.config = config
        self.g = Geometry.from_config(config)
        self.asm = Assembler(self.g)
        self.plan = MemoryPlan(self.g.bus_bytes)
        self.lat = mem_latency
        self.res = _Residency()
        # B's weight regions: two places above B's halves, taken in turn weight by weight, so a
        # weight loads while the GEMMs between it and the weight two before it still run (the
        # halves alone hold one weight while the other half holds the attention's k and Vᵀ)
        self.b_region = self.weight_region_lines() if weight_regions else 0
        self.b_half = (self.g.b_depth - 2 * self.b_region) // 2
        self.b_turn = 0
        self.halves = _Halves(self.g, self.g.b_depth - 2 * self.b_region)
        self.pending: list[tuple[str, dict]] = []     # GEMM STOREs not yet emitted: (node, args)
        self.owner: dict[int, str] = {}               # instruction index -> node, for those STOREs
        self.node = ""
        self.regions: dict[str, Region] = {}
        self.transposed: dict[str, Region] = {}
        self.fused: dict[str, Node] = {}              # linear node -> the lut node on its drain
        self.skip: set[str] = set()                   # nodes computed inside another's instructions
        self.scores_fused: dict[str, Node] = {}       # matmul_qk node -> its softmax, reading O
        self.pv_fused: dict[str, Node] = {}           # matmul_qk node -> the P·V in its scores loop
        self.ln_fused: dict[str, Node] = {}           # residual_add node -> the LayerNorm of its sum
        self.res_linear: dict[str, tuple] = {}        # residual_add -> (linear, operand, rows/chunk) fed by MOVE
        self.into_a: dict[str, Node] = {}             # linear -> the residual add whose fed linear reads its
        #                                               output in A (STOREd there, never to memory)
        self.on_chip: set[str] = set()                # tensors that only ever live in A
        self.layers: list[str] = []
        self.gemms: dict[str, GemmInfo] = {}
        self._segments: list[tuple[int, bytes, str]] = []
        self._softmax_has_mode = any(f.name == SOFTMAX_MODE_FIELD for f in FIELDS[Op.SOFTMAX])

    # ---------------------------------------------------------- helpers
    def spec(self, t: str) -> TensorSpec:
        return self.graph.tensors[t]

    @staticmethod
    def rows_cols(spec: TensorSpec) -> tuple[int, int]:
        shape = spec.shape
        return (int(np.prod(shape[:-1])) if len(shape) > 1 else 1), int(shape[-1])

    def const(self, blob: bytes, name: str, kind: str) -> int:
        addr = self.plan.take(len(blob), name, kind)
        self._segments.append((addr, blob, name))
        return addr

    def load(self, target: Target, ext_addr: int, rows: int, row_lines: int, spad: int,
             ext_stride: int, ebytes: int = 1) -> int:
        """LOAD unless the scratchpad already holds that data; returns where it is."""
        key = (ext_addr, ext_stride, rows, row_lines, ebytes)
        if target == Target.V:
            self.asm.load(target, ext_addr, rows, row_lines, spad, ext_stride=ext_stride, ebytes=ebytes)
            return spad
        held = self.res.lookup(target, key)
        if held is not None:
            return held
        self.asm.load(target, ext_addr, rows, row_lines, spad, ext_stride=ext_stride, ebytes=ebytes)
        banks = {Target.A: self.g.rows, Target.B: self.g.cols}.get(target)
        hi = spad + (_ceil(rows, banks) * row_lines if banks else rows * row_lines)
        self.res.record(target, key, spad, hi)
        return spad

    def load_half(self, target: Target, ext_addr: int, rows: int, row_lines: int, ext_stride: int,
                  double: bool) -> int:
        """LOAD into the next half of ``target`` (line 0 when not double buffering) unless
        the data is still held somewhere; returns its first line."""
        held = self.res.lookup(target, (ext_addr, ext_stride, rows, row_lines, 1))
        if held is not None:
            return held
        spad = self.halves.take(target, rows * row_lines) if double else 0
        return self.load(target, ext_addr, rows, row_lines, spad, ext_stride)

    def weight_region_lines(self) -> int:
        """Lines of each weight region: the largest whole linear weight (as B lines) of which
        two fit in three quarters of B, leaving the halves a quarter; 0 when none does."""
        g = self.g
        sizes = [_ceil(n.consts["weight"].shape[0], g.bus_bytes) * _ceil(n.consts["weight"].shape[1], g.cols)
                 for n in self.graph.nodes.values() if n.op == "linear"]
        fit = [s for s in sizes if 2 * s <= g.b_depth * 3 // 4]
        return max(fit, default=0)

    def weight_region(self, whole: int) -> int | None:
        """First line of the next weight region for a weight of ``whole`` B lines, or None
        when there are no regions or it does not fit one."""
        if not self.b_region or whole > self.b_region:
            return None
        base = self.g.b_depth - (2 - self.b_turn) * self.b_region
        self.b_turn ^= 1
        return base

    def weight_fits(self, whole: int) -> bool:
        """A weight of ``whole`` B lines fits a half of B or a weight region."""
        return whole <= max(self.b_half, self.b_region)

    def load_weight(self, addr: int, rows: int, lines: int, stride: int) -> int:
        """LOAD a whole weight into B: its weight region when it fits one, else the next half
        (unless it is still held); returns its first line."""
        held = self.res.lookup(Target.B, (addr, stride, rows, lines, 1))
        if held is not None:
            return held
        base = self.weight_region(_ceil(rows, self.g.cols) * lines)
        if base is None:
            return self.load_half(Target.B, addr, rows, lines, stride, True)
        return self.load_region(addr, rows, lines, base, stride)

    def load_region(self, addr: int, rows: int, lines: int, spad: int, stride: int) -> int:
        """LOAD weight rows into a weight region, ``cols`` rows (one line group) per LOAD:
        hoisted early, a long load would hold the weight DMA while a short one the array
        needs next waits behind it; in pieces, the reordering slips those in between."""
        C = self.g.cols
        for r in range(0, rows, C):
            self.load(Target.B, addr + r * stride, min(C, rows - r), lines, spad + (r // C) * lines, stride)
        return spad

    def load_const(self, target: Target, addr: int, count: int) -> None:
        self.load(target, addr, count, 1, 0, RECORD_BYTES)

    def unsupported(self, node: Node, why: str):
        raise NotImplementedError(f"{node.name} ({node.op}): {why}")

    # ---------------------------------------------------------- memory plan
    def plan_regions(self, order: list[Node]) -> None:
        """A region per tensor; prepend_row / take_rows outputs are views (see memplan)."""
        alias: dict[str, tuple[str, int, int]] = {}      # tensor -> (parent, row offset, rows)
        for node in order:
            if node.op == "take_rows":
                alias[node.output] = (node.inputs[0], node.attrs["start"], node.attrs["count"])
        for node in order:
            if node.op == "prepend_row":
                x = node.inputs[0]
                if x not in self.graph.inputs and x not in alias and x not in self.graph.outputs:
                    alias[x] = (node.output, 1, self.rows_cols(self.spec(x))[0])
        roots = [t for t in self.graph.tensors if t not in alias]
        for t in roots:
            spec = self.spec(t)
            if t in self.graph.inputs and all(n.op == "patchify" for n in self.graph.consumers(t)):
                continue   # the host patchifies: the image never enters accelerator memory
            rows, cols = self.rows_cols(spec)
            self.regions[t] = self.plan.tensor(t, rows, cols, element_bytes(spec.bits))

        def resolve(t: str) -> Region:
            if t in self.regions:
                return self.regions[t]
            parent, start, count = alias[t]
            r = resolve(parent).view_rows(start, count)
            self.regions[t] = r
            return r
        for t in list(alias):
            resolve(t)

    def plan_transposed(self, order: list[Node]) -> None:
        """Linear outputs used as the V of an attention get a transposed region too."""
        for node in order:
            if node.op == "attn_v":
                v = node.inputs[1]
                prod = self.graph.producer(v)
                if prod is None or prod.op != "linear":
                    self.unsupported(node, "V must come straight from a linear layer (computed transposed)")
                rows, cols = self.rows_cols(self.spec(v))
                if v not in self.transposed:
                    self.transposed[v] = self.plan.tensor(v + ".T", cols, rows, element_bytes(self.spec(v).bits))

    # ---------------------------------------------------------- GEMM
    def param_lines(self, ncols: int, bias, m, s, zp, bias1=0) -> bytes:
        """Records for ``ncols`` columns, padded to whole column tiles (one line per tile);
        ``bias1``: the second row's bias of a GEMM ``bias_pairs`` line."""
        total = _ceil(ncols, self.g.cols) * self.g.cols
        pad = lambda v: _pad_columns(v, ncols, total)
        return pack_records(PARAM_RECORD, total, bias=pad(bias), m=pad(m), s=pad(s), zp=pad(zp),
                            bias1=pad(bias1))

    def quad_lines(self, ncols: int, bias4, m, s, zp) -> bytes:
        """:meth:`param_lines` for GEMM ``bias_quads``: the biases of four rows (``bias4``
        [4, ncols]) in :data:`~vit2hw.isa.PARAM_QUAD_RECORD`s."""
        total = _ceil(ncols, self.g.cols) * self.g.cols
        pad = lambda v: _pad_columns(v, ncols, total)
        return pack_quad_records(np.stack([pad(b) for b in bias4]), pad(m), pad(s), pad(zp))

    def blocking(self, m: int, n: int, k_beats: int, kind: str, what: str, b_lines: int = 0):
        """``(blocking, double buffered, geometry it was chosen on)``: double buffering (each
        scratchpad as two halves; B: ``b_lines``, e.g. a weight region, else a half) when a
        tile fits, else the whole scratchpads."""
        g = self.g
        half = dataclasses.replace(g, a_depth=g.a_depth // 2, b_depth=b_lines or self.b_half, o_depth=g.o_depth // 2,
                                   p_depth=g.p_depth // 2)
        try:
            return choose_blocking(half, m, n, k_beats, kind, what, self.lat, self.overlap_blocking), True, half
        except TileError:
            return choose_blocking(g, m, n, k_beats, kind, what, self.lat, self.overlap_blocking), False, g

    def gemm(self, what: str, a: _Matrix, b: _Matrix, k_beats: int, params: _Params, out: Region,
             out_bits: int, mode: GemmMode, out_col0: int = 0, a_unsigned: bool = False,
             lut_bits: int = 0) -> None:
        """Emit the blocked GEMM ``out[:, out_col0:+b.rows] = requant(A @ Bᵀ)`` (then looked
        up in LUT_TABLE when ``lut_bits``)."""
        g = self.g
        R, C, wb = g.rows, g.cols, g.bus_bytes
        m, n = a.rows, b.rows
        eb = out.ebytes
        if (C * eb) % wb:
            raise TileError(f"buffers too small for a tile: {what}: a column tile of {C} x {eb}-byte outputs "
                            f"is not whole {wb}-byte bus words (choose cols a multiple of {wb // np.gcd(wb, eb)})")
        if (out.addr + out_col0 * eb) % wb:
            raise TileError(f"{what}: output column {out_col0} is not bus-word aligned")
        lines = _ceil(k_beats, wb)
        mt, nt = _ceil(m, R), _ceil(n, C)
        region = b.const and self.b_region and nt * lines <= self.b_region
        blk, double, used = self.blocking(m, n, k_beats, params.kind, what, self.b_region if region else 0)
        wreg = self.weight_region(nt * lines) if region and double else None
        lineb = C * RECORD_BYTES
        # parameters that fit at once are loaded once (ahead of the blocks) and stay
        whole_p = resident_param_lines(used, m, n, params.kind)
        p_base = self.load_half(Target.P, params.addr, whole_p, 1, lineb, double) if whole_p else 0
        row_blocks = [(i * blk.tm * R, min(blk.tm * R, m - i * blk.tm * R)) for i in range(_ceil(mt, blk.tm))]
        col_blocks = [(j * blk.tn * C, min(blk.tn * C, n - j * blk.tn * C)) for j in range(_ceil(nt, blk.tn))]
        pairs = ([(rb, cb) for rb in row_blocks for cb in col_blocks] if blk.order == "rows"
                 else [(rb, cb) for cb in col_blocks for rb in row_blocks])
        # an activation A operand whose row blocks all fit the two halves side by side
        a_spread = (not a.const and double and _ceil(len(row_blocks), 2) * blk.tm * lines <= g.a_depth // 2)
        # a block's STOREs are emitted after the next block's GEMM: in program order they then
        # follow that GEMM's issue, and drain its O lines while the array fills others
        if not double:
            self.flush_stores()
        for (r0, rows), (c0, cols) in pairs:
            tmb, tnb = _ceil(rows, R), _ceil(cols, C)
            # constants first: they may go ahead of the STOREs still pending from the previous
            # block or GEMM (whose array work they then overlap); an activation load goes after
            # the pending STOREs that write what it reads
            if whole_p:
                p_sp = p_base + {"col": c0 // C, "row": r0, "rowrec": r0 // C}[params.kind]
            elif params.kind == "rowrec":
                p_sp = self.load_half(Target.P, params.addr + (r0 // C) * lineb, _ceil(tmb * R, C), 1, lineb,
                                      double)
            elif params.kind == "col":
                p_sp = self.load_half(Target.P, params.addr + (c0 // C) * lineb, tnb, 1, lineb, double)
            elif params.kind in _ROWS_PER_P_LINE:
                per = _ROWS_PER_P_LINE[params.kind]
                p_sp = self.load_half(Target.P, params.addr + r0 // per * params.line_stride + (c0 // C) * lineb,
                                      _ceil(tmb * R, per), tnb, params.line_stride, double)
            else:
                p_sp = self.load_half(Target.P, params.addr + r0 * lineb, tmb * R, 1, lineb, double)
            operands = {"a": (a, r0, rows, Target.A), "b": (b, c0, cols, Target.B)}
            at = {}
            if b.const and wreg is not None:          # each column block in its own place
                at["b"] = self.load_region(b.addr + c0 * b.stride, cols, lines, wreg + (c0 // C) * lines, b.stride)
            elif b.const:
                at["b"] = self.load_half(Target.B, b.addr + c0 * b.stride, cols, lines, b.stride, double)
            if a.const:
                # a weight as the A operand (the transposed V GEMM), when all of it fits an eighth
                # of A, goes to the top of A (each row block in its own place), clear of the
                # halves' lower lines where the activation chunks before it alternate: the
                # cross-node reordering can then load it while those GEMMs still run
                src, whole = a.addr + r0 * a.stride, _ceil(m, R) * lines
                if whole <= g.a_depth // 8:
                    at["a"] = self.load(Target.A, src, rows, lines, g.a_depth - whole + (r0 // R) * lines, a.stride)
                else:
                    at["a"] = self.load_half(Target.A, src, rows, lines, a.stride, double)
            acts = [key for key in ("a", "b") if key not in at]
            for key in acts:
                mat, row0, nrows, _ = operands[key]
                self.flush_stores_into(mat.addr + row0 * mat.stride, nrows, mat.stride, lines * wb)
            for key in acts:
                mat, row0, nrows, t = operands[key]
                src = mat.addr + row0 * mat.stride
                if key == "a" and a_spread:
                    # row block i in half i % 2, at its own place in it: still double buffered,
                    # and the whole operand stays in A for a later GEMM reading the same rows
                    # (q, then k, from LayerNorm 1's output) or for this one's next column block
                    bi = row0 // (blk.tm * R)
                    spad = (bi % 2) * (g.a_depth // 2) + (bi // 2) * blk.tm * lines
                    at[key] = self.load(t, src, nrows, lines, spad, mat.stride)
                else:
                    at[key] = self.load_half(t, src, nrows, lines, mat.stride, double)
            a_sp, b_sp = at["a"], at["b"]
            o_sp = self.halves.take_o(tmb * R * tnb) if double else 0
            ext = out.addr + r0 * out.stride + (out_col0 + c0) * eb
            common = dict(out_bits=out_bits, mode=mode, a_unsigned=a_unsigned, lut_bits=lut_bits, a_row_lines=lines,
                          b_row_lines=lines)
            stores = []
            if params.kind in ("row", "rowrec"):
                for jl in range(tnb):
                    tcols = min(C, cols - jl * C)
                    self.asm.gemm(rows, tcols, k_beats, a_addr=a_sp, b_addr=b_sp + jl * lines,
                                  o_addr=o_sp + jl * tmb * R, p_addr=p_sp, bias_per_row=params.kind == "row",
                                  row_params=params.kind == "rowrec", **common)
                    stores.append(dict(target=Target.O, ext_addr=ext + jl * C * eb, rows=rows, row_lines=1,
                                       spad_addr=o_sp + jl * tmb * R, row_elems=tcols, ext_stride=out.stride,
                                       ebytes=eb))
            else:
                self.asm.gemm(rows, cols, k_beats, a_addr=a_sp, b_addr=b_sp, o_addr=o_sp, p_addr=p_sp,
                              bias_per_row=params.kind in _ROWS_PER_P_LINE, bias_pairs=params.kind == "elem2",
                              bias_quads=params.kind == "elem4",
                              **common)
                stores.append(dict(target=Target.O, ext_addr=ext, rows=rows, row_lines=tnb, spad_addr=o_sp,
                                   row_elems=cols, ext_stride=out.stride, ebytes=eb))
            self.flush_stores()
            self.pending = [(self.node, st) for st in stores]
            if not double:                  # one O buffer: drain it before the next GEMM
                self.flush_stores()

    def flush_stores_into(self, addr: int, rows: int, stride: int, row_bytes: int) -> None:
        """Emit the pending STOREs first if one writes external bytes this load reads."""
        lo, hi = addr, addr + (rows - 1) * stride + row_bytes
        for _, st in self.pending:
            if "to_a" in st:
                continue
            wpl = self.g.words_per_line(st["target"], st["ebytes"])
            s_lo = st["ext_addr"]
            s_hi = s_lo + (st["rows"] - 1) * st["ext_stride"] + st["row_lines"] * wpl * self.g.bus_bytes
            if s_lo < hi and lo < s_hi:
                self.flush_stores()
                return

    def flush_stores(self) -> None:
        """Emit the GEMM STOREs still pending (attributed to the node that computed them)."""
        for node, st in self.pending:
            self.owner[len(self.asm.program.instructions)] = node
            if "to_a" in st:
                st = dict(st)
                self.asm.store_to_a(a_addr=st.pop("to_a"), **st)
            else:
                self.asm.store(**st)
        self.pending = []

    def weight_rows(self, w_t: np.ndarray, name: str) -> _Matrix:
        """Weight rows (one per output channel, K bytes each) as a constant segment."""
        stride = self.plan.stride_for(w_t.shape[1], 1)
        addr = self.const(pack_rows(w_t, 1, stride), name, "weights")
        return _Matrix(addr, w_t.shape[0], stride, const=True)

    def act(self, t: str, region: Region | None = None) -> _Matrix:
        r = region or self.regions[t]
        if r.ebytes != 1:
            raise NotImplementedError(f"GEMM operand {t} has {self.spec(t).bits}-bit codes; the array takes 8-bit lanes")
        return _Matrix(r.addr, r.rows, r.stride)

    def linear_mode(self, node: Node) -> tuple[GemmMode, bool]:
        xin = self.spec(node.inputs[0])
        if node.attrs.get("mode", "int") == "log2":
            if xin.bits != I.LOG2_CODE_BITS:
                self.unsupported(node, f"Shift-Log2 inputs of {xin.bits} bits (the array's shift mode takes "
                                       f"{I.LOG2_CODE_BITS}-bit codes)")
            return GemmMode.SHIFT, False
        if xin.bits > 8 or node.attrs["w_bits"] > 8:
            self.unsupported(node, "operands wider than 8 bits")
        return GemmMode.MUL8, not xin.signed

    def do_linear(self, node: Node) -> None:
        if node.name in self.skip:      # computed chunk by chunk inside its residual add
            return
        if node.name in self.into_a:    # its outputs stay in A for the linear that reads them
            self.linear_to_a(node, self.into_a[node.name])
            return
        x, y = node.inputs[0], node.output
        xs, ys = self.spec(x), self.spec(y)
        w = node.consts["weight"]                    # [K, M]
        k, mcols = w.shape
        rows = self.rows_cols(xs)[0]
        mode, a_unsigned = self.linear_mode(node)
        c = node.consts
        out_bits = ys.bits
        as_v = y in self.transposed
        normal = not as_v or y in self.graph.outputs or any(
            n.op != "attn_v" or n.inputs[1] != y for n in self.graph.consumers(y))
        self.gemms[node.name] = GemmInfo(node.name, node.op, rows * k * mcols, mode.name.lower(), False)
        if normal:
            wm = self.weight_rows(w.T, node.name + ".weight")
            out, lut_bits = self.regions[y], 0
            fused = self.fused.get(node.name)
            if fused is not None:       # the table of the lookup that follows, applied on the drain
                table = fused.consts["table"]
                addr = self.const(pack_records(LUT_RECORD, len(table), value=table), fused.name + ".table",
                                  "constants")
                self.load_const(Target.LUT_TABLE, addr, len(table))
                out, lut_bits = self.regions[fused.output], out_bits
            bias = c["bias"]
            if bias.ndim == 2:                       # per-token bias (position embedding folded in)
                mt = _ceil(rows, self.g.rows)
                full = np.zeros((mt * self.g.rows, bias.shape[1]), np.int64)
                full[:bias.shape[0]] = bias
                lstride = _ceil(mcols, self.g.cols) * self.g.cols * RECORD_BYTES
                if self.g.rows % 4 == 0 and quad_biases_fit(full, ys.zero_point):
                    # four rows to a P line (24-bit biases): a quarter of the parameter traffic
                    blob = b"".join(self.quad_lines(mcols, full[i:i + 4], c["m"], c["s"], ys.zero_point)
                                    for i in range(0, len(full), 4))
                    kind = "elem4"
                elif self.g.rows % 2 == 0:        # two rows to a P line: half the parameter traffic
                    blob = b"".join(self.param_lines(mcols, full[i], c["m"], c["s"], ys.zero_point, full[i + 1])
                                    for i in range(0, len(full), 2))
                    kind = "elem2"
                else:
                    blob = b"".join(self.param_lines(mcols, row, c["m"], c["s"], ys.zero_point) for row in full)
                    kind = "elem"
                p = _Params(kind, self.const(blob, node.name + ".params", "params"), lstride)
            else:
                blob = self.param_lines(mcols, bias, c["m"], c["s"], ys.zero_point)
                p = _Params("col", self.const(blob, node.name + ".params", "params"), 0)
            self.gemm(node.name, self.act(x), wm, k, p, out, out_bits, mode, a_unsigned=a_unsigned,
                      lut_bits=lut_bits)
        if as_v:
            if c["bias"].ndim == 2:
                self.unsupported(node, "a per-token bias on an attention V")
            if a_unsigned or mode != GemmMode.MUL8:
                self.unsupported(node, "the transposed V GEMM needs signed 8-bit inputs")
            wa = self.weight_rows(w.T, node.name + ".weight_t")
            mpad = _ceil(mcols, self.g.rows) * self.g.rows
            pad = lambda v: np.concatenate([np.broadcast_to(np.asarray(v, np.int64), (mcols,)),
                                            np.zeros(mpad - mcols, np.int64)])
            bias, mm, ss, zp = pad(c["bias"]), pad(c["m"]), pad(c["s"]), pad(ys.zero_point)
            try:        # one record per output row, C to a P line, when a blocking allows it
                self.blocking(mcols, rows, k, "rowrec", node.name)
                blob = self.param_lines(mpad, bias, mm, ss, zp)
                kind = "rowrec"
            except TileError:
                blob = b"".join(pack_records(PARAM_RECORD, self.g.cols, bias=bias[i], m=mm[i], s=ss[i], zp=zp[i])
                                for i in range(mpad))
                kind = "row"
            p = _Params(kind, self.const(blob, node.name + ".params_t", "params"), 0)
            self.gemm(node.name + " (transposed)", wa, self.act(x), k, p, self.transposed[y], out_bits, mode)

    def do_matmul_qk(self, node: Node) -> None:
        q, k = node.inputs
        qs, ks, ys = self.spec(q), self.spec(k), self.spec(node.output)
        h = node.attrs["heads"]
        n, width = self.rows_cols(qs)
        d = width // h
        if qs.bits > 8 or ks.bits > 8:
            self.unsupported(node, "operands wider than 8 bits")
        self.gemms[node.name] = GemmInfo(node.name, node.op, h * n * n * d, "mul8", False)
        p = _Params("col", self.const(self.param_lines(n, 0, node.consts["m"], node.consts["s"], 0),
                                      node.name + ".params", "params"), 0)
        qr, kr, out = self.regions[q], self.regions[k], self.regions[node.output]
        if node.name in self.scores_fused:
            self.scores_softmax(node, self.scores_fused[node.name], p)
            return
        for hd in range(h):
            a = _Matrix(qr.addr + hd * d, n, qr.stride)
            b = _Matrix(kr.addr + hd * d, n, kr.stride)
            if a.addr % self.g.bus_bytes:
                self.unsupported(node, f"head width {d} bytes is not a multiple of the {self.g.bus_bytes}-byte bus")
            self.gemm(f"{node.name}[head {hd}]", a, b, d, p, out.view_rows(hd * n, n), ys.bits, GemmMode.MUL8)

    def forward_rows(self, nt: int, lines: int, lpr: int, regions: int) -> int:
        """Rows per chunk of a GEMM whose result is MOVEd into V: a multiple of the array rows
        whose outputs (``nt`` column tiles) fit half of O, whose inputs (``lines`` per row) fit
        half of A and whose ``regions`` V regions of ``lpr`` lines per row fit half of V, with
        the B operand (``nt`` tiles × ``lines``) in half of B or a weight region and the
        parameters in half of P; 0 when no such chunk exists (or an O line is not whole V lines)."""
        g = self.g
        if g.cols % g.lanes or not self.weight_fits(nt * lines) or nt > g.p_depth // 2:
            return 0
        per = min(g.o_depth // 2 // nt, v_half_lines(g) // (regions * lpr), g.a_depth // 2 // lines * g.rows)
        return per // g.rows * g.rows

    def scores_chunk_rows(self, node: Node, pv_tiles: int = 0) -> int:
        """Rows per chunk when the attention scores go from the array to the softmax unit on
        chip (GEMM into O, the softmax reading them there, probabilities in V; one head's k
        rows in B), at most the padded token count; 0 when that cannot be done. ``pv_tiles``:
        O lines per row that a fused P·V output needs beside the scores."""
        g = self.g
        n, width = self.rows_cols(self.spec(node.inputs[0]))
        d = width // node.attrs["heads"]
        if n > g.max_tokens or (d % g.bus_bytes) or self.spec(node.output).bits > 16:
            return 0
        per = self.forward_rows(_ceil(n, g.cols) + pv_tiles, _ceil(d, g.bus_bytes), _ceil(n, g.lanes), 1)
        return min(per, _ceil(n, g.rows) * g.rows)

    def scores_softmax(self, node: Node, sm: Node, p: _Params) -> None:
        """``softmax(Q·Kᵀ)`` per head, chunk by chunk of rows, without the scores leaving the
        chip: GEMM (into the O ring, ``take_o``) → SOFTMAX reading the scores from O (probabilities into
        one V half) → STORE of the probabilities; chunks alternate V halves, so the array
        computes the next chunk's scores while the vector engine normalizes this one. When P·V
        is the probabilities' only use and a softmax beat fills an A line, the SOFTMAX writes
        them into A itself (no STORE), alternating two quarters of A."""
        g = self.g
        q, k = node.inputs
        h = node.attrs["heads"]
        n, width = self.rows_cols(self.spec(q))
        d = width // h
        _, length, extra = self.softmax_format(sm)
        lines, nt, lpr = _ceil(d, g.bus_bytes), _ceil(n, g.cols), _ceil(n, g.lanes)
        av = self.pv_fused.get(node.name)
        pv = self.attn_v_plan(av) if av is not None else None
        per = self.scores_chunk_rows(node, _ceil(pv.head_width, g.cols) if pv is not None else 0)
        if self.scores_rows:
            per = min(per, self.scores_rows)
        self.scores_rows_used = max(self.scores_rows_used, per)
        qr, kr, yr = self.regions[q], self.regions[k], self.regions[sm.output]
        lineb = g.cols * RECORD_BYTES
        # the probabilities go from V into A on chip (STORE into A) when P·V is the only use
        on_chip = pv is not None and yr.ebytes == 1
        # with the probabilities in A, the q rows and the probabilities each take turns
        # between two quarters of A, so a chunk's STORE into A never waits for the P·V still
        # reading the previous chunk's probabilities (as it would in the other half)
        quarter = g.a_depth // 4
        slots = (on_chip and _ceil(per, g.rows) * max(lines, store_row_words(g, Target.V, lpr)) <= quarter)
        self.flush_stores()
        half, turn, pending = v_half_lines(g), 0, None
        a_sp = None
        p_turn = 0                                 # the quarter the next probabilities go to

        # the softmax writes the probabilities into A itself when a beat fills an A line and
        # they take turns between two quarters (the P·V of a chunk runs after the next chunk's
        # softmax, so that softmax must not write where the P·V reads); otherwise they go
        # through V and a STORE into A
        direct = slots and g.lanes == g.bus_bytes

        def probs_slot() -> int | None:
            nonlocal p_turn
            p_turn ^= 1
            return (3 - p_turn) * quarter if slots else None

        def probs(chunk) -> int:
            if direct:
                return chunk[-1]
            if not on_chip:
                return self.vec_store(*chunk[:-1])
            return self.probs_to_a(*chunk[:-1], a_sp=probs_slot())

        chunks = [(hd, r0, min(per, n - r0)) for hd in range(h) for r0 in range(0, n, per)]

        def load_q(c: int) -> int:
            hd, r0, rows = chunks[c]
            q_src = qr.addr + hd * d + r0 * qr.stride
            if slots:
                return self.load(Target.A, q_src, rows, lines, (c % 2) * quarter, qr.stride)
            return self.load_half(Target.A, q_src, rows, lines, qr.stride, True)

        q_next = None
        for c, (hd, r0, rows) in enumerate(chunks):
            # (re)loaded only when the P·V of the previous chunk took their half
            p_base = self.load_half(Target.P, p.addr, nt, 1, lineb, True)
            b_sp = self.load_half(Target.B, kr.addr + hd * d, n, lines, kr.stride, True)
            # with the probabilities written into A by the softmax, the next chunk's q rows
            # are loaded before it (below): A's one write port is the softmax's while it runs
            a_sp = q_next if q_next is not None else load_q(c)
            q_next = None
            v = turn * half
            turn ^= 1
            # this chunk's scores and P·V output: one O allocation, the P·V after the scores
            o_lines = _ceil(rows, g.rows) * g.rows * (nt + (_ceil(pv.head_width, g.cols) if pv is not None else 0))
            o_sp = self.halves.take_o(o_lines)
            # the P·V output of two chunks back may lie in those lines (a short last chunk of
            # a head before a longer chunk) and its STORE is still pending: store it first
            self.flush_stores()
            self.asm.gemm(rows, n, d, a_addr=a_sp, b_addr=b_sp, o_addr=o_sp, p_addr=p_base,
                          out_bits=self.spec(node.output).bits, mode=GemmMode.MUL8)
            if direct and c + 1 < len(chunks):
                q_next = load_q(c + 1)
            first = len(self.asm.program.instructions)
            p_sp = self.probs_place(yr, hd * n + r0, rows, lpr, probs_slot()) if direct else None
            self.asm.softmax(o_sp, v, rows, length, SoftmaxMode(extra.get(SOFTMAX_MODE_FIELD, 0)),
                             src_row_lines=nt, a_addr=p_sp)
            if pending is not None:
                a_sp = probs(pending[0])
            self.attribute(first, sm.name)
            # the previous chunk's P·V, its probabilities just stored, while the vector
            # engine normalizes this chunk
            if pending is not None and pv is not None:
                self.pv_chunk(av, pv, *pending[1], a_sp=a_sp)
            # (the probabilities' STORE, the chunk's P·V: its output goes into the scores'
            # O lines, after the scores)
            pending = ((yr, hd * n + r0, rows, lpr, v, p_sp),
                       (hd, r0, rows, o_sp + _ceil(rows, g.rows) * g.rows * nt))
        first = len(self.asm.program.instructions)
        a_sp = probs(pending[0])
        self.attribute(first, sm.name)
        if pv is not None:
            self.pv_chunk(av, pv, *pending[1], a_sp=a_sp)

    def probs_place(self, r: Region, r0: int, rows: int, lpr: int, a_sp: int | None = None) -> int:
        """The first A line of probability rows ``r0 ..`` (``lpr`` V lines a row) kept in A:
        ``a_sp``, or A's next half when None; recorded as what A holds there."""
        g = self.g
        if a_sp is None:
            a_sp = self.halves.base(Target.A)
            self.halves.flip(Target.A)
        w = store_row_words(g, Target.V, lpr)
        self.res.record(Target.A, ("on chip", r.addr, r0, rows), a_sp, a_sp + _ceil(rows, g.rows) * w)
        return a_sp

    def probs_to_a(self, r: Region, r0: int, rows: int, lpr: int, v: int, a_sp: int | None = None) -> int:
        """STORE into A of probability rows ``r0 ..`` from V line ``v``, into A from line
        ``a_sp`` (None: A's next half) instead of a STORE to memory and a LOAD back; returns
        their first A line."""
        a_sp = self.probs_place(r, r0, rows, lpr, a_sp)
        self.asm.store_to_a(Target.V, rows, lpr, v, row_elems=r.cols, a_addr=a_sp)
        return a_sp

    def pv_chunk(self, av: Node, plan: _AttnV, hd: int, r0: int, rows: int, o_sp: int,
                 a_sp: int | None = None) -> None:
        """P·V of head ``hd``'s probability rows ``r0 .. r0+rows`` (just stored by the scores
        loop, into A from line ``a_sp`` when not None) into O line ``o_sp``; its STORE waits
        in ``pending`` for the next GEMM."""
        g = self.g
        prr, out, n, d = plan.probs, plan.out, plan.tokens, plan.head_width
        p, b = plan.heads[hd]
        lines, ntv = _ceil(n, g.bus_bytes), _ceil(d, g.cols)
        lineb = g.cols * RECORD_BYTES
        first = len(self.asm.program.instructions)
        p_sp = self.load_half(Target.P, p.addr, ntv, 1, lineb, True)
        b_sp = self.load_half(Target.B, b.addr, d, lines, b.stride, True)
        a_row = None
        if a_sp is None:
            src = prr.addr + (hd * n + r0) * prr.stride
            self.flush_stores_into(src, rows, prr.stride, lines * g.bus_bytes)
            a_sp = self.load_half(Target.A, src, rows, lines, prr.stride, True)
        else:
            a_row = store_row_words(g, Target.V, _ceil(n, g.lanes))
        self.asm.gemm(rows, d, n, a_addr=a_sp, b_addr=b_sp, o_addr=o_sp, p_addr=p_sp, out_bits=plan.out_bits,
                      mode=plan.mode, a_row_lines=a_row)
        self.attribute(first, av.name)
        self.flush_stores()
        eb = out.ebytes
        self.pending = [(av.name, dict(target=Target.O, ext_addr=out.addr + r0 * out.stride + hd * d * eb,
                                       rows=rows, row_lines=ntv, spad_addr=o_sp, row_elems=d,
                                       ext_stride=out.stride, ebytes=eb))]

    def res_loop_shape(self, node: Node) -> tuple[int, int]:
        """V regions per chunk and the row cap of :meth:`do_residual_add`'s loop over ``node``."""
        feed = self.res_linear.get(node.name)
        return (3 if node.name not in self.ln_fused else 4), (feed[2] if feed else 0)

    def res_chunks(self, node: Node) -> list[tuple[int, int]]:
        """The row chunks :meth:`do_residual_add` runs ``node`` in."""
        rows, ch = self.rows_cols(self.spec(node.output))
        regions, cap = self.res_loop_shape(node)
        return self.chunks(node, rows, ch // self.g.lanes, regions, cap)[0]

    def linear_into_a(self, res: Node) -> Node | None:
        """The linear whose output (through its fused table) the linear fed into ``res`` reads,
        when that output can go from O into A by STOREs into A and stay there until read: its
        only use; int8; all its rows' outputs in half of A and two row tiles of its inputs in
        the other half; its weights in half of B, a row tile's outputs in half of O; the fed
        linear's chunks (:meth:`res_chunks`) starting at row tiles. None otherwise."""
        g = self.g
        fed = self.res_linear[res.name][0]
        t = fed.inputs[0]
        src = self.graph.producer(t)
        if src is not None and src.op == "lut" and src.name in self.skip:      # a table on a GEMM's drain
            src = self.graph.producer(src.inputs[0])
            if src is None or self.fused.get(src.name) is None:
                return None
        if (src is None or src.op != "linear" or src.name in self.skip or t in self.graph.outputs
                or len(self.graph.consumers(t)) != 1 or src.output in self.transposed
                or src.consts["bias"].ndim != 1 or self.regions[t].ebytes != 1 or self.spec(t).bits > 8
                or self.regions[src.inputs[0]].ebytes != 1):
            return None
        rows, k = self.rows_cols(self.spec(src.inputs[0]))
        n1 = src.consts["weight"].shape[1]
        nt = _ceil(n1, g.cols)
        pitch = store_row_words(g, Target.O, nt)
        mt = _ceil(rows, g.rows)
        if (pitch != _ceil(n1, g.bus_bytes) or mt * pitch > g.a_depth // 2 or 2 * _ceil(k, g.bus_bytes) > g.a_depth // 2
                or not self.weight_fits(nt * _ceil(k, g.bus_bytes)) or nt > g.p_depth // 2 or nt * g.rows > g.o_depth // 2):
            return None
        if any(r0 % g.rows for r0, _ in self.res_chunks(res)):
            return None
        return src

    def linear_to_a(self, node: Node, res: Node) -> None:
        """``node`` (a linear, its table applied on the drain) row tile by row tile, each tile's
        outputs STOREd into one half of A where the linear fed into ``res`` finds them
        (recorded as held there under the keys of that linear's chunk LOADs)."""
        g = self.g
        x = node.inputs[0]
        xs = self.spec(x)
        w, c = node.consts["weight"], node.consts
        k, n1 = w.shape
        rows = self.rows_cols(xs)[0]
        mode, a_unsigned = self.linear_mode(node)
        fused = self.fused.get(node.name)
        y = fused.output if fused is not None else node.output
        ys = self.spec(node.output)
        self.gemms[node.name] = GemmInfo(node.name, node.op, rows * k * n1, mode.name.lower(), False)
        lut_bits = 0
        if fused is not None:
            table = fused.consts["table"]
            addr = self.const(pack_records(LUT_RECORD, len(table), value=table), fused.name + ".table", "constants")
            self.load_const(Target.LUT_TABLE, addr, len(table))
            lut_bits = ys.bits
        lines, nt = _ceil(k, g.bus_bytes), _ceil(n1, g.cols)
        pitch = store_row_words(g, Target.O, nt)
        wm = self.weight_rows(w.T, node.name + ".weight")
        p_addr = self.const(self.param_lines(n1, c["bias"], c["m"], c["s"], ys.zero_point),
                            node.name + ".params", "params")
        p_sp = self.load_half(Target.P, p_addr, nt, 1, g.cols * RECORD_BYTES, True)
        b_sp = self.load_weight(wm.addr, n1, lines, wm.stride)
        xm = self.act(x)
        # inputs: a row tile at a time, two tiles' lines taken in turn in one half of A (each
        # tile starts as soon as its rows are in); outputs: the other half
        src = self.halves.base(Target.A)
        self.halves.flip(Target.A)
        dst = self.halves.base(Target.A)
        self.halves.flip(Target.A)
        yr = self.regions[y]
        fed_lines = _ceil(n1, g.bus_bytes)
        for r0 in range(0, rows, g.rows):
            n = min(g.rows, rows - r0)
            row = xm.addr + r0 * xm.stride
            self.flush_stores_into(row, n, xm.stride, lines * g.bus_bytes)
            a_sp = self.load(Target.A, row, n, lines, src + (r0 // g.rows % 2) * lines, xm.stride)
            o_sp = self.halves.take_o(_ceil(n, g.rows) * g.rows * nt)
            self.asm.gemm(n, n1, k, a_addr=a_sp, b_addr=b_sp, o_addr=o_sp, p_addr=p_sp,
                          out_bits=ys.bits, mode=mode, a_unsigned=a_unsigned, lut_bits=lut_bits,
                          a_row_lines=lines, b_row_lines=lines)
            self.flush_stores()
            lo = dst + (r0 // g.rows) * pitch
            self.pending = [(node.name, dict(target=Target.O, rows=n, row_lines=nt, spad_addr=o_sp, row_elems=n1,
                                             to_a=lo))]
        self.flush_stores()
        # held as the fed linear's chunk LOADs would have placed them
        for r0, n in self.res_chunks(res):
            lo = dst + (r0 // g.rows) * pitch
            self.res.record(Target.A, (yr.row(r0), yr.stride, n, fed_lines, 1), lo, lo + _ceil(n, g.rows) * pitch)

    def residual_linear_rows(self, lin: Node, regions: int) -> int:
        """Rows per chunk when ``lin``'s output goes through O and MOVE straight into the
        V chunks of the one vector operation that uses it (``regions`` V regions per chunk;
        the whole weight stays in B); 0 when it cannot."""
        g = self.g
        k, ncols = lin.consts["weight"].shape
        if (ncols % g.lanes or lin.consts["bias"].ndim != 1 or lin.output in self.transposed
                or lin.name in self.fused or self.spec(lin.output).bits > 16 or self.spec(lin.inputs[0]).bits > 8):
            return 0
        return self.forward_rows(_ceil(ncols, g.cols), _ceil(k, g.bus_bytes), ncols // g.lanes, regions)

    def linear_into_v(self, lin: Node, lpr: int):
        """Load ``lin``'s weights and parameters once; return ``emit(r0, n, v)``: the GEMM of
        input rows ``r0 .. r0+n`` into O (``take_o``), then MOVE of the result to V line ``v``."""
        g = self.g
        x = lin.inputs[0]
        xs, ys = self.spec(x), self.spec(lin.output)
        w, c = lin.consts["weight"], lin.consts
        k, ncols = w.shape
        rows = self.rows_cols(xs)[0]
        mode, a_unsigned = self.linear_mode(lin)
        self.gemms[lin.name] = GemmInfo(lin.name, lin.op, rows * k * ncols, mode.name.lower(), False)
        lines, nt = _ceil(k, g.bus_bytes), _ceil(ncols, g.cols)
        lineb = g.cols * RECORD_BYTES
        first = len(self.asm.program.instructions)
        wm = self.weight_rows(w.T, lin.name + ".weight")
        p_addr = self.const(self.param_lines(ncols, c["bias"], c["m"], c["s"], ys.zero_point),
                            lin.name + ".params", "params")
        p_base = self.load_half(Target.P, p_addr, nt, 1, lineb, True)
        b_sp = self.load_weight(wm.addr, ncols, lines, wm.stride)
        self.attribute(first, lin.name)
        xm = self.act(x)

        def emit(r0: int, n: int, v: int) -> None:
            first = len(self.asm.program.instructions)
            if x in self.on_chip and self.res.lookup(Target.A, (xm.addr + r0 * xm.stride, xm.stride, n, lines, 1)) is None:
                raise AssertionError(f"{lin.name}: input rows {r0}..{r0 + n} of {x} are no longer in A")
            a_sp = self.load_half(Target.A, xm.addr + r0 * xm.stride, n, lines, xm.stride, True)
            self.gemm_to_v(n, ncols, k, a_sp, b_sp, p_base, v, lpr, out_bits=ys.bits, mode=mode,
                           a_unsigned=a_unsigned)
            self.attribute(first, lin.name)
        return emit

    def gemm_to_v(self, m: int, n: int, k_beats: int, a_sp: int, b_sp: int, p_sp: int, v: int, lpr: int,
                  **gemm_kw) -> None:
        """One GEMM (all its column tiles) into the next O lines, then MOVE of its rows to V
        line ``v`` (``lpr`` V lines per row)."""
        o_sp = self.halves.take_o(_ceil(m, self.g.rows) * self.g.rows * _ceil(n, self.g.cols))
        self.asm.gemm(m, n, k_beats, a_addr=a_sp, b_addr=b_sp, o_addr=o_sp, p_addr=p_sp, **gemm_kw)
        self.asm.move(o_sp, v, m, _ceil(n, self.g.cols), lpr)

    def attribute(self, first: int, name: str) -> None:
        """Attribute the instructions from index ``first`` on to node ``name`` (reports)."""
        for i in range(first, len(self.asm.program.instructions)):
            self.owner[i] = name

    def do_attn_v(self, node: Node) -> None:
        if node.name in self.skip:          # run chunk by chunk in its scores' loop
            return
        plan = self.attn_v_plan(node)
        n, d = plan.tokens, plan.head_width
        for hd, (p, b) in enumerate(plan.heads):
            a = self.act(node.inputs[0], plan.probs.view_rows(hd * n, n))
            self.gemm(f"{node.name}[head {hd}]", a, b, n, p, plan.out, plan.out_bits, plan.mode, out_col0=hd * d)

    def attn_v_plan(self, node: Node) -> _AttnV:
        """Checks, MAC count and per-head operands of an attention P·V."""
        pr, v = node.inputs
        ps, vs, ys = self.spec(pr), self.spec(v), self.spec(node.output)
        h = node.attrs["heads"]
        n, width = self.rows_cols(vs)
        d = width // h
        if ps.kind == "log2":
            mode = GemmMode.SHIFT
        elif ps.bits <= 8:
            mode = GemmMode.MUL8
        else:
            self.unsupported(node, f"{ps.bits}-bit probabilities")
        self.gemms[node.name] = GemmInfo(node.name, node.op, h * n * n * d, mode.name.lower(), False)
        prr, vt, out = self.regions[pr], self.transposed[v], self.regions[node.output]
        c = node.consts
        heads = []
        for hd in range(h):
            cols = slice(hd * d, (hd + 1) * d)
            m = np.broadcast_to(c["m"], (width,))[cols]
            s = np.broadcast_to(c["s"], (width,))[cols]
            p = _Params("col", self.const(self.param_lines(d, 0, m, s, ys.zero_point),
                                          f"{node.name}.params[{hd}]", "params"), 0)
            heads.append((p, _Matrix(vt.addr + hd * d * vt.stride, d, vt.stride)))
        return _AttnV(mode, heads, prr, out, n, d, ys.bits)

    # ---------------------------------------------------------- vector ops
    def chunks(self, node: Node, rows: int, lines_per_row: int, regions: int,
               cap: int = 0) -> tuple[list[tuple[int, int]], int]:
        """Row chunks of a vector op and the V lines between chunk bases: chunks alternate
        between V's two halves (one write port each) when a chunk of ``regions`` regions fits
        a half, so the next chunk's LOAD overlaps this chunk's operation. ``cap``: at most
        that many rows per chunk."""
        half = v_half_lines(self.g)
        per = half // (regions * lines_per_row)
        if cap:
            per = min(per, cap)
        step = half
        if per < 1:
            per, step = self.g.v_depth // (regions * lines_per_row), 0
        if per < 1:
            raise TileError(f"buffers too small for a tile: {node.name} ({node.op}) needs {regions} x "
                            f"{lines_per_row} V lines for one row; V has {self.g.v_depth}")
        return [(r0, min(per, rows - r0)) for r0 in range(0, rows, per)], step

    def vector_loop(self, node: Node, rows: int, lpr: int, regions: int, body, cap: int = 0) -> None:
        """Emit ``body(r0, n, base)`` (LOADs and the operation of one chunk at V line ``base``;
        returns its STORE's arguments) per chunk; a chunk's STORE follows the next chunk's
        operation, so it drains one half while the unit works on the other."""
        chunks, step = self.chunks(node, rows, lpr, regions, cap)
        pending = []
        for c, (r0, n) in enumerate(chunks):
            stores = body(r0, n, (c % 2) * step)
            stores = stores if isinstance(stores, list) else [stores]
            for st in pending:
                self.vec_store(*st)
            pending = stores
            if not step:
                for st in pending:
                    self.vec_store(*st)
                pending = []
        for st in pending:
            self.vec_store(*st)

    def vec_load(self, r: Region, r0: int, rows: int, lpr: int, spad: int) -> None:
        self.load(Target.V, r.row(r0), rows, lpr, spad, r.stride, r.ebytes)

    def vec_store(self, r: Region, r0: int, rows: int, lpr: int, spad: int, owner: str = "") -> None:
        if owner:
            self.owner[len(self.asm.program.instructions)] = owner
        self.asm.store(Target.V, r.row(r0), rows, lpr, spad, row_elems=r.cols, ext_stride=r.stride,
                       ebytes=r.ebytes)

    def check_channels(self, node: Node, ch: int) -> None:
        L = self.g.lanes
        if ch % L:
            raise TileError(f"buffers too small for a tile: {node.name} ({node.op}) has {ch} channels, "
                            f"not a multiple of the {L} vector lanes")
        if ch > self.g.max_channels:
            raise TileError(f"buffers too small for a tile: {node.name} ({node.op}) has {ch} channels; "
                            f"the vector units hold {self.g.max_channels}")

    def layernorm_setup(self, node: Node) -> tuple[int, int, TensorSpec]:
        """Checks and LN_CONST load of a LayerNorm node: ``(rows, channels, output spec)``."""
        x, y = node.inputs[0], node.output
        xs, ys = self.spec(x), self.spec(y)
        rows, ch = self.rows_cols(xs)
        self.check_channels(node, ch)
        if xs.bits > 8 or ys.bits > 16:
            self.unsupported(node, f"LayerNorm unit takes 8-bit inputs and gives up to 16 bits "
                                   f"(here {xs.bits} -> {ys.bits})")
        c = node.consts
        addr = self.const(pack_records(LN_RECORD, ch, gm=c["gm"], alpha=c["alpha"], gs=c["gs"], bb=c["bb"]),
                          node.name + ".ln", "constants")
        self.load_const(Target.LN_CONST, addr, ch)
        return rows, ch, ys

    def do_layernorm(self, node: Node) -> None:
        if node.name in self.skip:
            return
        rows, ch, ys = self.layernorm_setup(node)
        lpr = ch // self.g.lanes
        xr, yr = self.regions[node.inputs[0]], self.regions[node.output]
        def body(r0, n, v):
            self.vec_load(xr, r0, n, lpr, v)
            self.asm.layernorm(v, v + n * lpr, n, ch, ys.bits, ys.zero_point)
            return yr, r0, n, lpr, v + n * lpr
        self.vector_loop(node, rows, lpr, 2, body)

    def softmax_format(self, node: Node) -> tuple[int, int, dict]:
        """``(rows, length, extra SOFTMAX fields)`` of a softmax node, after the unit's checks."""
        xs = self.spec(node.inputs[0])
        rows, length = self.rows_cols(xs)
        if node.attrs.get("frac", I.SCORE_FRAC) != I.SCORE_FRAC or xs.bits > 16:
            self.unsupported(node, f"the softmax unit takes 16-bit scores at {I.SCORE_FRAC} fractional bits")
        if length > self.g.max_tokens:
            raise TileError(f"buffers too small for a tile: {node.name} rows of {length} exceed the softmax "
                            f"unit's {self.g.max_tokens}")
        uniform = node.attrs.get("mode", "log2") == "uniform"
        if uniform and not self._softmax_has_mode:
            raise NotImplementedError(f"{node.name}: uniform softmax needs the SOFTMAX '{SOFTMAX_MODE_FIELD}' "
                                      f"field, which this ISA version lacks (use log2 attention)")
        return rows, length, ({SOFTMAX_MODE_FIELD: int(uniform)} if self._softmax_has_mode else {})

    def do_softmax(self, node: Node) -> None:
        if node.name in self.skip:
            return
        x, y = node.inputs[0], node.output
        rows, length, extra = self.softmax_format(node)
        lpr = _ceil(length, self.g.lanes)
        xr, yr = self.regions[x], self.regions[y]
        def body(r0, n, v):
            self.vec_load(xr, r0, n, lpr, v)
            self.asm.emit(Op.SOFTMAX, src=v, dst=v + n * lpr, rows=n, length=length, **extra)
            return yr, r0, n, lpr, v + n * lpr
        self.vector_loop(node, rows, lpr, 2, body)

    def plan_fusion(self, order: list[Node]) -> None:
        """Decide which nodes run inside another's instructions (``skip``), in this order:

        * a table lookup whose input is a linear layer's output and nothing else's runs on that
          GEMM's drain (``fused``): the codes go from the requantizer through the table into O;
        * the LayerNorm of a residual sum runs on the sum while it is in V (``ln_fused``);
        * a linear whose only use is a residual add is computed chunk by chunk inside it and
          MOVEd into the operand's V region (``res_linear``);
        * attention scores whose only use is a softmax go to it through O (``scores_fused``),
          and the P·V of those probabilities runs chunk by chunk in the same loop (``pv_fused``).
        Each saves a STORE and a LOAD of the tensor handed over (the lookup also a vector pass)."""
        for node in order:
            if node.op != "lut":
                continue
            x = node.inputs[0]
            prod = self.graph.producer(x)
            xs = self.spec(x)
            if (prod is None or prod.op != "linear" or x in self.graph.outputs or x in self.transposed
                    or len(self.graph.consumers(x)) != 1 or not xs.signed or xs.bits > 8
                    or self.spec(node.output).bits > 16):
                continue
            self.fused[prod.name] = node
            self.skip.add(node.name)
        for node in order:
            if node.op != "layernorm":
                continue
            prod = self.graph.producer(node.inputs[0])
            ch = self.rows_cols(self.spec(node.inputs[0]))[1]
            if (prod is not None and prod.op == "residual_add" and prod.name not in self.ln_fused
                    and self.spec(node.inputs[0]).bits <= 8 and 4 * _ceil(ch, self.g.lanes) <= self.g.v_depth):
                self.ln_fused[prod.name] = node
                self.skip.add(node.name)
        for node in order:
            if node.op != "residual_add":
                continue
            regions = 4 if node.name in self.ln_fused else 3
            for which, t in enumerate(node.inputs):
                lin = self.graph.producer(t)
                if (lin is None or lin.op != "linear" or t in self.graph.outputs
                        or len(self.graph.consumers(t)) != 1 or node.inputs.count(t) != 1):
                    continue
                per = self.residual_linear_rows(lin, regions)
                if per > 0:
                    self.res_linear[node.name] = (lin, which, per)
                    self.skip.add(lin.name)
                    break
        for node in order:
            if node.op == "residual_add" and node.name in self.res_linear:
                prod = self.linear_into_a(node)
                if prod is not None:
                    self.into_a[prod.name] = node
                    lin = self.res_linear[node.name][0]
                    self.on_chip.add(lin.inputs[0])
        for node in order:
            if node.op != "matmul_qk" or node.output in self.graph.outputs:
                continue
            users = self.graph.consumers(node.output)
            if len(users) == 1 and users[0].op == "softmax" and self.scores_chunk_rows(node) > 0:
                self.scores_fused[node.name] = users[0]
                self.skip.add(users[0].name)
                av = self.pv_follows(node, users[0], order)
                if av is not None:
                    self.pv_fused[node.name] = av
                    self.skip.add(av.name)

    def pv_follows(self, qk: Node, sm: Node, order: list[Node]) -> Node | None:
        """The attention P·V that can run chunk by chunk inside ``qk``'s scores loop: the
        probabilities' only use, its transposed V computed before ``qk``, and a chunk's scores
        and P·V outputs fitting one O half, its probabilities half of A, one head's Vᵀ half of
        B and its parameters half of P."""
        g = self.g
        y = sm.output
        users = self.graph.consumers(y)
        if y in self.graph.outputs or len(users) != 1 or users[0].op != "attn_v" or users[0].inputs[0] != y:
            return None
        av = users[0]
        v = av.inputs[1]
        pos = {n.name: i for i, n in enumerate(order)}
        prod = self.graph.producer(v)
        if v not in self.transposed or (prod is not None and pos.get(prod.name, -1) > pos[qk.name]):
            return None
        n, width = self.rows_cols(self.spec(v))
        d = width // av.attrs["heads"]
        rows = self.scores_chunk_rows(qk, _ceil(d, g.cols))
        lines = _ceil(n, g.bus_bytes)
        a_lines = max(lines, store_row_words(g, Target.V, _ceil(n, g.lanes)))   # also when STOREd into A
        if (rows == 0 or _ceil(rows, g.rows) * a_lines > g.a_depth // 2 or _ceil(d, g.cols) * lines > self.b_half
                or _ceil(d, g.cols) > g.p_depth // 2 or (d * self.regions[av.output].ebytes) % g.bus_bytes):
            return None
        return av

    def do_lut(self, node: Node) -> None:
        if node.name in self.skip:
            return
        x, y = node.inputs[0], node.output
        xs, ys = self.spec(x), self.spec(y)
        rows, ch = self.rows_cols(xs)
        if xs.bits > 8 or ys.bits > 16:
            self.unsupported(node, "the lookup table takes up to 8-bit inputs and gives 16-bit values")
        table = node.consts["table"]
        addr = self.const(pack_records(LUT_RECORD, len(table), value=table), node.name + ".table", "constants")
        self.load_const(Target.LUT_TABLE, addr, len(table))
        lpr = _ceil(ch, self.g.lanes)
        xr, yr = self.regions[x], self.regions[y]
        def body(r0, n, v):
            self.vec_load(xr, r0, n, lpr, v)
            self.asm.lut(v, v + n * lpr, n * lpr, lut_bits=xs.bits)
            return yr, r0, n, lpr, v + n * lpr
        self.vector_loop(node, rows, lpr, 2, body)

    def do_residual_add(self, node: Node) -> None:
        a, b = node.inputs
        y = node.output
        ys = self.spec(y)
        rows, ch = self.rows_cols(ys)
        self.check_channels(node, ch)
        if max(self.spec(a).bits, self.spec(b).bits, ys.bits) > 16:
            self.unsupported(node, "the residual unit takes 16-bit inputs and outputs")
        c = node.consts
        addr = self.const(pack_records(RES_RECORD, ch, ma=c["ma"], mb=c["mb"], s=c["s"], bias=c["bias"]),
                          node.name + ".res", "constants")
        self.load_const(Target.RES_CONST, addr, ch)
        lpr = ch // self.g.lanes
        ar, br, yr = self.regions[a], self.regions[b], self.regions[y]
        feed = self.res_linear.get(node.name)
        if feed is not None:    # one operand comes from the array through O: GEMM + MOVE per chunk
            lin, which, per = feed
            into_v = self.linear_into_v(lin, lpr)
        ln = self.ln_fused.get(node.name)
        if ln is not None:      # the LayerNorm of the sum runs on it while it is still in V
            first = len(self.asm.program.instructions)
            _, _, ls = self.layernorm_setup(ln)
            self.attribute(first, ln.name)
            lr = self.regions[ln.output]
        def body(r0, n, v):
            for i, r in enumerate((ar, br)):
                if feed is not None and i == which:
                    into_v(r0, n, v + i * n * lpr)
                else:
                    self.vec_load(r, r0, n, lpr, v + i * n * lpr)
            self.asm.residual_add(v, v + n * lpr, v + 2 * n * lpr, n * lpr, ch, ys.bits, ys.zero_point)
            stores = [(yr, r0, n, lpr, v + 2 * n * lpr)]
            if ln is not None:
                first = len(self.asm.program.instructions)
                self.asm.layernorm(v + 2 * n * lpr, v + 3 * n * lpr, n, ch, ls.bits, ls.zero_point)
                self.attribute(first, ln.name)
                stores.append((lr, r0, n, lpr, v + 3 * n * lpr, ln.name))
            return stores
        regions, cap = self.res_loop_shape(node)
        self.vector_loop(node, rows, lpr, regions, body, cap=cap)

    def do_prepend_row(self, node: Node) -> None:
        x, y = node.inputs[0], node.output
        yr = self.regions[y]
        row = node.consts["row"].reshape(1, -1)
        addr = yr.row(0)
        self._segments.append((addr, pack_rows(row, yr.ebytes, yr.stride), node.name + ".row"))
        if self.regions[x] != yr.view_rows(1, yr.rows - 1):
            self.unsupported(node, "its input could not be placed inside the output region")

    # ---------------------------------------------------------- driver
    def run(self) -> ScheduledProgram:
        order = self.graph.topological()
        self.plan_regions(order)
        self.plan_transposed(order)
        self.plan_fusion(order)
        handlers = {"linear": self.do_linear, "matmul_qk": self.do_matmul_qk, "attn_v": self.do_attn_v,
                    "layernorm": self.do_layernorm, "softmax": self.do_softmax, "lut": self.do_lut,
                    "residual_add": self.do_residual_add, "prepend_row": self.do_prepend_row,
                    "take_rows": lambda n: None, "patchify": lambda n: None}
        for node in order:
            before = len(self.asm.program.instructions)
            self.node = node.name
            if node.op not in ("linear", "matmul_qk", "attn_v"):
                self.flush_stores()
            handlers[node.op](node)
            self.layers += [node.name] * (len(self.asm.program.instructions) - before)
        self.flush_stores()
        self.layers += [order[-1].name] * (len(self.asm.program.instructions) - len(self.layers))
        for i, name in self.owner.items():
            self.layers[i] = name
        self.asm.emit(Op.END)
        self.layers.append(order[-1].name)     # END: attributed to the last node (see docs)
        instrs = self.asm.program.instructions
        best = None
        for perm, placed in ([reorder(instrs, self.g, self.lat, window=w, tie=t) for w in WINDOWS for t in TIE_RULES]
                             if self.interleave else [(list(range(len(instrs))), instrs)]):
            program = dataclasses.replace(self.asm.program, instructions=assign_waits(placed, self.g))
            cycles = program_cycles(program, self.config, self.lat)
            if best is None or cycles < best[0]:
                best = (cycles, perm, program.instructions)
        self.cycles, perm, self.asm.program.instructions = best
        self.layers = [self.layers[i] for i in perm]
        return self.finish(order)

    def finish(self, order: list[Node]) -> ScheduledProgram:
        prog = self.asm.program
        for addr, blob, name in self._segments:
            prog.segments.append(Segment(addr, blob, name))
        code_len = len(prog.code())
        prog.entry = self.plan.take(code_len, "code", "code")
        prog.meta = {"model": self.graph.meta.get("model", ""), "config": getattr(self.config, "name", ""),
                     "rows": self.g.rows, "cols": self.g.cols, "bus_bytes": self.g.bus_bytes,
                     "lanes": self.g.lanes, "scheduler": "vit2hw.scheduler/1"}
        prog.image()   # raises if segments overlap
        inputs: dict[str, Placement] = {}
        for t in self.graph.inputs:
            spec = self.spec(t)
            patch = [n for n in self.graph.consumers(t) if n.op == "patchify"]
            if patch:
                ps = self.spec(patch[0].output)
                r = self.regions[ps.name]
                inputs[ps.name] = Placement(r.addr, tuple(ps.shape), r.ebytes, r.stride, ps.signed, ps.bits,
                                            ps.name, t, tuple(spec.shape), "patchify", patch[0].attrs["patch"])
            else:
                r = self.regions[t]
                inputs[t] = Placement(r.addr, tuple(spec.shape), r.ebytes, r.stride, spec.signed, spec.bits, t)
        outputs = {}
        for t in self.graph.outputs:
            spec, r = self.spec(t), self.regions[t]
            signed = spec.signed and spec.kind != "log2"
            outputs[t] = Placement(r.addr, tuple(spec.shape), r.ebytes, r.stride, signed, spec.bits, t)
        memory = self.plan.bytes_by_kind()
        memory["total"] = self.plan.next
        return ScheduledProgram(prog, inputs, outputs, self.layers, _ceil(self.plan.next, 4096) * 4096,
                                self.gemms, dict(self.regions), memory,
                                {n.name: n.op for n in order}, {n.name: n.module for n in order}, list(self.plan.blocks))


def schedule(graph: QuantizedGraph, config, mem_latency: int = 1, interleave: bool = True,
             blocking: str | None = None, weight_regions: bool | None = None,
             scores_rows: int | None = None) -> ScheduledProgram:
    """Lower ``graph`` onto ``config`` (an ``AcceleratorConfig``): instructions, memory plan,
    input/output placements and per-instruction node attribution. ``interleave``: reorder
    the instructions across nodes (:func:`vit2hw.reorder.reorder`); off, they stay node by node.

    Raises :class:`~vit2hw.tiling.TileError` ("buffers too small for a tile: ...") when a
    scratchpad cannot hold the smallest tile of some op, ``NotImplementedError`` for ops the
    hardware cannot run (e.g. uniform softmax on an ISA without the mode field).

    GEMM blockings are chosen with both of ``tiling.choose_blocking``'s cost models (loads
    and GEMMs in series, or double-buffered overlap); the program with fewer cycles
    (``cyclemodel.program_cycles``; the first on a tie) is returned. ``blocking``
    ("serial" or "overlap") uses that model only. Each is also tried with B's two weight
    regions (weights that fit one loaded there in turn, B's halves shrunk to the rest) unless
    ``weight_regions`` says whether to use them.

    ``scores_rows`` caps the rows per chunk of an on-chip scores loop (0: as many as the
    buffers allow). Left None, the best of the programs above is also built with chunks of
    one row tile when its loops took more, and the shorter kept: smaller chunks shorten the
    wait of each P·V for its softmax and STORE (ZCU102, DeiT-Tiny: 80-row chunks leave the
    array 30 K cycles idle inside the attention), but what the attention gains can be lost
    where the weight DMA then lags, so only the replayed timeline decides."""
    graph.validate()
    if blocking not in (None, "serial", "overlap"):
        raise ValueError(f"blocking must be 'serial', 'overlap' or None, got {blocking!r}")
    if scores_rows is not None and scores_rows < 0:
        raise ValueError(f"scores_rows must be 0 (no cap) or positive, got {scores_rows}")
    best = None
    for overlap in ((False, True) if blocking is None else (blocking == "overlap",)):
        for regions in ((False, True) if weight_regions is None else (bool(weight_regions),)):
            s = _Scheduler(graph, config, mem_latency, interleave, overlap, regions, scores_rows or 0)
            sp = s.run()
            if best is None or s.cycles < best[0]:
                best = (s.cycles, sp, overlap, regions, s.scores_rows_used)
    cycles, sp, overlap, regions, used = best
    if scores_rows is None and used > config.rows:
        alt = _Scheduler(graph, config, mem_latency, interleave, overlap, regions, config.rows)
        alt_sp = alt.run()
        if alt.cycles < cycles:
            sp = alt_sp
    return sp
