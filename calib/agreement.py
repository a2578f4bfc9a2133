"""Where fake-quant and integer reference part ways: per-point code mismatches.

Both models quantize at the same points, so their codes can be compared point by
point on the same images: the integer reference keeps every tensor of the graph
(:func:`vit2hw.reference.run_graph` with ``keep``), the fake-quant model records the
codes it produces at each point. Running the fake-quant model with different
:class:`calib.fakequant.IntegerOps` shows which float-vs-integer difference between
the points causes the disagreements (``python -m calib.agreement``).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from calib.fakequant import FakeQuantPolicy, IntegerOps, _codes, _dequant
from calib.forward import vit_forward
from vit2hw import intops as I

__all__ = ["RecordingFakeQuant", "point_mismatches", "isolated_mismatches", "point_kind", "ABLATIONS", "main"]

#: IntegerOps variants of the ablation: all float, each integer sub-operation alone, all but one, all
ABLATIONS: dict[str, IntegerOps] = {
    "float": IntegerOps.none(),
    "requant only": IntegerOps(True, False, False, False),
    "layernorm only": IntegerOps(False, True, False, False),
    "residual only": IntegerOps(False, False, True, False),
    "all but requant": IntegerOps(False, True, True, True),
    "all but layernorm": IntegerOps(True, False, True, True),
    "all but residual": IntegerOps(True, True, False, True),
    "all but gelu": IntegerOps(True, True, True, False),
    "integer (default)": IntegerOps(),
}


class RecordingFakeQuant(FakeQuantPolicy):
    """The fake-quant model that keeps the integer codes it produces at every point."""

    def __init__(self, plan, integer: IntegerOps = IntegerOps()):
        super().__init__(plan, integer)
        self.codes: dict[str, np.ndarray] = {}

    def _keep(self, name, y):
        q = self.plan.acts.get(name)
        if q is not None and q.kind in ("int", "ptf"):
            self.codes[name] = _codes(y, q)
        return y

    def act(self, name, x):
        return self._keep(name, super().act(name, x))

    def layernorm(self, name, x, ln):
        return self._keep(f"{name}.out", super().layernorm(name, x, ln))

    def residual(self, name, a, b, a_point, b_point):
        return self._keep(name, super().residual(name, a, b, a_point, b_point))

    def gelu(self, name, x):
        return self._keep(f"{name}.out", super().gelu(name, x))


def _graph_tensor(point: str) -> str:
    # the final LayerNorm runs on the class-token row only (take_rows), and so does the fake model
    return "norm.in.cls" if point == "norm.in" else point


@torch.no_grad()
def point_mismatches(model, spec, plan, graph, images: np.ndarray,
                     integer: IntegerOps = IntegerOps()) -> dict:
    """Per point: fraction of codes where fake-quant (with ``integer``) and the integer graph
    differ on ``images``; plus top-1 agreement. Points in execution order."""
    from vit2hw.pipeline import graph_input
    from vit2hw.reference import run_graph

    env = run_graph(graph, graph_input(images), keep=True)
    pol = RecordingFakeQuant(plan, integer)
    logits = vit_forward(model, spec, torch.from_numpy(np.asarray(images, np.float64)), pol, torch.float64)
    out = {}
    for point, codes in pol.codes.items():
        ref = env.get(_graph_tensor(point))
        if ref is None:
            continue
        if point == "norm.in":
            codes = codes[:, :1]
        out[point] = float((codes != ref).mean())
    it = env[graph.outputs[0]][:, 0]
    agreement = float((it.argmax(1) == logits.numpy().argmax(1)).mean())
    return {"points": out, "agreement": agreement, "n_images": int(len(images))}


@torch.no_grad()
def isolated_mismatches(model, spec, plan, graph, images: np.ndarray, integer: IntegerOps = IntegerOps.none()) -> dict:
    """Per graph op kind: fraction of output codes where the fake-quant operation (with
    ``integer``), fed the integer reference's own input codes, differs from the graph's
    output — each operation's own disagreement, without the compounding of a full forward.
    Returns {op: {"mismatch": fraction, "max_code_diff": int, "codes": count}}."""
    from vit2hw.pipeline import graph_input
    from vit2hw.reference import run_graph

    env = run_graph(graph, graph_input(images), keep=True)
    pol = FakeQuantPolicy(plan, integer)
    acts = plan.acts
    pos = model.pos_embed.detach().double()[0]
    heads = model.blocks[0].attn.num_heads

    def deq(t):
        return torch.from_numpy(_dequant(env[t], acts[t])) if t in acts else None

    stats: dict[str, list] = {}
    for node in graph.topological():
        out_q = acts.get(node.output) or acts.get(node.output.replace("norm.in.cls", "norm.in"))
        if node.op == "linear":
            if node.name == "patch_embed":
                x = torch.from_numpy((env[node.inputs[0]] + 128).astype(np.float64))
                out_point, extra = "blocks.0.norm1.in", pos[1:]
            else:
                x, out_point, extra = deq(node.inputs[0]), node.output, 0.0
            y = torch.nn.functional.linear(x, torch.from_numpy(plan.weights[node.name].dequant()),
                                           torch.from_numpy(np.asarray(plan.biases[node.name], np.float64))) + extra
            if node.name == "patch_embed":  # the policy's point also holds the class-token row
                y = torch.cat([torch.zeros_like(y[:, :1]), y], dim=1)
                got = _codes(pol.act(out_point, y), acts[out_point])[:, 1:]
            else:
                got = _codes(pol.act(out_point, y), acts[out_point])
            kind = "requant (linear)"
        elif node.op == "layernorm":
            ln = model.norm if node.name == "norm" else getattr(model.blocks[int(node.name.split(".")[1])],
                                                                node.name.split(".")[2])
            src = "norm.in" if node.name == "norm" else node.inputs[0]
            x = torch.from_numpy(_dequant(env[node.inputs[0]], acts[src]))
            got, kind = _codes(pol.layernorm(node.name, x, ln), out_q), "layernorm"
        elif node.op == "residual_add":
            a, b = node.inputs
            got = _codes(pol.residual(node.output, deq(a), deq(b), a, b), out_q)
            kind = "residual"
        elif node.op == "attn_v":
            codes, v = env[node.inputs[0]], deq(node.inputs[1])
            mode = plan.attn_modes.get(node.name.rsplit(".", 1)[0], "log2")
            p = (np.where(codes == I.LOG2_ZERO_CODE, 0.0, np.exp2(-codes.astype(np.float64))) if mode == "log2"
                 else codes / I.PROB_MAX)
            bsz, n, d = v.shape
            vh = v.reshape(bsz, n, heads, d // heads).transpose(1, 2)
            o = (torch.from_numpy(p) @ vh).transpose(1, 2).reshape(bsz, n, d)
            got, kind = _codes(pol.act(node.output, o), out_q), "requant (attention x V)"
        elif node.op == "lut":
            name = node.name
            if out_q.kind not in ("int", "ptf"):
                continue
            got, kind = _codes(pol.gelu(name, deq(node.inputs[0])), out_q), "gelu table"
        else:
            continue
        ref = env[node.output]
        diff = np.abs(got - ref)
        s = stats.setdefault(kind, [0, 0, 0])
        s[0] += int((diff > 0).sum())
        s[1] = max(s[1], int(diff.max(initial=0)))
        s[2] += int(diff.size)
    return {k: {"mismatch": v[0] / max(v[2], 1), "max_code_diff": v[1], "codes": v[2]} for k, v in stats.items()}


def point_kind(point: str) -> str:
    """The kind of a point across blocks (``blocks.3.attn.q`` → ``attn.q``; residual outputs named)."""
    parts = point.split(".")
    if point == "blocks.0.norm1.in":
        return "patch_embed out"
    if point == "norm.in" or parts[0] == "blocks" and parts[2:] == ["norm1", "in"]:
        return "residual (mlp) out"
    if parts[0] == "blocks" and parts[2:] == ["norm2", "in"]:
        return "residual (msa) out"
    return ".".join(parts[2:]) if parts[0] == "blocks" else point


def _summarize(points: dict) -> dict:
    """Mean mismatch per kind of point."""
    groups: dict[str, list[float]] = {}
    for p, v in points.items():
        groups.setdefault(point_kind(p), []).append(v)
    return {k: float(np.mean(v)) for k, v in groups.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m calib.agreement", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_digits")
    ap.add_argument("--weights")
    ap.add_argument("--data")
    ap.add_argument("--calib-data")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--images", type=int, default=450, help="evaluation images (first N)")
    ap.add_argument("--bits", default="4")
    ap.add_argument("--method", default="fqvit")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--ablations", default=",".join(ABLATIONS))
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from vit2hw.data import load_calib_data, load_eval_data
    from vit2hw.models.zoo import create_model, get_spec
    from vit2hw.pipeline import quantize_model

    spec = get_spec(args.model)
    model = create_model(args.model, args.weights) if args.weights else create_model(args.model)
    calib = load_calib_data(spec, args.calib_data, args.calib_images).images
    data = load_eval_data(spec, args.data, args.images)
    r = quantize_model(model, spec, calib, args.bits, args.method, progress=False)
    rows = {}
    for name in args.ablations.split(","):
        acc = {"points": {}, "agree": 0, "n": 0}
        for i in range(0, len(data.images), args.batch):
            m = point_mismatches(model, spec, r.plan, r.graph, data.images[i:i + args.batch], ABLATIONS[name])
            n = m["n_images"]
            for p, v in m["points"].items():
                acc["points"][p] = acc["points"].get(p, 0.0) + v * n
            acc["agree"] += m["agreement"] * n
            acc["n"] += n
        pts = {p: v / acc["n"] for p, v in acc["points"].items()}
        rows[name] = {"agreement": acc["agree"] / acc["n"], "mean_code_mismatch": float(np.mean(list(pts.values()))),
                      "by_kind": _summarize(pts), "points": pts}
        print(f"{name:>20}: agreement {rows[name]['agreement']:.4f}  mean code mismatch "
              f"{rows[name]['mean_code_mismatch']:.5f}", file=sys.stderr, flush=True)
    isolated = {}
    for name, ops in (("float", IntegerOps.none()), ("integer (default)", IntegerOps())):
        isolated[name] = isolated_mismatches(model, spec, r.plan, r.graph, data.images[:args.batch], ops)
        print(f"{'isolated ' + name:>28}: " + ", ".join(f"{k} {v['mismatch']:.5f}" for k, v in isolated[name].items()),
              file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "bits": args.bits, "method": args.method, "n_images": len(data.images),
                       "calib_images": args.calib_images, "ablations": rows,
                       "isolated_images": min(args.batch, len(data.images)), "isolated": isolated}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
