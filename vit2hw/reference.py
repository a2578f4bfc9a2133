"""Integer reference executor: runs a QuantizedGraph on a batch with numpy integers.

Every op is a thin wrapper around :mod:`vit2hw.intops`; this module only moves data
(reshapes, head splits) and checks each result against its declared bit width. Its
outputs are the golden values the RTL must reproduce bit for bit.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from vit2hw import intops as I
from vit2hw.graph import Node, QuantizedGraph, TensorSpec

__all__ = ["run_graph", "run_node", "ReferenceError"]


class ReferenceError(RuntimeError):
    """A node's integer result broke the graph's contract."""


def _split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    b, n, d = x.shape
    return x.reshape(b, n, heads, d // heads).transpose(0, 2, 1, 3)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    b, h, n, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, n, h * d)


def _patchify(node, specs, xs):
    (x,) = xs
    p = node.attrs["patch"]
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
    # patch vector order (c, kh, kw) matches a flattened Conv2d weight
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def _linear(node, specs, xs):
    (x,) = xs
    xin, out = specs[node.inputs[0]], specs[node.output]
    w = node.consts["weight"]
    w_bits = node.attrs["w_bits"]
    if node.attrs.get("mode", "int") == "log2":
        acc = I.shift_log2_linear(x, w, xin.bits, w_bits)
    else:
        acc = I.int_gemm(x, w, xin.bits, w_bits)
    return I.requantize(acc, node.consts["m"], node.consts["s"], out.bits, True,
                        out.zero_point, node.consts["bias"])


def _prepend_row(node, specs, xs):
    (x,) = xs
    row = np.broadcast_to(node.consts["row"], (x.shape[0], 1, x.shape[2]))
    return np.concatenate([row, x], axis=1)


def _layernorm(node, specs, xs):
    (x,) = xs
    xin, out = specs[node.inputs[0]], specs[node.output]
    c = node.consts
    return I.ptf_layernorm(x, c["alpha"], c["gm"], c["gs"], c["bb"], out.bits, out.zero_point,
                           in_bits=xin.bits)


def _matmul_qk(node, specs, xs):
    q, k = xs
    qs, ks, out = specs[node.inputs[0]], specs[node.inputs[1]], specs[node.output]
    h = node.attrs["heads"]
    qh, kh = _split_heads(q, h), _split_heads(k, h)
    acc = I.int_gemm(qh, np.swapaxes(kh, -1, -2), qs.bits, ks.bits)
    return I.requantize(acc, node.consts["m"], node.consts["s"], out.bits, True, 0)


def _softmax(node, specs, xs):
    (t,) = xs
    fn = I.uniform_softmax if node.attrs.get("mode", "log2") == "uniform" else I.log_int_softmax
    return fn(t, node.attrs.get("frac", I.SCORE_FRAC), specs[node.inputs[0]].bits)


def _attn_v(node, specs, xs):
    codes, v = xs
    ps, vs, out = specs[node.inputs[0]], specs[node.inputs[1]], specs[node.output]
    h = node.attrs["heads"]
    if ps.kind == "log2":
        acc = I.attn_v_shift(codes, _split_heads(v, h), vs.bits)
    else:
        acc = I.int_gemm(codes, _split_heads(v, h), ps.bits, vs.bits)
    acc = _merge_heads(acc)
    return I.requantize(acc, node.consts["m"], node.consts["s"], out.bits, True, out.zero_point)


def _lut(node, specs, xs):
    (x,) = xs
    return I.apply_lut(x, node.consts["table"], specs[node.inputs[0]].bits)


def _residual_add(node, specs, xs):
    a, b = xs
    sa, sb, out = specs[node.inputs[0]], specs[node.inputs[1]], specs[node.output]
    c = node.consts
    return I.residual_add(a, b, c["ma"], c["mb"], c["bias"], c["s"], out.bits, out.zero_point,
                          a_bits=sa.bits, b_bits=sb.bits)


def _take_rows(node, specs, xs):
    (x,) = xs
    s, n = node.attrs["start"], node.attrs["count"]
    return x[:, s:s + n]


_OPS: dict[str, Callable] = {
    "patchify": _patchify, "linear": _linear, "prepend_row": _prepend_row,
    "layernorm": _layernorm, "matmul_qk": _matmul_qk, "softmax": _softmax,
    "attn_v": _attn_v, "lut": _lut, "residual_add": _residual_add, "take_rows": _take_rows,
}


def run_node(node: Node, specs: dict[str, TensorSpec], inputs: list[np.ndarray]) -> np.ndarray:
    """Execute one node on batched inputs and check the result against its output spec."""
    y = np.asarray(_OPS[node.op](node, specs, inputs), dtype=np.int64)
    out = specs[node.output]
    if tuple(y.shape[1:]) != tuple(out.shape):
        raise ReferenceError(f"{node.name}: result shape {y.shape[1:]} != declared {out.shape}")
    try:
        I.check_range(y, out.bits, out.signed if out.kind != "log2" else False, node.name)
    except I.IntegerRangeError as exc:
        raise ReferenceError(str(exc)) from None
    return y


def run_graph(graph: QuantizedGraph, inputs: dict[str, np.ndarray] | np.ndarray,
              keep: bool = False) -> dict[str, np.ndarray]:
    """Run ``graph`` on a batch. ``inputs`` maps input names to int arrays [B, ...]
    (a bare array feeds the single input). Returns the outputs, or every tensor if ``keep``."""
    if not isinstance(inputs, dict):
        inputs = {graph.inputs[0]: inputs}
    env: dict[str, np.ndarray] = {}
    for name in graph.inputs:
        spec = graph.tensors[name]
        x = np.asarray(inputs[name])
        if tuple(x.shape[1:]) != tuple(spec.shape):
            raise ReferenceError(f"input {name}: shape {x.shape[1:]} != declared {spec.shape}")
        env[name] = I.check_range(x, spec.bits, spec.signed, f"input {name}")
    remaining = {t: len(graph.consumers(t)) for t in graph.tensors} if not keep else {}
    for node in graph.topological():
        env[node.output] = run_node(node, graph.tensors, [env[t] for t in node.inputs])
        if not keep:
            for t in node.inputs:
                remaining[t] -= 1
                if remaining[t] == 0 and t not in graph.outputs:
                    del env[t]
    return env if keep else {t: env[t] for t in graph.outputs}
