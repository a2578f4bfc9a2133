"""Cycle model of the accelerator: exact cycles of every instruction and of a program.

The sequencer (``hdl/controller.py``) fetches instructions in order and issues each to
its engine (DMA, GEMM, vector or weight DMA) once that engine can take it and every engine
in the instruction's ``wait`` field is idle; instructions come through their own memory
port, so a fetch never waits for the DMA engine. The GEMM engine takes the next GEMM while
the previous one drains (:class:`Sequencer`).
:func:`timeline` replays exactly that: per instruction the fetch, issue and finish cycle,
from the engines' busy times (closed forms from the array / vector-unit formulas below and
the memory's read latency). The cocotb test of the top level (``tests/test_hdl_top.py``)
requires ``program_cycles`` to equal the RTL's ``cycles`` counter exactly, with a memory
that is always ready and answers reads after exactly ``mem_latency`` cycles; with
back-pressure the prediction is a lower bound.

Unit formulas
-------------
``tile_cycles``, ``layernorm_cycles``, ``softmax_cycles`` and ``vector_cycles`` are the pure
timing functions of the array and the vector-side units. The core package cannot import
``hdl`` (the dependency points the other way), so they are stated here, where the
scheduler needs them; ``tests/test_cyclemodel.py`` checks that they agree with the
functions of the same name in ``hdl/systolic.py``, ``hdl/layernorm.py``, ``hdl/softmax.py``
and ``hdl/vector.py`` for many shapes, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from vit2hw.intops import EXP_FRAC, PROB_MAX, PROB_RECIP_SHIFT
from dataclasses import dataclass

from vit2hw.isa import (INSTR_BYTES, WAIT_OLDER_GEMM, Engine, Geometry, GemmMode, Instruction, Op, Program,
                        SoftmaxMode, empty_gemm, instr_engine, store_words_written)

__all__ = [
    "REQUANT_LATENCY", "move_cycles", "tile_cycles", "layernorm_sqrt_bits", "layernorm_cycles", "softmax_cycles",
    "vector_cycles", "fetch_cycles", "engine_cycles", "instruction_cycles", "program_cycles", "Timeline",
    "timeline", "Sequencer", "DEFAULT_MEM_LATENCY",
]

DEFAULT_MEM_LATENCY = 1
#: requantizer pipeline depth (hdl.requant.REQUANT_LATENCY)
REQUANT_LATENCY = 4
_PE_LATENCY = 3
_LN_OUT_PIPELINE_DEPTH = 7
#: LayerNorm root and reciprocal bits settled per cycle (hdl.layernorm.LN_STEPS)
_LN_STEPS = 2
_LN_ROW_OVERHEAD = 1 + 1 + 1 + -(-17 // _LN_STEPS) + 1
_SM_EXP_PIPELINE_DEPTH = 4
_SM_CODE_PIPELINE_DEPTH = 2
#: uniform-mode reciprocal: two quotient bits per cycle (hdl.softmax.SM_RECIP_CYCLES)
_SM_RECIP_CYCLES = -(-(PROB_MAX << (PROB_RECIP_SHIFT - EXP_FRAC)).bit_length() // 2)
_VECTOR_PIPELINE_DEPTH = 4
#: MOVE: the synchronous O read ahead of the first beat
_MOVE_READ_LATENCY = 1


def tile_cycles(rows: int, cols: int, k: int, n_tiles: int = 1, mode: int = GemmMode.MUL8) -> int:
    """Array cycles of ``n_tiles`` back-to-back tiles of depth ``k``: first accepted beat to
    last output row, both inclusive (``beats = ceil(k/2)`` in packed mode)."""
    if rows < 1 or cols < 1 or n_tiles < 1 or k < 1:
        raise ValueError("rows, cols, k and n_tiles must be positive")
    beats = (k + 1) // 2 if int(mode) == GemmMode.PACKED else k
    return beats - 1 + (n_tiles - 1) * max(beats, rows) + rows + cols + _PE_LATENCY - 1 + rows


def layernorm_sqrt_bits(max_channels: int, in_bits: int = 8) -> int:
    xmax = 1 << (in_bits + 2)
    return ((max_channels * max_channels * xmax * xmax).bit_length() + 1) // 2


def layernorm_cycles(channels: int, rows: int = 1, lanes: int = 1, max_channels: int = 1024,
                     in_bits: int = 8) -> int:
    if channels % lanes or channels < 1:
        raise ValueError("channels must be a positive multiple of lanes")
    if rows < 1:
        return 0
    # three stages on three rows: the stats pass (beats + its drain), the scalar phase and
    # the output pass; after the first row, the slower of the first two paces the rows
    beats = channels // lanes
    scalar = -(-layernorm_sqrt_bits(max_channels, in_bits) // _LN_STEPS) + _LN_ROW_OVERHEAD
    first = beats + scalar + beats + _LN_OUT_PIPELINE_DEPTH
    return first + (rows - 1) * max(beats + 1, scalar - 1)


def softmax_cycles(n: int, rows: int = 1, lanes: int = 1, mode: int = SoftmaxMode.LOG2) -> int:
    """Softmax unit cycles: rows pipelined over five row buffers, the load, exp and code
    passes each taking the next row right after their last beat of this one, the uniform
    mode's divider every ``R + 1`` cycles; short log2 rows (``B`` <= the exp pipeline's depth)
    alternate with the exp drain."""
    if int(mode) not in (SoftmaxMode.LOG2, SoftmaxMode.UNIFORM):
        raise ValueError(f"unknown softmax mode {mode}")
    if n < 1:
        raise ValueError("row length must be positive")
    if rows < 1:
        return 0
    beats = -(-n // lanes)
    recip = _SM_RECIP_CYCLES if int(mode) == SoftmaxMode.UNIFORM else 0
    first = 2 * beats + _SM_EXP_PIPELINE_DEPTH + 1 + recip + beats + _SM_CODE_PIPELINE_DEPTH
    more = rows - 1
    if int(mode) == SoftmaxMode.UNIFORM or beats > _SM_EXP_PIPELINE_DEPTH:
        return first + more * max(beats, recip + 1)
    return first + (more // 2) * (2 * beats + _SM_EXP_PIPELINE_DEPTH) + (more % 2) * beats


def vector_cycles(n_elems: int, lanes: int = 1) -> int:
    beats = -(-int(n_elems) // int(lanes))
    return 0 if beats == 0 else beats + _VECTOR_PIPELINE_DEPTH


def move_cycles(lines: int) -> int:
    """MOVE unit cycles: one V line written per cycle after the first O read (hdl.forward)."""
    return 0 if lines == 0 else lines + _MOVE_READ_LATENCY


def fetch_cycles(g: Geometry, mem_latency: int = DEFAULT_MEM_LATENCY) -> int:
    """Controller cycles to fetch and decode one instruction (FETCH, the reads, EXEC)."""
    return INSTR_BYTES // g.bus_bytes + mem_latency + 3


def engine_cycles(instr: Instruction, g: Geometry, lat: int = DEFAULT_MEM_LATENCY) -> int:
    """Cycles the instruction's engine is busy (from the cycle after it starts)."""
    op = instr.op
    if op == Op.LOAD:
        words = instr["rows"] * instr["row_lines"] * g.words_per_line(instr["target"], 1 << instr["ebytes_log2"])
        return words + lat if words else 0
    if op == Op.STORE:
        return instr["rows"] * store_words_written(g, instr["target"], instr["row_lines"], instr["row_elems"],
                                                   1 << instr["ebytes_log2"])
    if op == Op.GEMM:
        if empty_gemm(instr):
            return 0
        return tile_cycles(g.rows, g.cols, instr["k_beats"], instr["m_tiles"] * instr["n_tiles"]) + REQUANT_LATENCY
    if op == Op.LAYERNORM:
        return 1 + layernorm_cycles(instr["channels"], instr["rows"], g.lanes, g.max_channels)
    if op == Op.SOFTMAX:
        return 1 + softmax_cycles(instr["length"], instr["rows"], g.lanes, instr.get("mode"))
    if op in (Op.LUT, Op.RESIDUAL_ADD):
        return 1 + vector_cycles(instr["lines"] * g.lanes, g.lanes)
    if op == Op.MOVE:
        return 1 + move_cycles(instr["rows"] * instr["dst_row_lines"])
    return 0


def _geometry(config) -> Geometry:
    return config if isinstance(config, Geometry) else Geometry.from_config(config)


def instruction_cycles(instr: Instruction, config, mem_latency: int = DEFAULT_MEM_LATENCY) -> int:
    """Cycles of one instruction run alone (fetch, issue, engine busy) on ``config`` (an
    ``AcceleratorConfig`` or a :class:`~vit2hw.isa.Geometry`) with a memory answering reads
    after ``mem_latency`` cycles; in a program, engines overlap (:func:`timeline`)."""
    g = _geometry(config)
    if instr.op in (Op.END, Op.FENCE):
        return fetch_cycles(g, mem_latency)
    return fetch_cycles(g, mem_latency) + 1 + engine_cycles(instr, g, mem_latency)


@dataclass(frozen=True)
class Timeline:
    """When each instruction ran (cycle numbers as the RTL counts them, ``start`` = cycle 0).

    ``issue[i]`` is the cycle the sequencer started instruction ``i``'s engine (for END and
    FENCE: the cycle it found every engine idle); the engine is busy from ``issue + 1``
    and free again at ``finish[i]`` (``issue + 1 + engine_cycles``; for a GEMM that
    overlaps the drain of the one before, the cycle its own last row is through the
    requantizer). ``total`` is END's issue cycle, the RTL's ``cycles`` count.
    ``instructions`` includes the final END.
    """
    instructions: tuple[Instruction, ...]
    fetch: tuple[int, ...]
    issue: tuple[int, ...]
    finish: tuple[int, ...]
    busy: tuple[int, ...]
    total: int

    def makespan_shares(self) -> list[int]:
        """How far each instruction pushed the program's end: ``max(0, finish − all earlier
        finishes)`` (END: the rest); the shares add up to ``total``."""
        out, frontier = [], 0
        for ins, f in zip(self.instructions, self.finish):
            f = self.total if ins.op == Op.END else f
            out.append(max(0, f - frontier))
            frontier = max(frontier, f)
        return out


class Sequencer:
    """The issue rules of ``hdl/controller.py`` as state: when the next instruction is fetched
    and issued, given when each engine is free. :func:`timeline` replays a program with it;
    :mod:`vit2hw.reorder` asks it which candidate would issue first.

    An engine takes its next instruction once it is free (``accept``); a ``wait`` bit, END
    and FENCE need the named engine idle (``free``). The two differ for the GEMM engine only:
    it takes the next GEMM as soon as it has fed the last beat of the current one's last
    tile and the GEMM before that is done (two drain contexts), so the
    next instruction's tiles follow the previous ones at the array's own tile spacing
    (``max(beats, R)``, the last beats of consecutive tiles at least ``R`` cycles apart)
    while the previous rows drain.
    """

    def __init__(self, g: Geometry, mem_latency: int = DEFAULT_MEM_LATENCY):
        self.g = g
        self.lat = mem_latency
        self.fc = fetch_cycles(g, mem_latency)
        self.free = {e: 0 for e in Engine}     # first cycle at which the engine's busy is low
        self.accept = {e: 0 for e in Engine}   # first cycle at which it may take the next one
        self.t = 1                             # the sequencer enters FETCH the cycle after start
        self._last_beat: int | None = None     # cycle the array took the latest tile's last beat
        self.older_free = 0                    # cycle every GEMM but the latest is done

    def fetch_cycle(self) -> int:
        """When the next fetch begins: the cycle after the previous issue (instructions have
        their own memory port, so a running transfer does not hold the fetch back)."""
        return self.t

    def issue_cycle(self, engine: Engine | None, wait: int = 0) -> int:
        """When an instruction for ``engine`` (None: END/FENCE, which wait for every engine)
        with the ``wait`` field ``wait`` (bit ``e``: engine ``e`` idle; bit 4,
        :data:`~vit2hw.isa.WAIT_OLDER_GEMM`: every GEMM but the latest done) would issue if
        it were fetched next."""
        ready = self.fetch_cycle() + self.fc - 1
        if engine is None:
            return max(ready, *self.free.values())
        return max(ready, self.accept[engine], self.older_free if wait & WAIT_OLDER_GEMM else 0,
                   *(self.free[e] for e in Engine if (wait >> int(e)) & 1))

    def issue(self, instr: Instruction, x: int) -> int:
        """Record the issue of ``instr`` at cycle ``x``; returns the cycle its engine is free
        again (``x`` for END/FENCE)."""
        self.t = x + 1
        engine = instr_engine(instr)
        if engine is None:
            return x
        if instr.op == Op.GEMM:
            return self._issue_gemm(instr, x)
        self.free[engine] = self.accept[engine] = x + 1 + engine_cycles(instr, self.g, self.lat)
        return self.free[engine]

    def _issue_gemm(self, instr: Instruction, x: int) -> int:
        e = Engine.GEMM
        if empty_gemm(instr):              # feeds nothing: the engine's state is unchanged
            self.free[e] = max(self.free[e], x + 1)
            self.accept[e] = max(self.accept[e], x + 1)
            return self.free[e]
        R, C = self.g.rows, self.g.cols
        tiles = instr["m_tiles"] * instr["n_tiles"]
        beats = instr["k_beats"]           # array beats per tile (K, or K/2 packed: the field says beats)
        # the first beat is offered the cycle after issue; a tile's last beat waits until R
        # cycles after the previous tile's (hdl.systolic), whichever instruction that was
        first_last = x + beats if self._last_beat is None else max(x + beats, self._last_beat + R)
        last = first_last + (tiles - 1) * max(beats, R)
        drain_end = last + 2 * R + C + 1          # its last row leaves the array
        # the next GEMM needs the feed free and the one before this done (two contexts)
        self.accept[e] = max(last + 1, self.free[e])
        self.older_free = self.free[e]
        self._last_beat = last
        self.free[e] = drain_end + 1 + REQUANT_LATENCY
        return self.free[e]


def timeline(program: Program, config, mem_latency: int = DEFAULT_MEM_LATENCY) -> Timeline:
    """Replay the sequencer on ``program`` (up to and including its first END; one is
    appended if missing), as ``hdl/controller.py`` runs it. ``busy`` of a GEMM counts only
    the cycles it adds to the GEMM engine's busy time (the part not overlapping the GEMM
    before it), so the busy cycles of an engine add up to the time it was busy."""
    g = _geometry(config)
    instrs = []
    for ins in program.instructions:
        instrs.append(ins)
        if ins.op == Op.END:
            break
    else:
        instrs.append(Instruction.make(Op.END))
    seq = Sequencer(g, mem_latency)
    fetch, issue, finish, busy = [], [], [], []
    for ins in instrs:
        eng = instr_engine(ins)
        fetch.append(seq.fetch_cycle())
        x = seq.issue_cycle(eng, ins.get("wait"))
        before = seq.free[eng] if eng is not None else 0
        f = seq.issue(ins, x)
        finish.append(f)
        issue.append(x)
        busy.append(0 if eng is None else max(0, f - max(x + 1, before)))
    return Timeline(tuple(instrs), tuple(fetch), tuple(issue), tuple(finish), tuple(busy), issue[-1])


def program_cycles(program: Program, config, mem_latency: int = DEFAULT_MEM_LATENCY) -> int:
    """Cycles the accelerator's ``cycles`` counter reports for ``program`` (through its END)."""
    return timeline(program, config, mem_latency).total
