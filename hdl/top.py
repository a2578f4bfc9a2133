"""The accelerator top level: scratchpads, DMA engines, compute engines and the sequencer.

``Accelerator(config)`` has three external memory ports with the bus of :mod:`hdl.dma`, all
views of one memory: ``mem`` for the DMA engine (LOADs of activations into A and V, every
STORE but those into A, which stay on chip, and the LOADs into B or P a program hands it with
``on_dma``), ``wmem`` (read only) for the weight DMA engine (LOADs of weights, parameters and
constants into B, P and the constant memories) and ``imem`` (read only) for instruction
fetches. So weights stream in while activations move, and the sequencer fetches the next
instruction while transfers run (programs never write their own instructions). The control
interface:

========== ====== =========================================================================
``start``  In(1)  pulse: run the program whose first instruction is at byte ``prog_addr``
``prog_addr`` In(32) byte address of the program (32-byte aligned)
``busy``   Out(1) the program is running
``done``   Out(1) END was reached (stays high until the next ``start``)
``error``  Out(1) the program stopped at an unknown opcode
``cycles`` Out(32) cycles of the last run (``vit2hw.cyclemodel.program_cycles`` predicts it)
========== ====== =========================================================================

Verilog ports: ``clk``, ``rst`` (synchronous, active high), ``start``, ``prog_addr``,
``busy``, ``done``, ``error``, ``cycles``, ``mem__req_valid``, ``mem__req_ready``,
``mem__req_addr``, ``mem__req_we``, ``mem__req_wdata``, ``mem__req_wstrb``,
``mem__resp_valid``, ``mem__resp_rdata`` and the same ``wmem__*`` and ``imem__*``
(their ``req_we`` is always low). The ISA is in ``docs/isa.md``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from vit2hw.isa import Engine, Geometry, Op, RECORD_BYTES, Target

from .controller import Controller, GemmEngine, VectorEngine, view
from .dma import ADDR_BITS, BusMux, Fetcher, LoadEngine, StoreEngine, mem_bus_signature
from .scratchpad import Scratchpad, SplitScratchpad

__all__ = ["Accelerator"]


class Accelerator(wiring.Component):
    """The whole accelerator for one ``AcceleratorConfig`` (see the module docstring)."""

    def __init__(self, config):
        self.config = config
        self.geometry = Geometry.from_config(config)
        super().__init__({
            "start": In(1), "prog_addr": In(ADDR_BITS),
            "busy": Out(1), "done": Out(1), "error": Out(1), "cycles": Out(32),
            "mem": Out(mem_bus_signature(config.mem_bus_bits)),
            "wmem": Out(mem_bus_signature(config.mem_bus_bits)),
            "imem": Out(mem_bus_signature(config.mem_bus_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        g, cfg = self.geometry, self.config
        wbits = g.bus_bytes * 8
        rec = RECORD_BYTES * 8

        m.submodules.spad_a = sa = Scratchpad(wbits, g.a_depth, g.rows, 1)
        m.submodules.spad_b = sb = Scratchpad(wbits, g.b_depth, g.cols, 1)
        # O: read by STORE and by the vector engine's MOVE (forwarding GEMM results into V)
        m.submodules.spad_o = so = Scratchpad(g.cols * 32, g.o_depth, 1, 2)
        m.submodules.spad_v = sv = SplitScratchpad(g.lanes * 32, g.v_depth, 3)
        m.submodules.spad_p = sp = Scratchpad(g.cols * rec, g.p_depth, 1, 1)

        m.submodules.ctrl = ctrl = Controller()
        m.submodules.fetch = fetch = Fetcher(cfg.mem_bus_bits)
        m.submodules.load = load = LoadEngine(g)       # A, V from mem
        m.submodules.wload = wload = LoadEngine(g)     # B, P, constants from wmem
        m.submodules.store = store = StoreEngine(g)
        m.submodules.gemm = gemm = GemmEngine(g, cfg.acc_bits, cfg.tag_bits)
        m.submodules.vec = vec = VectorEngine(g)
        m.submodules.busmux = bus = BusMux(cfg.mem_bus_bits, 2)

        # each engine keeps its instruction from its issue cycle on: the sequencer fetches
        # the next one while it runs
        fetched = fetch.instr
        op = ctrl.opcode
        go_dma, go_gemm, go_vec, go_wdma = (ctrl.go[e] for e in (Engine.DMA, Engine.GEMM, Engine.VECTOR,
                                                                 Engine.WDMA))
        held = {}
        for name, go in (("dma", go_dma), ("gemm", go_gemm), ("vec", go_vec), ("wdma", go_wdma)):
            ir = Signal(len(fetched), name=f"ir_{name}")
            with m.If(go):
                m.d.sync += ir.eq(fetched)
            held[name] = Mux(go, fetched, ir)
        dma_op = held["dma"][:8]
        engine_busy = [0] * len(Engine)
        engine_busy[Engine.DMA] = load.busy | store.busy
        engine_busy[Engine.GEMM] = gemm.busy
        engine_busy[Engine.VECTOR] = vec.busy
        engine_busy[Engine.WDMA] = wload.busy
        m.d.comb += [
            ctrl.start.eq(self.start), ctrl.prog_addr.eq(self.prog_addr),
            self.busy.eq(ctrl.running), self.done.eq(ctrl.done), self.error.eq(ctrl.error),
            self.cycles.eq(ctrl.cycles),
            fetch.go.eq(ctrl.fetch_go), fetch.pc.eq(ctrl.pc),
            ctrl.fetch_busy.eq(fetch.busy), ctrl.instr.eq(fetched),
            load.go.eq(go_dma & (op == Op.LOAD)), store.go.eq(go_dma & (op == Op.STORE)), wload.go.eq(go_wdma),
            gemm.go.eq(go_gemm), vec.go.eq(go_vec),
            gemm.instr.eq(held["gemm"]), vec.instr.eq(held["vec"]),
            ctrl.engine_busy.eq(Cat(*engine_busy)),
            ctrl.accept_busy.eq(Cat(*[gemm.accept_busy if e == Engine.GEMM else engine_busy[e] for e in Engine])),
            ctrl.older_busy.eq(gemm.older_busy),
            bus.sel.eq(0),
        ]
        # the DMA engine runs one transfer at a time, so the data port has one user
        with m.If(dma_op == Op.STORE):
            m.d.comb += bus.sel.eq(1)
        v_load, v_store = view(held["dma"], Op.LOAD), view(held["dma"], Op.STORE)
        for name, _ in load.cfg.signature.members.items():
            m.d.comb += getattr(load.cfg, name).eq(getattr(v_load, name))
        for name, _ in store.cfg.signature.members.items():
            m.d.comb += getattr(store.cfg, name).eq(getattr(v_store, name))
        v_wload = view(held["wdma"], Op.LOAD)
        for name, _ in wload.cfg.signature.members.items():
            m.d.comb += getattr(wload.cfg, name).eq(getattr(v_wload, name))

        wiring.connect(m, fetch.bus, wiring.flipped(self.imem))
        wiring.connect(m, wload.bus, wiring.flipped(self.wmem))
        wiring.connect(m, load.bus, bus.m0)
        wiring.connect(m, store.bus, bus.m1)
        wiring.connect(m, bus.ext, wiring.flipped(self.mem))

        # ---- LOAD destinations: A and V from the DMA engine, the rest from the weight DMA;
        # B and P from either (a LOAD's on_dma bit), never both at once (vit2hw.hazards gives
        # each one write port, B_PORT / P_PORT)
        lw, ww = load.wr, wload.wr
        for spad, t in ((sb, Target.B), (sp, Target.P)):
            from_dma = lw.en & (lw.target == t)
            m.d.comb += [spad.wr.en.eq((ww.en & (ww.target == t)) | from_dma),
                         spad.wr.bank.eq(Mux(from_dma, lw.bank, ww.bank)),
                         spad.wr.addr.eq(Mux(from_dma, lw.addr, ww.addr)),
                         spad.wr.data.eq(Mux(from_dma, lw.data, ww.data))]
        # A is written by the DMA engine's LOADs and STOREs into A and the vector engine's
        # SOFTMAX into A, never two at once (one engine runs one instruction; vit2hw.hazards
        # keeps a SOFTMAX into A and the DMA engine's writers of A apart)
        aw, vaw = store.aw, vec.aw
        m.d.comb += [sa.wr.en.eq((lw.en & (lw.target == Target.A)) | aw.en | vaw.en),
                     sa.wr.bank.eq(Mux(vaw.en, vaw.bank, Mux(aw.en, aw.bank, lw.bank))),
                     sa.wr.addr.eq(Mux(vaw.en, vaw.addr, Mux(aw.en, aw.addr, lw.addr))),
                     sa.wr.data.eq(Mux(vaw.en, vaw.data, Mux(aw.en, aw.data, lw.data)))]
        # V has a write port per half: a LOAD into one half runs beside a vector instruction
        # writing the other (vit2hw.hazards keeps two writers out of one half)
        m.d.comb += [sv.wr0.en.eq(lw.en & (lw.target == Target.V)), sv.wr0.addr.eq(lw.addr),
                     sv.wr0.data.eq(lw.data),
                     sv.wr1.en.eq(vec.vw.en), sv.wr1.addr.eq(vec.vw.addr), sv.wr1.data.eq(vec.vw.data)]
        d = ww.data
        m.d.comb += [
            vec.ln_const.en.eq(ww.en & (ww.target == Target.LN_CONST)), vec.ln_const.addr.eq(ww.addr),
            vec.ln_const.data.gm.eq(d[0:16]), vec.ln_const.data.alpha.eq(d[16:18]),
            vec.ln_const.data.gs.eq(d[24:30]), vec.ln_const.data.bb.eq(d[32:64]),
            vec.res_const.en.eq(ww.en & (ww.target == Target.RES_CONST)), vec.res_const.addr.eq(ww.addr),
            vec.res_const.data.ma.eq(d[0:16]), vec.res_const.data.mb.eq(d[16:32]),
            vec.res_const.data.s.eq(d[32:38]), vec.res_const.data.bias.eq(d[64:104]),
            vec.lut_wr.en.eq(ww.en & (ww.target == Target.LUT_TABLE)), vec.lut_wr.addr.eq(ww.addr),
            vec.lut_wr.data.eq(d[0:16]),
            gemm.lut_wr.en.eq(ww.en & (ww.target == Target.LUT_TABLE)), gemm.lut_wr.addr.eq(ww.addr),
            gemm.lut_wr.data.eq(d[0:16]),
        ]

        # ---- compute and STORE ports
        wiring.connect(m, gemm.a_rd, sa.rd0)
        wiring.connect(m, gemm.b_rd, sb.rd0)
        wiring.connect(m, gemm.p_rd, sp.rd0)
        wiring.connect(m, gemm.o_wr, so.wr)
        wiring.connect(m, vec.va, sv.rd0)
        wiring.connect(m, vec.vb, sv.rd1)
        wiring.connect(m, store.o_rd, so.rd0)
        wiring.connect(m, vec.o_rd, so.rd1)
        wiring.connect(m, store.v_rd, sv.rd2)
        return m
