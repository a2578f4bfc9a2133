"""Lowering: a QuantPlan plus the float model → an integer QuantizedGraph.

This is the only place where real-valued scales turn into integer multipliers,
shifts, biases and tables (all through the ``choose_*``/``build_*`` helpers of
:mod:`vit2hw.intops`). Zero points of Linear inputs are folded into the int32 bias;
the position embedding becomes a per-token bias of the patch embedding and the class
token a constant row.
"""

from __future__ import annotations

import math

import numpy as np

from calib.plan import ActQuant, QuantPlan
from vit2hw import intops as I
from vit2hw.graph import GRAPH_VERSION, Node, QuantizedGraph, TensorSpec

__all__ = ["lower_plan", "LoweringError", "score_multiplier", "spec_of", "linear_acc_terms", "requant_multiplier",
           "attn_v_terms", "layernorm_consts", "residual_consts", "gelu_table", "LOWERABLE_KINDS"]

_LOG2E = 1.0 / math.log(2.0)
MULT_BITS = 16
MAX_SHIFT = 40


class LoweringError(ValueError):
    """The plan cannot be represented by the integer contract (e.g. a constant overflows)."""


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def spec_of(name: str, shape: tuple[int, ...], q: ActQuant) -> TensorSpec:
    if q.kind == "ptf":
        return TensorSpec(name, shape, q.bits, True, tuple(float(s) for s in q.channel_scale()), 0, "ptf",
                          tuple(int(a) for a in q.alpha))
    if q.kind == "log2":
        return TensorSpec(name, shape, q.bits, False, tuple(float(s) for s in np.atleast_1d(q.scale)), 0, "log2")
    return TensorSpec(name, shape, q.bits, True, tuple(float(s) for s in np.atleast_1d(q.scale)), int(q.zero_point))


def _mult(ratio) -> tuple[np.ndarray, np.ndarray]:
    try:
        return I.choose_multiplier(ratio, MULT_BITS, MAX_SHIFT)
    except ValueError as exc:
        raise LoweringError(str(exc)) from None


def _check_int32(x: np.ndarray, what: str) -> np.ndarray:
    try:
        return I.check_range(x, 32, True, what)
    except I.IntegerRangeError as exc:
        raise LoweringError(str(exc)) from None


def linear_acc_terms(plan: QuantPlan, layer: str, xin: TensorSpec, extra_bias: np.ndarray | None = None,
                     log2_input: ActQuant | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Accumulator scale [M] and integer bias (float-valued, before the int32 check) of one Linear."""
    wq = plan.weights[layer]
    s_w = wq.scale  # [M]
    b = np.asarray(plan.biases[layer], np.float64)
    if extra_bias is not None:
        b = b[None, :] + extra_bias
    w_int = wq.q.T.astype(np.int64)  # [K, M]
    if log2_input is not None:
        # Shift-Log2 input: real x = 2**-k·scale − shift, codes enter as w << (Z−1−k)
        from calib.adfq import log2_linear_terms
        return log2_linear_terms(log2_input, w_int, s_w, b)
    acc_scale = float(xin.scale[0]) * s_w
    return acc_scale, np.rint(b / acc_scale) - xin.zero_point * w_int.sum(axis=0)


def requant_multiplier(acc_scale, out: TensorSpec, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-column (m, s) taking an accumulator at ``acc_scale`` to ``out``'s codes."""
    m, s = _mult(acc_scale / out.scale_array)
    return np.broadcast_to(m, (columns,)).copy(), np.broadcast_to(s, (columns,)).copy()


def _linear_consts(plan: QuantPlan, layer: str, xin: TensorSpec, out: TensorSpec,
                   extra_bias: np.ndarray | None = None, log2_input=None) -> dict[str, np.ndarray]:
    """Integer weight [K, M], int32 bias, and per-column (m, s) of one Linear layer."""
    w_int = plan.weights[layer].q.T.astype(np.int64)  # [K, M]
    acc_scale, bias_int = linear_acc_terms(plan, layer, xin, extra_bias, log2_input)
    m, s = requant_multiplier(acc_scale, out, w_int.shape[1])
    return {"weight": w_int, "bias": _check_int32(bias_int.astype(np.int64), f"{layer} bias"), "m": m, "s": s}


def attn_v_terms(s_v: float, mode: str, out: TensorSpec, channels: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Accumulator scale and per-channel (m, s) of attention × V (``mode``: the probability encoding)."""
    p_scale = 2.0 ** -I.ATTN_SHIFT if mode == "log2" else 1.0 / I.PROB_MAX
    acc_scale = float(s_v) * p_scale
    m, s = _mult(np.broadcast_to(acc_scale / out.scale_array, (channels,)))
    return acc_scale, m, s


def residual_consts(a: TensorSpec, b: TensorSpec, out: TensorSpec) -> dict[str, np.ndarray]:
    c = out.shape[-1]
    so = np.broadcast_to(out.scale_array, (c,))
    ra = np.broadcast_to(a.scale_array, (c,)) / so
    rb = np.broadcast_to(b.scale_array, (c,)) / so
    _, sa = _mult(ra)
    _, sb = _mult(rb)
    s = np.minimum(sa, sb)
    ma = np.rint(ra * np.exp2(s)).astype(np.int64)
    mb = np.rint(rb * np.exp2(s)).astype(np.int64)
    bias = -(a.zero_point * ma + b.zero_point * mb)
    return {"ma": ma, "mb": mb, "bias": bias.astype(np.int64), "s": s.astype(np.int64)}


def layernorm_consts(ln, xin: TensorSpec, out: TensorSpec) -> dict[str, np.ndarray]:
    gamma = ln.weight.detach().double().numpy()
    beta = ln.bias.detach().double().numpy()
    s_out = float(out.scale[0])
    ratio = gamma / (s_out * 2.0 ** I.LN_NORM_FRAC)
    gm, gs = _mult(ratio)
    # the LayerNorm unit holds beta as int32: give up shift (precision) where it would not fit
    for _ in range(MAX_SHIFT):
        bb = np.rint(beta / s_out * np.exp2(gs)).astype(np.float64)
        over = np.abs(bb) >= 2.0 ** 31
        if not over.any():
            break
        gs = np.where(over, gs - 1, gs)
        gm = np.where(over, np.rint(ratio * np.exp2(gs)), gm).astype(np.int64)
    if (gs < 0).any():
        raise LoweringError("LayerNorm beta/scale ratio too large for the int32 bias")
    return {"alpha": np.asarray(xin.alpha, np.int64), "gm": gm.astype(np.int64), "gs": gs.astype(np.int64),
            "bb": bb.astype(np.int64)}


def gelu_table(in_spec: TensorSpec, q: ActQuant) -> np.ndarray:
    """The GELU lookup table from fc1-output codes to ``q``'s codes (uniform or Shift-Log2)."""
    if q.kind == "log2":
        from calib.adfq import shift_log2_lut
        return shift_log2_lut(in_spec, q)
    return I.build_lut(_gelu, in_spec.bits, float(in_spec.scale[0]), in_spec.zero_point, q.bits,
                       float(q.scale[0]), int(q.zero_point))


def score_multiplier(s_q: float, s_k: float, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, S) taking q·kᵀ accumulators to scores·log2(e) at 2**-SCORE_FRAC (1/sqrt(d) folded in)."""
    return _mult(s_q * s_k * head_dim ** -0.5 * _LOG2E * (1 << I.SCORE_FRAC))


#: activation quantizer kinds the integer contract can execute
LOWERABLE_KINDS = ("int", "ptf", "log2", "fixed")


def lower_plan(plan: QuantPlan, model, spec) -> QuantizedGraph:
    """Build the integer graph of ``model`` quantized by ``plan``."""
    A = plan.acts
    for point, q in A.items():
        if q.kind not in LOWERABLE_KINDS:  # e.g. float outliers: no integer form, refuse rather than approximate
            raise LoweringError(f"{point}: " + (getattr(q, "refusal", "") or
                                                f"activation quantizer kind {q.kind!r} has no integer form"))
    depth, d = len(model.blocks), model.pos_embed.shape[-1]
    p = spec.patch_size
    n_patch = (spec.img_size // p) ** 2
    n_tok = n_patch + 1
    g = QuantizedGraph({
        "version": GRAPH_VERSION, "model": spec.name, "method": plan.method, "res_bits": plan.res_bits,
        "module_bits": {k: list(v) for k, v in plan.module_bits.items()},
        "img_size": spec.img_size, "patch_size": p, "in_chans": spec.in_chans, "embed_dim": d,
        "depth": depth, "num_heads": model.blocks[0].attn.num_heads, "num_classes": spec.num_classes,
        "tokens": n_tok, "notes": {k: v for k, v in plan.notes.items() if isinstance(v, (int, float, str))},
    })
    img = g.add_input(TensorSpec("image", (spec.in_chans, spec.img_size, spec.img_size), 8, True, (1.0,), -128))
    patches = g.add_node(Node("patchify", "patchify", [img], "patches", {"patch": p}, module="patch_embed"),
                         TensorSpec("patches", (n_patch, spec.in_chans * p * p), 8, True, (1.0,), -128))
    x_spec = spec_of("patch_embed.out", (n_patch, d), A["blocks.0.norm1.in"])
    pos = model.pos_embed.detach().double().numpy()[0]
    consts = _linear_consts(plan, "patch_embed", g.tensors[patches], x_spec, extra_bias=pos[1:])
    x = g.add_node(Node("patch_embed", "linear", [patches], x_spec.name, {"w_bits": plan.weights["patch_embed"].bits},
                        consts, "patch_embed"), x_spec)
    cls = model.cls_token.detach().double().numpy()[0, 0] + pos[0]
    x = g.add_node(Node("cls_token", "prepend_row", [x], "blocks.0.norm1.in", {},
                        {"row": A["blocks.0.norm1.in"].quantize_np(cls)}, "patch_embed"),
                   spec_of("blocks.0.norm1.in", (n_tok, d), A["blocks.0.norm1.in"]))

    def linear(name, layer, xin, out_point, shape, module, extra=None):
        out = spec_of(out_point, shape, A[out_point])
        xs = g.tensors[xin]
        log2_in = A[xin] if xs.kind == "log2" else None
        c = _linear_consts(plan, layer, xs, out, extra, log2_in)
        attrs = {"w_bits": plan.weights[layer].bits, "mode": "log2" if log2_in is not None else "int"}
        return g.add_node(Node(name, "linear", [xin], out_point, attrs, c, module), out)

    for i, blk in enumerate(model.blocks):
        b = f"blocks.{i}"
        heads, hd = blk.attn.num_heads, d // blk.attn.num_heads
        xin = x
        ln1 = spec_of(f"{b}.norm1.out", (n_tok, d), A[f"{b}.norm1.out"])
        h = g.add_node(Node(f"{b}.norm1", "layernorm", [xin], ln1.name, {},
                            layernorm_consts(blk.norm1, g.tensors[xin], ln1), f"{b}.attn"), ln1)
        q, k, v = (linear(f"{b}.attn.{t}", f"{b}.attn.{t}", h, f"{b}.attn.{t}", (n_tok, d), f"{b}.attn") for t in "qkv")
        m, s = score_multiplier(float(g.tensors[q].scale[0]), float(g.tensors[k].scale[0]), hd)
        scores = g.add_node(Node(f"{b}.attn.qk", "matmul_qk", [q, k], f"{b}.attn.scores", {"heads": heads},
                                 {"m": m.reshape(1), "s": s.reshape(1)}, f"{b}.attn"),
                            TensorSpec(f"{b}.attn.scores", (heads, n_tok, n_tok), 16, True,
                                       (1.0 / (_LOG2E * (1 << I.SCORE_FRAC)),)))
        mode = plan.attn_modes.get(f"{b}.attn", "log2")
        if mode == "log2":
            pspec = TensorSpec(f"{b}.attn.probs", (heads, n_tok, n_tok), I.LOG2_CODE_BITS, False, (1.0,), 0, "log2")
        else:
            pspec = TensorSpec(f"{b}.attn.probs", (heads, n_tok, n_tok), 8, True, (1.0 / I.PROB_MAX,))
        codes = g.add_node(Node(f"{b}.attn.softmax", "softmax", [scores], pspec.name,
                                {"frac": I.SCORE_FRAC, "mode": mode}, {}, f"{b}.attn"), pspec)
        ao = spec_of(f"{b}.attn.out", (n_tok, d), A[f"{b}.attn.out"])
        _, m, s = attn_v_terms(float(g.tensors[v].scale[0]), mode, ao, d)
        o = g.add_node(Node(f"{b}.attn.av", "attn_v", [codes, v], ao.name, {"heads": heads},
                            {"m": m, "s": s}, f"{b}.attn"), ao)
        y = linear(f"{b}.attn.proj", f"{b}.attn.proj", o, f"{b}.attn.proj.out", (n_tok, d), f"{b}.attn")
        mid = spec_of(f"{b}.norm2.in", (n_tok, d), A[f"{b}.norm2.in"])
        x = g.add_node(Node(f"{b}.attn.residual", "residual_add", [xin, y], mid.name, {},
                            residual_consts(g.tensors[xin], g.tensors[y], mid), f"{b}.attn"), mid)
        ln2 = spec_of(f"{b}.norm2.out", (n_tok, d), A[f"{b}.norm2.out"])
        h = g.add_node(Node(f"{b}.norm2", "layernorm", [x], ln2.name, {},
                            layernorm_consts(blk.norm2, mid, ln2), f"{b}.mlp"), ln2)
        hidden = blk.mlp.fc1.weight.shape[0]
        f1 = linear(f"{b}.mlp.fc1", f"{b}.mlp.fc1", h, f"{b}.mlp.fc1.out", (n_tok, hidden), f"{b}.mlp")
        gs_in, gq = g.tensors[f1], A[f"{b}.mlp.gelu.out"]
        table = gelu_table(gs_in, gq)
        ge = g.add_node(Node(f"{b}.mlp.gelu", "lut", [f1], f"{b}.mlp.gelu.out", {"fn": "gelu"}, {"table": table},
                             f"{b}.mlp"), spec_of(f"{b}.mlp.gelu.out", (n_tok, hidden), gq))
        y = linear(f"{b}.mlp.fc2", f"{b}.mlp.fc2", ge, f"{b}.mlp.fc2.out", (n_tok, d), f"{b}.mlp")
        nxt = f"blocks.{i + 1}.norm1.in" if i + 1 < depth else "norm.in"
        xo = spec_of(nxt, (n_tok, d), A[nxt])
        x = g.add_node(Node(f"{b}.mlp.residual", "residual_add", [x, y], xo.name, {},
                            residual_consts(mid, g.tensors[y], xo), f"{b}.mlp"), xo)
    xs = g.tensors[x]
    cls_in = g.add_node(Node("take_cls", "take_rows", [x], "norm.in.cls", {"start": 0, "count": 1}, {}, "head"),
                        TensorSpec("norm.in.cls", (1, d), xs.bits, True, xs.scale, 0, "ptf", xs.alpha))
    no = spec_of("norm.out", (1, d), A["norm.out"])
    h = g.add_node(Node("norm", "layernorm", [cls_in], no.name, {},
                        layernorm_consts(model.norm, g.tensors[cls_in], no), "head"), no)
    logits = linear("head", "head", h, "head.out", (1, spec.num_classes), "head")
    g.mark_output(logits)
    g.validate()
    return g
