"""cocotb testbench of ``hdl.requant.Requantizer`` against ``intops.requantize``.

Parameters (``tb_params``): ``cols``, ``user_bits``, ``seed``.

Rows stream in one per cycle (with gaps); every output lane must equal
``intops.requantize(acc, m, s, out_bits, out_signed, zp, bias)`` (or ``acc + bias`` in
bypass), ``REQUANT_LATENCY`` cycles after its row, with its ``user`` bits. The vectors
cover random values, saturation at both ends, the extreme product
``(-2**31) * (-2**15)``, shifts 0, 1, 47, 48 and 62, and every output width.
"""

from __future__ import annotations

import cocotb
import numpy as np
from amaranth.hdl import Shape
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

from hdl.requant import REQUANT_LATENCY, column_params_layout, requant_input_layout, requant_output_layout
from hdl.vecops import pack_lanes, pack_struct, unpack_lanes
from sim.runner import tb_params
from vit2hw import intops

I32 = intops.int_range(32)


def _row(rng, cols, kind):
    """One row's values and parameters; ``kind`` picks random or an edge case."""
    out_signed = bool(rng.integers(0, 2))
    out_bits = int(rng.integers(1, 33 if out_signed else 32))
    acc = rng.integers(I32[0], I32[1] + 1, size=cols)
    bias = rng.integers(-(1 << 20), 1 << 20, size=cols)
    m = rng.integers(-(1 << 15), 1 << 15, size=cols)
    s = rng.integers(0, 48, size=cols)
    zp = rng.integers(-(1 << 15), 1 << 15, size=cols)
    if kind == "typical":  # int8 outputs from realistic accumulators: mostly unsaturated
        out_signed, out_bits = True, int(rng.choice([4, 6, 8, 16]))
        acc = rng.integers(-(1 << 18), 1 << 18, size=cols)
        s = rng.integers(14, 30, size=cols)
        zp = rng.integers(-8, 8, size=cols)
    elif kind == "extreme":
        acc = np.full(cols, I32[0]) - 0
        bias = np.zeros(cols, np.int64)
        m = np.full(cols, -(1 << 15))
        s = rng.choice([0, 1, 46, 47, 48, 62], size=cols)
        out_signed, out_bits = True, 32
    elif kind == "saturate":
        m = np.where(rng.integers(0, 2, size=cols) == 1, (1 << 15) - 1, -(1 << 15))
        s = rng.integers(0, 8, size=cols)
    # keep acc + bias within 32 bits, as the contract requires
    acc = np.clip(acc + bias, I32[0], I32[1]) - bias
    return {"acc": acc, "bias": bias, "m": m, "s": s, "zp": zp,
            "out_bits": out_bits, "out_signed": out_signed,
            "bypass": kind == "bypass" or (kind == "random" and rng.random() < 0.1)}


def _expected(row):
    if row["bypass"]:
        return (row["acc"] + row["bias"]).tolist()
    return intops.requantize(row["acc"], row["m"], row["s"], row["out_bits"], row["out_signed"],
                             row["zp"], row["bias"]).tolist()


def _pack(row, cols, user_bits, user):
    col_layout = column_params_layout()
    col_bits = Shape.cast(col_layout).width
    params = [pack_struct(col_layout, {"bias": int(row["bias"][c]), "m": int(row["m"][c]),
                                       "s": int(row["s"][c]), "zp": int(row["zp"][c])})
              for c in range(cols)]
    return pack_struct(requant_input_layout(cols, 32, user_bits), {
        "acc": pack_lanes(row["acc"], 32), "col": pack_lanes(params, col_bits),
        "out_bits": row["out_bits"], "out_signed": int(row["out_signed"]),
        "bypass": int(row["bypass"]), "user": user,
    })


@cocotb.test()
async def requant_matches_intops(dut):
    """Every lane equals intops.requantize (or the raw sum in bypass) after REQUANT_LATENCY cycles."""
    p = tb_params()
    cols, user_bits = p["cols"], p.get("user_bits", 4)
    rng = np.random.default_rng(p.get("seed", 1))
    kinds = ["random"] * 40 + ["typical"] * 40 + ["extreme"] * 6 + ["saturate"] * 10 + ["bypass"] * 4
    rows = [_row(rng, cols, k) for k in kinds]
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    users = [int(rng.integers(0, 1 << user_bits)) for _ in rows]

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.i__payload.value = 0
    for _ in range(2):
        await FallingEdge(dut.clk)
    dut.rst.value = 0

    out_layout = requant_output_layout(cols, user_bits)
    user_off = out_layout["user"].offset
    sent, got = [], []
    idx, cycle = 0, 0
    while len(got) < len(rows):
        await FallingEdge(dut.clk)
        send = idx < len(rows) and rng.random() >= 0.2
        dut.i__valid.value = int(send)
        if send:
            dut.i__payload.value = _pack(rows[idx], cols, user_bits, users[idx])
            sent.append(cycle)
            idx += 1
        await ReadOnly()
        if int(dut.o__valid.value):
            word = dut.o__payload.value.to_unsigned()
            got.append((cycle, unpack_lanes(word, 32, cols), (word >> user_off) & ((1 << user_bits) - 1)))
        cycle += 1
        assert cycle < 4 * len(rows) + 50, "requantizer lost rows"
    for n, (row, (c, y, user)) in enumerate(zip(rows, got)):
        assert c - sent[n] == REQUANT_LATENCY, f"row {n}: latency {c - sent[n]}"
        assert user == users[n], f"row {n}: user {user} != {users[n]}"
        want = _expected(row)
        assert y == want, (f"row {n} (bits={row['out_bits']} signed={row['out_signed']} "
                           f"bypass={row['bypass']}): got {y}, want {want}; s={row['s'].tolist()}")
