"""Instruction set of the vit2hw accelerator: opcodes, fields, encoding, programs.

The scheduler emits :class:`Program` s built from :class:`Instruction` s; the hardware
controller (``hdl/controller.py``) decodes the same words from the field tables in this
module, so the compiler and the RTL cannot disagree about a bit position. Everything
here is plain Python (no hdl/calib/sim imports). ``docs/isa.md`` documents every field.

Instruction word
----------------
Every instruction is one little-endian 256-bit word (:data:`INSTR_BYTES` = 32 bytes):
bits ``[0, 8)`` hold the opcode, the opcode's fields follow in :data:`FIELDS` order,
LSB first; unused high bits are zero. Signed fields are two's complement.
Every opcode also has the ``wait`` field at the fixed bits ``[248, 253)`` (:data:`WAIT_POS`):
bit ``e`` set means "do not issue until engine ``e`` (:class:`Engine`) is idle"; bit 4
(:data:`WAIT_OLDER_GEMM`) means "do not issue until every GEMM but the latest issued one is
done" (the GEMM engine takes a GEMM while the previous one drains, so two can be in
flight). The four engines (DMA, GEMM, vector, weight DMA) run concurrently; instructions
issue in program order, each to its engine once that engine can take it, so the program
itself states its cross-engine dependencies (:mod:`vit2hw.hazards` computes them;
:meth:`Assembler.end` applies it).

Scratchpads (:class:`Geometry` gives their shapes for an ``AcceleratorConfig``)
--------------------------------------------------------------------------------
``A``  activation operand: ``rows`` banks of bus-word lines (one byte per K step)
``B``  weight operand (Bᵀ rows, i.e. ``nn.Linear``'s [out, in] layout): ``cols`` banks
``O``  GEMM outputs: lines of ``cols`` int32 lanes (one output row of a tile)
``V``  vector data: lines of ``vector_lanes`` int32 lanes
``P``  requantization parameters: lines of ``cols`` 16-byte records (:data:`PARAM_RECORD`)

Unit constant memories (LayerNorm, residual, LUT) are LOAD targets too, one 16-byte
record per channel / table entry (:data:`LN_RECORD`, :data:`RES_RECORD`, :data:`LUT_RECORD`).
"""

from __future__ import annotations

import base64
import enum
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = [
    "ISA_VERSION", "INSTR_BITS", "INSTR_BYTES", "RECORD_BYTES",
    "Op", "Target", "GemmMode", "SoftmaxMode", "Engine", "engine_of", "instr_engine", "WDMA_TARGETS",
    "FIELDS", "Field", "WAIT_FIELD", "WAIT_OLDER_GEMM",
    "WAIT_POS", "field_offsets", "empty_gemm",
    "Instruction", "encode", "decode", "Segment", "Program", "ProgramError",
    "Geometry", "PARAM_RECORD", "PARAM_QUAD_RECORD", "QUAD_BIAS_BITS", "quad_biases_fit", "pack_quad_records",
    "unpack_quad_records", "LN_RECORD", "RES_RECORD", "LUT_RECORD",
    "pack_records", "pack_rows", "unpack_rows", "Assembler", "store_row_words", "store_words_written",
]

#: 2: the ``wait`` field and concurrent engines (version-1 programs had no dependencies)
#: 3: the weight DMA engine; 4: STORE into A (``dst_a``), an on-chip copy on the DMA engine
#: 5: the older-GEMM wait bit; 6: a STORE skips a row's trailing words that hold no element
#: below ``row_elems`` (fewer cycles; into A those lines keep what they held); 7: SOFTMAX
#: into A (``dst_a``); 8: a LOAD into B or P may run on the DMA engine (``on_dma``);
#: 9: GEMM ``bias_quads`` (four output rows to a P line)
ISA_VERSION = 9
INSTR_BITS = 256
INSTR_BYTES = INSTR_BITS // 8
OPCODE_BITS = 8
#: one constant / parameter record in external memory
RECORD_BYTES = 16


class ProgramError(ValueError):
    """An instruction or program is malformed (unknown field, value out of range, bad file)."""


class Op(enum.IntEnum):
    """Opcodes (bits [0, 8) of an instruction word). An all-zero word is END."""
    END = 0
    LOAD = 1
    STORE = 2
    GEMM = 3
    LAYERNORM = 4
    SOFTMAX = 5
    LUT = 6
    RESIDUAL_ADD = 7
    FENCE = 8
    MOVE = 9


class Target(enum.IntEnum):
    """What a LOAD writes / a STORE reads."""
    A = 0
    B = 1
    V = 2
    P = 3
    O = 4          # STORE only
    LN_CONST = 5   # LOAD only: LayerNorm per-channel constants
    RES_CONST = 6  # LOAD only: residual per-channel constants
    LUT_TABLE = 7  # LOAD only: lookup-table entries


#: LOAD targets served by the weight DMA engine (:data:`Engine.WDMA`, port ``wmem``); A and V
#: LOADs and every STORE use the DMA engine (port ``mem``)
WDMA_TARGETS = frozenset({Target.B, Target.P, Target.LN_CONST, Target.RES_CONST, Target.LUT_TABLE})
#: weight-side targets the DMA engine can load as well (the LOAD's ``on_dma`` bit): the
#: scratchpads the array reads, whose traffic can outrun the weight DMA
DMA_CAPABLE = frozenset({Target.B, Target.P})


class GemmMode(enum.IntEnum):
    """PE array mode of a GEMM (same numbering as ``hdl.pe.Mode``)."""
    MUL8 = 0
    PACKED = 1
    SHIFT = 2


class SoftmaxMode(enum.IntEnum):
    """Output of a SOFTMAX (same numbering as ``hdl.softmax.SM_MODE_*``)."""
    LOG2 = 0      # 4-bit log2 codes (intops.log_int_softmax), for SHIFT-mode P·V
    UNIFORM = 1   # probabilities 0..PROB_MAX (intops.uniform_softmax), for MUL8 P·V


class Engine(enum.IntEnum):
    """The concurrent engines; an instruction's ``wait`` bit ``e`` names engine ``e``."""
    DMA = 0       # LOADs of activations (A, V) and every STORE: the ``mem`` port
    GEMM = 1
    VECTOR = 2    # LAYERNORM, SOFTMAX, LUT, RESIDUAL_ADD, MOVE
    WDMA = 3      # LOADs of weights and constants (B, P, LN_CONST, RES_CONST, LUT_TABLE): ``wmem``


def engine_of(op: Op | int, target: "Target | int | None" = None, on_dma: int = 0) -> Engine | None:
    """The engine that executes ``op`` (None for END and FENCE, which the sequencer handles);
    a LOAD's engine follows its ``target`` (:data:`WDMA_TARGETS` go to the weight DMA unless
    ``on_dma`` moves a LOAD into B or P to the DMA engine)."""
    op = Op(op)
    if op == Op.LOAD and target is not None and Target(target) in WDMA_TARGETS and not (
            on_dma and Target(target) in DMA_CAPABLE):
        return Engine.WDMA
    if op in (Op.LOAD, Op.STORE):
        return Engine.DMA
    if op == Op.GEMM:
        return Engine.GEMM
    if op in (Op.LAYERNORM, Op.SOFTMAX, Op.LUT, Op.RESIDUAL_ADD, Op.MOVE):
        return Engine.VECTOR
    return None


def instr_engine(ins: "Instruction") -> Engine | None:
    """The engine that executes instruction ``ins`` (:func:`engine_of` with its LOAD target)."""
    if ins.op != Op.LOAD:
        return engine_of(ins.op)
    return engine_of(ins.op, ins["target"], ins["on_dma"])


@dataclass(frozen=True)
class Field:
    name: str
    bits: int
    signed: bool = False

    @property
    def range(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1


def _f(spec: str) -> Field:
    name, kind = spec.split(":")
    return Field(name, int(kind[1:]), kind[0] == "s")


#: field tables, LSB first after the opcode (``u``: unsigned, ``s``: signed two's complement)
FIELDS: dict[Op, tuple[Field, ...]] = {op: tuple(_f(s) for s in specs) for op, specs in {
    Op.END: (),
    Op.FENCE: (),
    Op.LOAD: ("target:u3", "ebytes_log2:u2", "ext_addr:u32", "ext_stride:u32", "rows:u16",
              "row_lines:u16", "spad_addr:u24",
              # appended (bit 133): a LOAD into B or P runs on the DMA engine (port ``mem``)
              # instead of the weight DMA (ISA version 8)
              "on_dma:u1"),
    Op.STORE: ("target:u3", "ebytes_log2:u2", "ext_addr:u32", "ext_stride:u32", "rows:u16",
               "row_lines:u16", "spad_addr:u24", "row_elems:u16",
               # appended (bit 149): the words go into A from line ``a_addr`` (as a LOAD of them
               # into A would place them) instead of external memory
               "dst_a:u1", "a_addr:u24"),
    Op.GEMM: ("mode:u2", "a_unsigned:u1", "out_bits:u6", "out_signed:u1", "bypass:u1",
              "bias_per_row:u1", "m_tiles:u16", "n_tiles:u16", "k_beats:u16",
              "a_addr:u24", "a_row_lines:u16", "b_addr:u24", "b_row_lines:u16",
              "o_addr:u24", "p_addr:u24",
              # appended (bit 196): zero in words written before, which then mean "no table"
              "lut:u1", "lut_bits:u4",
              # appended (bit 201): one PARAM_RECORD per output row, ``cols`` to a P line
              "row_params:u1",
              # appended (bit 202): with bias_per_row, one P line per pair of output rows
              # (the odd row's bias in the records' ``bias1``)
              "bias_pairs:u1",
              # appended (bit 203): with bias_per_row, one P line per four output rows, in
              # PARAM_QUAD_RECORDs (24-bit biases; ISA version 9)
              "bias_quads:u1"),
    Op.LAYERNORM: ("src:u24", "dst:u24", "rows:u16", "channels:u16", "out_bits:u6", "out_zp:s16"),
    # ``mode`` was appended (bit 88) so that words written before it decode as log2 softmax
    Op.SOFTMAX: ("src:u24", "dst:u24", "rows:u16", "length:u16", "mode:u1", "src_o:u1", "src_row_lines:u16",
                 # appended (bit 106): the probabilities go into A from line ``a_addr`` (one byte
                 # per element, as a STORE of them into A would place them) instead of into V
                 "dst_a:u1", "a_addr:u24"),
    Op.LUT: ("src:u24", "dst:u24", "lines:u24", "lut_bits:u4"),
    Op.RESIDUAL_ADD: ("src_a:u24", "src_b:u24", "dst:u24", "lines:u24", "channels:u16",
                      "out_bits:u6", "out_zp:s16"),
    # O rows → V rows on chip (GEMM results to the vector units without a memory round trip)
    Op.MOVE: ("src:u24", "dst:u24", "rows:u16", "src_row_lines:u16", "dst_row_lines:u16"),
}.items()}


#: the dependency mask every opcode carries at a fixed position (see the module docstring)
WAIT_FIELD = Field("wait", len(Engine) + 1)
WAIT_POS = INSTR_BITS - 8
#: the ``wait`` bit for the GEMMs issued before the latest one (the one still draining)
WAIT_OLDER_GEMM = 1 << len(Engine)


def field_offsets(op: Op) -> dict[str, tuple[int, Field]]:
    """``name -> (bit offset, Field)`` of ``op``'s fields inside the instruction word
    (``wait`` last, at :data:`WAIT_POS`)."""
    out, pos = {}, OPCODE_BITS
    for f in FIELDS[op]:
        out[f.name] = (pos, f)
        pos += f.bits
    if pos > WAIT_POS:
        raise AssertionError(f"{op.name} fields need {pos} bits")
    out[WAIT_FIELD.name] = (WAIT_POS, WAIT_FIELD)
    return out


@dataclass(frozen=True)
class Instruction:
    """One instruction: an opcode and every one of its fields (missing fields are 0)."""
    op: Op
    args: tuple[tuple[str, int], ...] = ()

    @classmethod
    def make(cls, op: Op | str, **fields: int) -> "Instruction":
        op = Op[op.upper()] if isinstance(op, str) else Op(op)
        known = {f.name: f for f in FIELDS[op] + (WAIT_FIELD,)}
        unknown = set(fields) - set(known)
        if unknown:
            raise ProgramError(f"{op.name}: unknown fields {sorted(unknown)}; has {sorted(known)}")
        vals = []
        for name, f in known.items():
            v = int(fields.get(name, 0))
            lo, hi = f.range
            if not lo <= v <= hi:
                raise ProgramError(f"{op.name}.{name}={v} outside [{lo}, {hi}] ({f.bits} bits)")
            vals.append((name, v))
        return cls(op, tuple(vals))

    def __getitem__(self, name: str) -> int:
        for k, v in self.args:
            if k == name:
                return v
        raise KeyError(f"{self.op.name} has no field {name!r}")

    def get(self, name: str, default: int = 0) -> int:
        return dict(self.args).get(name, default)

    def with_fields(self, **fields: int) -> "Instruction":
        """The same instruction with ``fields`` set (checked as :meth:`make` checks them)."""
        return Instruction.make(self.op, **{**dict(self.args), **fields})

    def with_wait(self, mask: int) -> "Instruction":
        """The same instruction with its ``wait`` field set to ``mask``."""
        return self.with_fields(**{WAIT_FIELD.name: mask})

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op.name, **dict(self.args)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Instruction":
        d = dict(d)
        try:
            op = d.pop("op")
        except KeyError:
            raise ProgramError(f"instruction without 'op': {d}") from None
        if op not in Op.__members__:
            raise ProgramError(f"unknown opcode {op!r}")
        return cls.make(op, **d)

    def __str__(self) -> str:
        return self.op.name + " " + " ".join(f"{k}={v}" for k, v in self.args if v)


def empty_gemm(ins: Instruction) -> bool:
    """A GEMM that feeds no tile (a zero tile count or depth): it takes no cycles and occupies
    no drain context."""
    return ins.op == Op.GEMM and not (ins["m_tiles"] and ins["n_tiles"] and ins["k_beats"])


def encode(instr: Instruction) -> int:
    """The 256-bit instruction word as an int."""
    word = int(instr.op)
    offs = field_offsets(instr.op)
    for name, v in instr.args:
        pos, f = offs[name]
        word |= (v & ((1 << f.bits) - 1)) << pos
    return word


def decode(word: int | bytes) -> Instruction:
    """Inverse of :func:`encode` (accepts the int or its 32 little-endian bytes)."""
    if isinstance(word, (bytes, bytearray)):
        if len(word) != INSTR_BYTES:
            raise ProgramError(f"an instruction is {INSTR_BYTES} bytes, got {len(word)}")
        word = int.from_bytes(word, "little")
    opcode = word & ((1 << OPCODE_BITS) - 1)
    try:
        op = Op(opcode)
    except ValueError:
        raise ProgramError(f"unknown opcode {opcode}") from None
    vals = {}
    used = (1 << OPCODE_BITS) - 1
    for name, (pos, f) in field_offsets(op).items():
        v = (word >> pos) & ((1 << f.bits) - 1)
        if f.signed and v >> (f.bits - 1):
            v -= 1 << f.bits
        vals[name] = v
        used |= ((1 << f.bits) - 1) << pos
    if word & ~used:
        raise ProgramError(f"{op.name}: non-zero bits outside its fields")
    return Instruction.make(op, **vals)


# ------------------------------------------------------------------ program container

@dataclass(frozen=True)
class Segment:
    """Bytes placed at a byte address of external memory before the run (weights, inputs)."""
    addr: int
    data: bytes
    name: str = ""


_MAGIC = b"V2HP"


@dataclass
class Program:
    """Instructions (placed at ``entry`` in external memory) plus data segments."""
    instructions: list[Instruction] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    entry: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def code(self) -> bytes:
        """The instruction words, little-endian, ending with END if the list does not."""
        instrs = list(self.instructions)
        if not instrs or instrs[-1].op != Op.END:
            instrs.append(Instruction.make(Op.END))
        return b"".join(encode(i).to_bytes(INSTR_BYTES, "little") for i in instrs)

    def image(self) -> list[Segment]:
        """Everything to write into external memory: the code and the data segments."""
        segs = [Segment(self.entry, self.code(), "code")] + list(self.segments)
        spans = sorted((s.addr, s.addr + len(s.data), s.name) for s in segs)
        for (a0, a1, n0), (b0, b1, n1) in zip(spans, spans[1:]):
            if b0 < a1:
                raise ProgramError(f"segments {n0!r} [{a0:#x}, {a1:#x}) and {n1!r} overlap at {b0:#x}")
        return segs

    # -- binary: magic, version u16, entry u64, n_instr u32, n_seg u32, words, segments
    def to_bytes(self) -> bytes:
        meta = json.dumps(self.meta, sort_keys=True).encode()
        out = [_MAGIC, struct.pack("<HQII I", ISA_VERSION, self.entry, len(self.instructions),
                                   len(self.segments), len(meta)), meta]
        out += [encode(i).to_bytes(INSTR_BYTES, "little") for i in self.instructions]
        for s in self.segments:
            name = s.name.encode()
            out += [struct.pack("<QQH", s.addr, len(s.data), len(name)), name, s.data]
        return b"".join(out)

    @classmethod
    def from_bytes(cls, blob: bytes) -> "Program":
        try:
            if blob[:4] != _MAGIC:
                raise ProgramError("not a vit2hw program (bad magic)")
            ver, entry, n_i, n_s, n_meta = struct.unpack_from("<HQII I", blob, 4)
            if ver != ISA_VERSION:
                raise ProgramError(f"program ISA version {ver} unsupported (expected {ISA_VERSION})")
            pos = 4 + struct.calcsize("<HQII I")
            meta = json.loads(blob[pos:pos + n_meta].decode())
            pos += n_meta
            instrs = []
            for _ in range(n_i):
                instrs.append(decode(blob[pos:pos + INSTR_BYTES]))
                pos += INSTR_BYTES
            segs = []
            for _ in range(n_s):
                addr, n, nl = struct.unpack_from("<QQH", blob, pos)
                pos += struct.calcsize("<QQH")
                name = blob[pos:pos + nl].decode()
                pos += nl
                data = bytes(blob[pos:pos + n])
                if len(data) != n:
                    raise ProgramError("truncated segment")
                pos += n
                segs.append(Segment(addr, data, name))
        except struct.error as exc:
            raise ProgramError(f"truncated program: {exc}") from None
        if pos != len(blob):
            raise ProgramError(f"{len(blob) - pos} trailing bytes after the program")
        return cls(instrs, segs, entry, meta)

    def to_json(self) -> str:
        doc = {"format": "vit2hw.Program", "version": ISA_VERSION, "entry": self.entry,
               "meta": self.meta, "instructions": [i.to_json() for i in self.instructions],
               "segments": [{"addr": s.addr, "name": s.name,
                             "data": base64.b64encode(s.data).decode()} for s in self.segments]}
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Program":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ProgramError(f"program JSON unreadable: {exc}") from None
        if doc.get("format") != "vit2hw.Program" or doc.get("version") != ISA_VERSION:
            raise ProgramError("not a vit2hw.Program of this ISA version")
        return cls([Instruction.from_json(i) for i in doc["instructions"]],
                   [Segment(int(s["addr"]), base64.b64decode(s["data"]), s.get("name", ""))
                    for s in doc["segments"]], int(doc["entry"]), dict(doc.get("meta", {})))


# ------------------------------------------------------------------ geometry

@dataclass(frozen=True)
class Geometry:
    """Scratchpad shapes and transfer granularities of one accelerator configuration.

    Built from any object with the ``AcceleratorConfig`` attributes (duck typed, so the
    core does not import ``hdl``).
    """
    rows: int
    cols: int
    lanes: int
    bus_bytes: int
    a_depth: int   # lines per A bank
    b_depth: int   # lines per B bank
    o_depth: int
    v_depth: int
    p_depth: int
    max_channels: int
    max_tokens: int
    #: the array's PEs have the PACKED (two int4 MACs per beat) mode
    int4_packing: bool = True

    @classmethod
    def from_config(cls, config) -> "Geometry":
        wb = config.mem_bus_bits // 8
        if wb > RECORD_BYTES:
            raise ValueError(f"the accelerator top supports buses up to {RECORD_BYTES * 8} bits, "
                             f"got mem_bus_bits={config.mem_bus_bits}")
        if config.vector_lanes < wb:
            raise ValueError(f"vector_lanes ({config.vector_lanes}) must be at least the bus width in "
                             f"bytes ({wb}) so that every vector line is whole bus words")
        for name, buf, banks in (("act_buf_bytes", config.act_buf_bytes, config.rows),
                                 ("weight_buf_bytes", config.weight_buf_bytes, config.cols)):
            if buf % (banks * wb):
                raise ValueError(f"{name}={buf} is not a whole number of {banks} banks of {wb}-byte lines")
        o_depth = config.out_buf_bytes // (4 * config.cols)
        return cls(rows=config.rows, cols=config.cols, lanes=config.vector_lanes, bus_bytes=wb,
                   a_depth=config.act_buf_bytes // (config.rows * wb),
                   b_depth=config.weight_buf_bytes // (config.cols * wb),
                   o_depth=o_depth,
                   v_depth=max(16, config.out_buf_bytes // (4 * config.vector_lanes)),
                   p_depth=max(8, o_depth // 4),
                   # the LayerNorm / softmax row buffers hold whole beats of ``lanes``
                   max_channels=-(-config.max_channels // config.vector_lanes) * config.vector_lanes,
                   max_tokens=-(-config.max_tokens // config.vector_lanes) * config.vector_lanes,
                   int4_packing=bool(getattr(config, "int4_packing", True)))

    def words_per_line(self, target: Target | int, ebytes: int = 1) -> int:
        """Bus words of external memory per scratchpad line (or per constant record)."""
        t = Target(target)
        if t in (Target.A, Target.B):
            return 1
        if t == Target.V:
            return self.lanes * ebytes // self.bus_bytes
        if t == Target.O:
            return -(-self.cols * ebytes // self.bus_bytes)
        if t == Target.P:
            return self.cols * RECORD_BYTES // self.bus_bytes
        return RECORD_BYTES // self.bus_bytes

    def depth(self, target: Target | int) -> int:
        t = Target(target)
        return {Target.A: self.a_depth, Target.B: self.b_depth, Target.O: self.o_depth,
                Target.V: self.v_depth, Target.P: self.p_depth,
                Target.LN_CONST: self.max_channels, Target.RES_CONST: self.max_channels,
                Target.LUT_TABLE: 256}[t]


def store_row_words(g: Geometry, target: "Target | int", row_lines: int, ebytes: int = 1) -> int:
    """Bus words a STORE writes per row: the A lines per row of a STORE into A."""
    return row_lines * g.words_per_line(target, ebytes)


def store_words_written(g: Geometry, target: "Target | int", row_lines: int, row_elems: int,
                        ebytes: int = 1) -> int:
    """Bus words a STORE writes (and cycles it spends) per row: up to the last word holding an
    element below ``row_elems``, at least one. A row's words follow its elements in order
    (line by line, each line's lanes packed into whole words), so the words after that one
    would carry no byte strobe: the partial last column tile of a GEMM result (P·V's 64
    columns on 48-column tiles: 4 of 6 words) or the padding beat of a vector row."""
    t = Target(target)
    lanes = g.cols if t == Target.O else g.lanes
    wpl = g.words_per_line(t, ebytes)
    last = min(int(row_elems), row_lines * lanes) - 1
    if last < 0:
        return 1 if row_lines else 0
    return (last // lanes) * wpl + (last % lanes) * ebytes // g.bus_bytes + 1


# ------------------------------------------------------------------ record formats

#: requantization parameters of one output column (a P line holds ``cols`` of them)
#: (``bias1``: the odd row's bias where a GEMM's ``bias_pairs`` packs two output rows to a line)
PARAM_RECORD = np.dtype([("bias", "<i4"), ("m", "<i2"), ("s", "u1"), ("_r0", "u1"),
                         ("zp", "<i2"), ("_r1", "V2"), ("bias1", "<i4")])
#: LayerNorm constants of one channel (s: the affine shift gs)
LN_RECORD = np.dtype([("gm", "<i2"), ("alpha", "u1"), ("gs", "u1"), ("bb", "<i4"), ("_r", "V8")])
#: residual-add constants of one channel (bias: signed 40 bits used)
RES_RECORD = np.dtype([("ma", "<i2"), ("mb", "<i2"), ("s", "u1"), ("_r", "V3"), ("bias", "<i8")])
#: one lookup-table entry (entries in code order from the most negative code)
LUT_RECORD = np.dtype([("value", "<i2"), ("_r", "V14")])

for _dt in (PARAM_RECORD, LN_RECORD, RES_RECORD, LUT_RECORD):
    assert _dt.itemsize == RECORD_BYTES


#: a ``bias_quads`` P record: the biases of four consecutive output rows (24-bit, signed,
#: little-endian, row ``4i + k`` at byte ``3k``) and the column's requantization with an
#: int8 zero point; for per-token biases (the position embedding folded into the patch
#: embedding's bias) that fit, it halves the P traffic of ``bias_pairs``
PARAM_QUAD_RECORD = np.dtype([("b", "V12"), ("m", "<i2"), ("s", "u1"), ("zp", "i1")])
assert PARAM_QUAD_RECORD.itemsize == RECORD_BYTES
QUAD_BIAS_BITS = 24


def quad_biases_fit(bias, zp) -> bool:
    """Whether biases and zero points fit a :data:`PARAM_QUAD_RECORD`."""
    b, z = np.asarray(bias, np.int64), np.asarray(zp, np.int64)
    lim = 1 << (QUAD_BIAS_BITS - 1)
    return bool(b.size == 0 or (b.min() >= -lim and b.max() < lim)) and bool(z.size == 0 or (z.min() >= -128 and z.max() < 128))


def pack_quad_records(bias: np.ndarray, m, s, zp) -> bytes:
    """:data:`PARAM_QUAD_RECORD`s of ``n`` columns from ``bias`` [4, n] (the four rows) and
    per-column (or scalar) ``m``, ``s``, ``zp``."""
    bias = np.asarray(bias, np.int64)
    if bias.ndim != 2 or bias.shape[0] != 4:
        raise ProgramError("quad records need biases of shape [4, n]")
    n = bias.shape[1]
    if not quad_biases_fit(bias, zp):
        raise ProgramError(f"quad records need {QUAD_BIAS_BITS}-bit biases and int8 zero points")
    raw = np.frombuffer(pack_records(PARAM_QUAD_RECORD, n, m=m, s=s, zp=zp), np.uint8).reshape(n, RECORD_BYTES).copy()
    u = bias & ((1 << QUAD_BIAS_BITS) - 1)
    for k in range(4):
        for j in range(3):
            raw[:, 3 * k + j] = (u[k] >> (8 * j)) & 0xFF
    return raw.tobytes()


def unpack_quad_records(raw: np.ndarray) -> dict[str, np.ndarray]:
    """``bias`` [..., 4] and ``m``, ``s``, ``zp`` [...] of :data:`PARAM_QUAD_RECORD` bytes
    ``raw`` [..., 16]."""
    raw = np.asarray(raw, np.uint8).astype(np.int64)
    b = raw[..., 0:12].reshape(raw.shape[:-1] + (4, 3))
    u = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    bias = u - ((u >> (QUAD_BIAS_BITS - 1)) << QUAD_BIAS_BITS)
    m = raw[..., 12] | (raw[..., 13] << 8)
    return {"bias": bias, "m": m - ((m >> 15) << 16), "s": raw[..., 14] & 63, "zp": raw[..., 15] - ((raw[..., 15] >> 7) << 8)}


def pack_records(dtype: np.dtype, n: int | None = None, **columns) -> bytes:
    """Records of ``dtype`` from equal-length integer columns (``n`` broadcasts scalars)."""
    arrays = {k: np.atleast_1d(np.asarray(v, np.int64)) for k, v in columns.items()}
    if n is None:
        n = max(len(a) for a in arrays.values())
    rec = np.zeros(n, dtype)
    for k, a in arrays.items():
        info = np.iinfo(dtype[k]) if k != "bias" or dtype is not RES_RECORD else None
        lo, hi = (info.min, info.max) if info else (-(1 << 39), (1 << 39) - 1)
        if a.size and (a.min() < lo or a.max() > hi):
            raise ProgramError(f"record field {k} out of range [{lo}, {hi}]")
        rec[k] = np.broadcast_to(a, (n,))
    return rec.tobytes()


def pack_rows(x: np.ndarray, ebytes: int, row_bytes: int) -> bytes:
    """A 2-D integer matrix as rows of ``ebytes``-byte little-endian elements, each row
    zero-padded to ``row_bytes`` (values must fit the element width)."""
    x = np.asarray(x, np.int64)
    if x.ndim != 2:
        raise ProgramError("pack_rows needs a 2-D matrix")
    lo, hi = -(1 << (8 * ebytes - 1)), (1 << (8 * ebytes)) - 1
    if x.size and (x.min() < lo or x.max() > hi):
        raise ProgramError(f"values do not fit {ebytes}-byte elements")
    if x.shape[1] * ebytes > row_bytes:
        raise ProgramError("row_bytes shorter than a row")
    dt = {1: "<u1", 2: "<u2", 4: "<u4"}[ebytes]
    out = np.zeros((x.shape[0], row_bytes), np.uint8)
    raw = (x & ((1 << (8 * ebytes)) - 1)).astype(dt).view(np.uint8).reshape(x.shape[0], -1)
    out[:, :raw.shape[1]] = raw
    return out.tobytes()


def unpack_rows(blob: bytes, rows: int, cols: int, ebytes: int, row_bytes: int,
                signed: bool = True) -> np.ndarray:
    """Inverse of :func:`pack_rows`."""
    a = np.frombuffer(bytes(blob[:rows * row_bytes]), np.uint8).reshape(rows, row_bytes)
    a = np.ascontiguousarray(a[:, :cols * ebytes])
    dt = {1: "<i1", 2: "<i2", 4: "<i4"}[ebytes] if signed else {1: "<u1", 2: "<u2", 4: "<u4"}[ebytes]
    return a.view(dt).reshape(rows, cols).astype(np.int64)


def _log2_bytes(ebytes: int) -> int:
    if ebytes not in (1, 2, 4):
        raise ProgramError(f"element width must be 1, 2 or 4 bytes, got {ebytes}")
    return ebytes.bit_length() - 1


# ------------------------------------------------------------------ assembler

class Assembler:
    """Builds a :class:`Program` instruction by instruction, checking sizes against a Geometry.

    Addresses of external memory are bytes (word aligned); scratchpad addresses are lines.
    """

    def __init__(self, geometry: Geometry, entry: int = 0):
        self.g = geometry
        self.program = Program(entry=entry)

    def emit(self, op: Op | str, **fields: int) -> Instruction:
        instr = Instruction.make(op, **fields)
        self.program.instructions.append(instr)
        return instr

    def data(self, addr: int, blob: bytes, name: str = "") -> int:
        if addr % self.g.bus_bytes:
            raise ProgramError(f"segment {name!r} at {addr:#x} is not bus-word aligned")
        self.program.segments.append(Segment(addr, bytes(blob), name))
        return addr

    def _check_ext(self, addr: int, stride: int) -> None:
        wb = self.g.bus_bytes
        if addr % wb or stride % wb:
            raise ProgramError(f"external address {addr:#x} / stride {stride} not multiples of {wb}")

    def load(self, target: Target, ext_addr: int, rows: int, row_lines: int, spad_addr: int,
             ext_stride: int | None = None, ebytes: int = 1, on_dma: bool = False) -> Instruction:
        """Copy ``rows`` × ``row_lines`` lines from external memory (rows ``ext_stride`` apart);
        ``on_dma``: a LOAD into B or P runs on the DMA engine instead of the weight DMA."""
        if on_dma and Target(target) not in DMA_CAPABLE:
            raise ProgramError(f"on_dma is for LOADs into {sorted(t.name for t in DMA_CAPABLE)}, "
                               f"not {Target(target).name}")
        wpl = self.g.words_per_line(target, ebytes)
        if ext_stride is None:
            ext_stride = row_lines * wpl * self.g.bus_bytes
        self._check_ext(ext_addr, ext_stride)
        if target in (Target.A, Target.B):
            banks = self.g.rows if target == Target.A else self.g.cols
            last = spad_addr + (-(-rows // banks)) * row_lines
        else:
            last = spad_addr + rows * row_lines
        if target == Target.O:
            raise ProgramError("the O scratchpad is written by GEMM only")
        if last > self.g.depth(target):
            raise ProgramError(f"LOAD into {Target(target).name} ends at line {last} > depth {self.g.depth(target)}")
        return self.emit(Op.LOAD, target=int(target), ebytes_log2=_log2_bytes(ebytes), ext_addr=ext_addr,
                         ext_stride=ext_stride, rows=rows, row_lines=row_lines, spad_addr=spad_addr,
                         on_dma=int(on_dma))

    def load_const(self, target: Target, ext_addr: int, count: int, index: int = 0) -> Instruction:
        """Load ``count`` 16-byte records into a unit's constant memory from entry ``index``."""
        if target not in (Target.LN_CONST, Target.RES_CONST, Target.LUT_TABLE):
            raise ProgramError(f"{target} is not a constant memory")
        return self.load(target, ext_addr, count, 1, index, ext_stride=RECORD_BYTES)

    def store(self, target: Target, ext_addr: int, rows: int, row_lines: int, spad_addr: int,
              row_elems: int, ext_stride: int | None = None, ebytes: int = 1) -> Instruction:
        """Write ``rows`` × ``row_lines`` lines of O or V, narrowed to ``ebytes`` per element;
        elements at index ``>= row_elems`` of a row are not written (byte strobes off)."""
        if target not in (Target.O, Target.V):
            raise ProgramError("STORE reads the O or V scratchpad")
        wpl = self.g.words_per_line(target, ebytes)
        if ext_stride is None:
            ext_stride = row_lines * wpl * self.g.bus_bytes
        self._check_ext(ext_addr, ext_stride)
        return self.emit(Op.STORE, target=int(target), ebytes_log2=_log2_bytes(ebytes), ext_addr=ext_addr,
                         ext_stride=ext_stride, rows=rows, row_lines=row_lines, spad_addr=spad_addr,
                         row_elems=row_elems)

    def store_to_a(self, target: Target, rows: int, row_lines: int, spad_addr: int, row_elems: int,
                   a_addr: int, ebytes: int = 1) -> Instruction:
        """STORE ``rows`` × ``row_lines`` lines of O or V into A instead of external memory: the
        words a STORE would write for row ``i`` become A lines ``a_addr + (i // rows_of_array) ·
        w + j`` of bank ``i % rows_of_array`` (``w`` = :func:`store_row_words`), as a LOAD of
        them into A would place them; bytes of elements ``>= row_elems`` are zero."""
        if target not in (Target.O, Target.V):
            raise ProgramError("STORE reads the O or V scratchpad")
        w = store_row_words(self.g, target, row_lines, ebytes)
        last = a_addr + -(-rows // self.g.rows) * w
        if last > self.g.a_depth:
            raise ProgramError(f"STORE into A ends at line {last} > depth {self.g.a_depth}")
        return self.emit(Op.STORE, target=int(target), ebytes_log2=_log2_bytes(ebytes), rows=rows,
                         row_lines=row_lines, spad_addr=spad_addr, row_elems=row_elems, dst_a=1,
                         a_addr=a_addr)

    def gemm(self, m: int, n: int, k_beats: int, a_addr: int, b_addr: int, o_addr: int, p_addr: int,
             out_bits: int = 8, out_signed: bool = True, mode: GemmMode = GemmMode.MUL8,
             a_unsigned: bool = False, bypass: bool = False, bias_per_row: bool = False,
             a_row_lines: int | None = None, b_row_lines: int | None = None,
             lut_bits: int = 0, row_params: bool = False, bias_pairs: bool = False,
             bias_quads: bool = False) -> Instruction:
        """``Y[m, n] = requant(A[m, k] @ B[k, n])`` tiled over the array; O line of (row i, tile j)
        is ``o_addr + i * n_tiles + j``. ``lut_bits`` > 0: every requantized ``lut_bits``-bit
        code is then looked up in LUT_TABLE (``intops.apply_lut``) on its way into O.
        ``row_params``: output row ``r`` uses record ``r % cols`` of P line ``p_addr + r // cols``
        in every column (per-row requantization; one column tile). ``bias_pairs`` (with
        ``bias_per_row``, an even number of array rows): output rows ``2i`` and ``2i + 1`` share
        P line ``p_addr + i·n_tiles + j``, the odd row taking its bias from ``bias1``, which
        halves the parameter traffic of a per-token bias. ``bias_quads`` (with ``bias_per_row``,
        a multiple of four array rows): output rows ``4i .. 4i+3`` share P line ``p_addr +
        i·n_tiles + j`` of :data:`PARAM_QUAD_RECORD`s, half the traffic again."""
        g = self.g
        if GemmMode(mode) == GemmMode.PACKED and not g.int4_packing:
            raise ProgramError("GEMM mode PACKED needs an array built with int4_packing "
                               "(this configuration's PEs are DSP-slice MACs without it)")
        if row_params and (bias_per_row or -(-n // g.cols) != 1):
            raise ProgramError("GEMM row_params needs a single column tile and no bias_per_row")
        if bias_pairs and (not bias_per_row or g.rows % 2):
            raise ProgramError(f"GEMM bias_pairs needs bias_per_row and an even number of array rows "
                               f"(this array has {g.rows})")
        if bias_quads and (not bias_per_row or bias_pairs or g.rows % 4):
            raise ProgramError(f"GEMM bias_quads needs bias_per_row, not bias_pairs, and a multiple of four array "
                               f"rows (this array has {g.rows})")
        if lut_bits and (bypass or out_bits != lut_bits or not out_signed or lut_bits > 8):
            raise ProgramError(f"GEMM table lookup needs signed requantized outputs of its {lut_bits} "
                               f"input bits (<= 8), got out_bits={out_bits} signed={out_signed} bypass={bypass}")
        lines = -(-k_beats // g.bus_bytes)
        mt, nt = -(-m // g.rows), -(-n // g.cols)
        if mt * g.rows * nt + o_addr > g.o_depth:
            raise ProgramError(f"GEMM output ({mt * g.rows * nt} lines at {o_addr}) exceeds O depth {g.o_depth}")
        return self.emit(Op.GEMM, mode=int(mode), a_unsigned=int(a_unsigned), out_bits=out_bits,
                         out_signed=int(out_signed), bypass=int(bypass), bias_per_row=int(bias_per_row),
                         m_tiles=mt, n_tiles=nt, k_beats=k_beats,
                         a_addr=a_addr, a_row_lines=lines if a_row_lines is None else a_row_lines,
                         b_addr=b_addr, b_row_lines=lines if b_row_lines is None else b_row_lines,
                         o_addr=o_addr, p_addr=p_addr, lut=int(lut_bits > 0), lut_bits=lut_bits,
                         row_params=int(row_params), bias_pairs=int(bias_pairs), bias_quads=int(bias_quads))

    def layernorm(self, src: int, dst: int, rows: int, channels: int, out_bits: int,
                  out_zp: int = 0) -> Instruction:
        if channels % self.g.lanes:
            raise ProgramError(f"LayerNorm channels {channels} not a multiple of {self.g.lanes} lanes")
        return self.emit(Op.LAYERNORM, src=src, dst=dst, rows=rows, channels=channels,
                         out_bits=out_bits, out_zp=out_zp)

    def softmax(self, src: int, dst: int, rows: int, length: int,
                mode: SoftmaxMode = SoftmaxMode.LOG2, src_row_lines: int = 0,
                a_addr: int | None = None) -> Instruction:
        """Softmax of ``rows`` rows of ``length`` scores into V from line ``dst``. The scores come
        from V lines ``src`` on (``ceil(length/lanes)`` per row) or, with ``src_row_lines`` > 0,
        straight from O: row ``i`` is the lanes of O lines ``src + i·src_row_lines`` on, in order
        (a GEMM's int16 scores, read where the array left them).

        With ``a_addr`` the probabilities go into A instead of V (``dst`` unused): the low byte
        of each output lane, a beat to a line, row ``i``'s ``w = ceil(length/lanes)`` lines at
        ``a_addr + (i // rows_of_array)·w`` of bank ``i % rows_of_array`` — where a STORE of the
        V lines into A (:meth:`store_to_a`, one byte per element) would put them, except that
        the padding lanes of a row's last line keep the unit's padding output instead of zero."""
        g = self.g
        if length > g.max_tokens:
            raise ProgramError(f"softmax rows of {length} exceed the unit's {g.max_tokens}")
        if src_row_lines:
            if g.cols % g.lanes:
                raise ProgramError(f"SOFTMAX from O needs the array's {g.cols} columns to be a multiple "
                                   f"of the {g.lanes} lanes")
            if src_row_lines * g.cols < length:
                raise ProgramError(f"SOFTMAX from O: rows of {length} scores need more than "
                                   f"{src_row_lines} O lines of {g.cols}")
            if src + rows * src_row_lines > g.o_depth:
                raise ProgramError(f"SOFTMAX from O reads past O's {g.o_depth} lines")
        if a_addr is not None:
            if g.lanes != g.bus_bytes:
                raise ProgramError(f"SOFTMAX into A needs the {g.lanes} vector lanes to fill one "
                                   f"{g.bus_bytes}-byte A line a beat")
            last = a_addr + -(-rows // g.rows) * -(-length // g.lanes)
            if last > g.a_depth:
                raise ProgramError(f"SOFTMAX into A ends at line {last} > depth {g.a_depth}")
        return self.emit(Op.SOFTMAX, src=src, dst=dst, rows=rows, length=length, mode=int(mode),
                         src_o=int(src_row_lines > 0), src_row_lines=src_row_lines,
                         dst_a=int(a_addr is not None), a_addr=a_addr or 0)

    def lut(self, src: int, dst: int, lines: int, lut_bits: int = 8) -> Instruction:
        return self.emit(Op.LUT, src=src, dst=dst, lines=lines, lut_bits=lut_bits)

    def residual_add(self, src_a: int, src_b: int, dst: int, lines: int, channels: int,
                     out_bits: int, out_zp: int = 0) -> Instruction:
        return self.emit(Op.RESIDUAL_ADD, src_a=src_a, src_b=src_b, dst=dst, lines=lines,
                         channels=channels, out_bits=out_bits, out_zp=out_zp)

    def move(self, src: int, dst: int, rows: int, src_row_lines: int, dst_row_lines: int) -> Instruction:
        """Copy ``rows`` rows of O (``src_row_lines`` lines of ``cols`` int32 lanes each, from
        line ``src``) into V: row ``i``'s lanes, in order, fill ``dst_row_lines`` V lines from
        ``dst + i·dst_row_lines`` (lanes past them are dropped)."""
        g = self.g
        if g.cols % g.lanes:
            raise ProgramError(f"MOVE needs the array's {g.cols} columns to be a multiple of the "
                               f"{g.lanes} vector lanes")
        if dst_row_lines > src_row_lines * (g.cols // g.lanes):
            raise ProgramError(f"MOVE: {dst_row_lines} V lines per row exceed the {src_row_lines} O lines given")
        if src + rows * src_row_lines > g.o_depth or dst + rows * dst_row_lines > g.v_depth:
            raise ProgramError("MOVE runs past the end of O or V")
        return self.emit(Op.MOVE, src=src, dst=dst, rows=rows, src_row_lines=src_row_lines,
                         dst_row_lines=dst_row_lines)

    def fence(self) -> Instruction:
        return self.emit(Op.FENCE)

    def end(self) -> Program:
        """Append END and set every instruction's ``wait`` field (:func:`vit2hw.hazards.assign_waits`)."""
        from vit2hw.hazards import assign_waits     # hazards builds on this module
        self.emit(Op.END)
        self.program.instructions = assign_waits(self.program.instructions, self.g)
        return self.program
