"""Output-stationary systolic array: C[R x C] = A[R x K] @ B[K x C] with K streamed in.

Dataflow
--------
Each PE (see :mod:`hdl.pe`) keeps one 32-bit accumulator of the output tile, so any K
streams through without partial-sum traffic. One input beat carries one column of A
(``R`` lanes) and one row of B (``C`` lanes); the array skews them internally (A lane of
physical row ``p`` is delayed ``p`` cycles, B lane ``j`` is delayed ``j`` cycles), so
the producer presents plain, unskewed vectors.

Tile logical row ``r`` sits on physical row ``p = R-1-r``: the bottom row finishes
first and drains first, so rows leave in order ``0, 1, ..., R-1``.

Overlapped drain
----------------
Every PE has a shadow register that captures its accumulator the cycle the tile's last
term lands (``done``); the shadow registers of a column then shift down one row per cycle
into a per-column deskew delay, while the accumulators already work on the next tile.
A row ``p`` shadow only shifts during the first ``p`` drain steps, so the next tile's
captures never collide with the drain as long as consecutive tiles' ``last`` beats are at
least ``R`` cycles apart. The array enforces that by holding ``i.ready`` low for a
``last`` beat that would come too early; tiles with ``K >= R`` beats never stall, which
is 100 % steady-state utilization.

Cycle model
-----------
With the input offered every cycle and no back-pressure, a sequence of ``T`` tiles of
``beats`` beats each (``beats = K`` in ``MUL8``/``SHIFT`` mode, ``ceil(K/2)`` in
``PACKED`` mode) takes, from the first accepted beat to the last output row inclusive::

    tile_cycles = beats + (T - 1) * max(beats, R) + 2*R + C + 1

The first output row of a tile whose last beat was accepted in cycle ``L`` appears in
cycle ``L + R + C + 2`` (``FIRST_ROW_LATENCY``); its rows follow on consecutive cycles:
the skew puts the last term of PE (R-1, C-1) ``R + C - 2`` cycles after the beat, the
PE adds ``PE_LATENCY = 3`` and the shadow register one more.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .pe import PE, PE_LATENCY, Mode, check_pe_params, ctl_layout

__all__ = ["SystolicArray", "input_layout", "output_layout", "drain_signature", "tile_cycles", "tile_beats",
           "first_row_latency", "DRAIN_OFFSET", "Mode"]

#: cycles beyond ``R + C`` from a tile's last accepted beat to its first output row
DRAIN_OFFSET = PE_LATENCY - 1


def first_row_latency(rows: int, cols: int) -> int:
    """Cycles from a tile's last accepted beat to its first output row."""
    return rows + cols + DRAIN_OFFSET


def tile_beats(k: int, mode: Mode | int | str = Mode.MUL8) -> int:
    """Input beats of one tile of depth ``k`` (packed mode consumes K two at a time)."""
    if k < 1:
        raise ValueError(f"tile depth k must be positive, got {k}")
    return (k + 1) // 2 if _mode(mode) == Mode.PACKED else k


def tile_cycles(rows: int, cols: int, k: int, n_tiles: int = 1,
                mode: Mode | int | str = Mode.MUL8) -> int:
    """Exact RTL cycles of ``n_tiles`` back-to-back tiles of depth ``k``.

    Counted from the cycle the first beat is accepted to the cycle the last output row
    is valid, both inclusive, with the input offered every cycle and the output drained
    every cycle (it has no back-pressure).
    """
    if rows < 1 or cols < 1 or n_tiles < 1:
        raise ValueError(f"rows, cols and n_tiles must be positive, got {rows}, {cols}, {n_tiles}")
    beats = tile_beats(k, mode)
    last_beat = beats - 1 + (n_tiles - 1) * max(beats, rows)
    return last_beat + first_row_latency(rows, cols) + rows


def _mode(mode: Mode | int | str) -> Mode:
    if isinstance(mode, str):
        try:
            return Mode[mode.upper()]
        except KeyError:
            raise ValueError(f"unknown array mode {mode!r}; one of {[m.name for m in Mode]}") from None
    return Mode(mode)


def _index_bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


def drain_signature(payload_shape) -> wiring.Signature:
    """A valid-only stream (no back-pressure), as seen by its source."""
    return wiring.Signature({"valid": Out(1), "payload": Out(payload_shape)})


def input_layout(rows: int, cols: int, lane: int = 8, tag_bits: int = 8) -> data.StructLayout:
    """Payload of one input beat: column ``k`` of A, row ``k`` of B and the tile's control."""
    return data.StructLayout({
        "a": data.ArrayLayout(lane, rows),
        "b": data.ArrayLayout(lane, cols),
        "first": 1,
        "last": 1,
        "mode": Mode,
        "a_unsigned": 1,
        "tag": tag_bits,
    })


def output_layout(rows: int, cols: int, acc_bits: int = 32, tag_bits: int = 8) -> data.StructLayout:
    """Payload of one output beat: one row of the finished tile."""
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(acc_bits), cols),
        "row": _index_bits(rows),
        "first": 1,
        "last": 1,
        "tag": tag_bits,
    })


class SystolicArray(wiring.Component):
    """``rows x cols`` output-stationary PE array with overlapped drain.

    Parameters
    ----------
    rows, cols : int
        Array shape R x C (output tile shape).
    lane : int
        Operand lane width (8: signed/unsigned int8, or two int4 in packed mode).
    acc_bits : int
        Accumulator width (32).
    tag_bits : int
        Width of the opaque tile tag carried from a tile's ``last`` beat to its output rows.
    int4_packing : bool
        PEs with the ``PACKED`` mode, or DSP-slice MACs without it (:class:`~hdl.pe.PE`).

    Members
    -------
    i : In(stream.Signature(input_layout(...)))
        One beat per handshake: ``a[r]`` = A[r, k], ``b[c]`` = B[k, c]. ``first`` marks a
        tile's first beat, ``last`` its last (both on a one-beat tile); ``mode`` and
        ``a_unsigned`` must be constant within a tile; ``tag`` is sampled on the ``last``
        beat. ``ready`` is low only for a ``last`` beat arriving fewer than ``rows`` cycles
        after the previous accepted ``last`` beat.
    o : Out(drain_signature(output_layout(...)))
        One row of a finished tile per cycle, rows ``0..R-1`` in order, ``first``/``last``
        on rows 0 and R-1, with the tile's ``tag``. No back-pressure (there is no ``ready``):
        the consumer takes a row every cycle ``o.valid`` is high.
    busy : Out(1)
        A tile has been accepted (its ``last`` beat) but not fully drained.
    """

    def __init__(self, rows: int, cols: int, lane: int = 8, acc_bits: int = 32, tag_bits: int = 8,
                 int4_packing: bool = True):
        if rows < 1 or cols < 1:
            raise ValueError(f"array shape must be positive, got {rows}x{cols}")
        if tag_bits < 1:
            raise ValueError("tag_bits must be at least 1")
        check_pe_params(lane, acc_bits)
        self.rows, self.cols = rows, cols
        self.lane, self.acc_bits, self.tag_bits = lane, acc_bits, tag_bits
        self.int4_packing = bool(int4_packing)
        super().__init__({
            "i": In(stream.Signature(input_layout(rows, cols, lane, tag_bits))),
            "o": Out(drain_signature(output_layout(rows, cols, acc_bits, tag_bits))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols
        p_in = self.i.payload

        accept = Signal()
        m.d.comb += accept.eq(self.i.valid & self.i.ready)

        # --- last-beat spacing: a tile's captures must not overtake the previous drain
        since_last = Signal(range(R + 1), init=R)
        m.d.comb += self.i.ready.eq(~p_in.last | (since_last >= R))
        with m.If(accept & p_in.last):
            m.d.sync += since_last.eq(1)
        with m.Elif(since_last < R):
            m.d.sync += since_last.eq(since_last + 1)

        ctl = Signal(ctl_layout())
        m.d.comb += [
            ctl.valid.eq(accept),
            ctl.first.eq(p_in.first),
            ctl.last.eq(p_in.last),
            ctl.mode.eq(p_in.mode),
            ctl.a_unsigned.eq(p_in.a_unsigned),
        ]

        # --- input skew: physical row p (logical row R-1-p) and column j wait p / j cycles
        def delayed(value, n, name, shape=None):
            cur = value
            for s in range(n):
                nxt = Signal(shape if shape is not None else value.shape(), name=f"{name}_d{s + 1}")
                m.d.sync += nxt.eq(cur)
                cur = nxt
            return cur

        pes = [[PE(self.lane, self.acc_bits, self.int4_packing) for _ in range(C)] for _ in range(R)]
        for p in range(R):
            for j in range(C):
                m.submodules[f"pe_{p}_{j}"] = pes[p][j]
        for p in range(R):
            a_lane = Signal(self.lane, name=f"a_row{p}")
            m.d.comb += a_lane.eq(p_in.a[R - 1 - p])
            m.d.comb += [
                pes[p][0].a_in.eq(delayed(a_lane, p, f"askew{p}")),
                pes[p][0].ctl_in.eq(delayed(ctl, p, f"cskew{p}", ctl_layout())),
            ]
            for j in range(1, C):
                m.d.comb += [
                    pes[p][j].a_in.eq(pes[p][j - 1].a_out),
                    pes[p][j].ctl_in.eq(pes[p][j - 1].ctl_out),
                ]
        for j in range(C):
            b_lane = Signal(self.lane, name=f"b_col{j}")
            m.d.comb += b_lane.eq(p_in.b[j])
            m.d.comb += pes[0][j].b_in.eq(delayed(b_lane, j, f"bskew{j}"))
            for p in range(1, R):
                m.d.comb += pes[p][j].b_in.eq(pes[p - 1][j].b_out)

        # --- shadow chains: capture on done, shift down during the drain, deskew
        drained = []
        for j in range(C):
            start = pes[R - 1][j].done
            shadow = [Signal(signed(self.acc_bits), name=f"shadow_{p}_{j}") for p in range(R)]
            shift_en = [Signal(name=f"shift_{p}_{j}") for p in range(R)]
            for p in range(R):
                # row p loads from above during drain steps 1..p
                with m.If(start):
                    m.d.sync += shift_en[p].eq(p >= 1)
                with m.Else():
                    m.d.sync += shift_en[p].eq(shift_en[p - 1] if p >= 1 else 0)
                with m.If(pes[p][j].done):
                    m.d.sync += shadow[p].eq(pes[p][j].acc)
                if p >= 1:
                    with m.Elif(shift_en[p]):
                        m.d.sync += shadow[p].eq(shadow[p - 1])
            drained.append(delayed(shadow[R - 1], C - 1 - j, f"deskew{j}"))

        # --- drain control, timed by the last column's capture
        tag_delay = (R - 1) + (C - 1) + PE_LATENCY
        tag_at_start = delayed(p_in.tag, tag_delay, "tagline")
        start = pes[R - 1][C - 1].done
        row = Signal(range(max(R, 2)))
        valid = Signal()
        tag = Signal(self.tag_bits)
        with m.If(start):
            m.d.sync += [valid.eq(1), row.eq(0), tag.eq(tag_at_start)]
        with m.Elif(valid):
            with m.If(row == R - 1):
                m.d.sync += valid.eq(0)
            with m.Else():
                m.d.sync += row.eq(row + 1)
        po = self.o.payload
        m.d.comb += [
            self.o.valid.eq(valid),
            po.row.eq(row),
            po.first.eq(row == 0),
            po.last.eq(row == R - 1),
            po.tag.eq(tag),
        ]
        for j in range(C):
            m.d.comb += po.acc[j].eq(drained[j])

        # --- tiles in flight (accepted last beat, last row not yet out)
        depth = (tag_delay + 2 * R) // max(R, 1) + 2
        inflight = Signal(range(depth + 1))
        inc = accept & p_in.last
        dec = valid & (row == R - 1)
        with m.If(inc & ~dec):
            m.d.sync += inflight.eq(inflight + 1)
        with m.Elif(dec & ~inc):
            m.d.sync += inflight.eq(inflight - 1)
        m.d.comb += self.busy.eq(inflight != 0)
        return m
