"""QuantizedGraph: the integer IR between calibration and everything downstream.

A QuantizedGraph is a networkx DiGraph whose nodes are integer operations
(:class:`Node`) and whose edges carry tensors (:class:`TensorSpec`). Every constant
is an integer array; real-valued scales are kept only as compile-time metadata so
that reports and fake-quant checks can interpret the codes. The graph is plain,
versioned data: :func:`save_graph` / :func:`load_graph` round-trip it exactly through
a directory holding ``graph.json`` and ``consts.npz`` (written byte-deterministically).

Operations (per image; the reference executor adds a leading batch axis):

=================  =============================================================
``patchify``       image [C, H, W] → patches [H/p·W/p, C·p·p] (pure data movement)
``linear``         x [N, K] @ W [K, M] + bias → requantize per column (``mode`` int or
                   log2: Shift-Log2 codes on the input, multiplier-free)
``prepend_row``    x [N, C] → [N+1, C] with a constant first row (the class token)
``layernorm``      PTF input [N, C] → integer LayerNorm → [N, C]
``matmul_qk``      q, k [N, H·d] → per-head q·kᵀ, requantized to scores [H, N, N]
``softmax``        scores [H, N, N] → 4-bit log2 codes (``mode`` log2) or 8-bit uniform
                   probabilities (``mode`` uniform) [H, N, N]
``attn_v``         probabilities, v [N, H·d] → Σ v << (14 − k) (log2 codes, shift mode) or
                   Σ p·v (uniform) → requantized [N, H·d]
``lut``            elementwise table lookup (GELU)
``residual_add``   a, b [N, C] → both rescaled to the output scale and added
``take_rows``      x [N, C] → x[start:start+count]
=================  =============================================================
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

__all__ = ["GRAPH_VERSION", "OPS", "TensorSpec", "Node", "QuantizedGraph", "GraphError",
           "save_graph", "load_graph"]

GRAPH_VERSION = 1

#: op name → (number of inputs, required integer constants)
OPS: dict[str, tuple[int, tuple[str, ...]]] = {
    "patchify": (1, ()),
    "linear": (1, ("weight", "bias", "m", "s")),
    "prepend_row": (1, ("row",)),
    "layernorm": (1, ("alpha", "gm", "gs", "bb")),
    "matmul_qk": (2, ("m", "s")),
    "softmax": (1, ()),
    "attn_v": (2, ("m", "s")),
    "lut": (1, ("table",)),
    "residual_add": (2, ("ma", "mb", "bias", "s")),
    "take_rows": (1, ()),
}


class GraphError(ValueError):
    """The graph is malformed: unknown op, dangling tensor, wrong constants, bad version."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: its per-image shape and how its integer codes map to real values.

    ``kind`` is ``"int"`` (real = (q − zero_point)·scale), ``"ptf"`` (real = q·scale_c,
    where scale_c = base·2**alpha_c; ``alpha`` gives the per-channel shifts) or
    ``"log2"`` (code k means 2**-k·scale, code 2**bits − 1 means zero).
    ``scale`` has one entry (per tensor) or one per channel of the last axis.
    """

    name: str
    shape: tuple[int, ...]
    bits: int
    signed: bool = True
    scale: tuple[float, ...] = (1.0,)
    zero_point: int = 0
    kind: str = "int"
    alpha: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.kind not in ("int", "ptf", "log2"):
            raise GraphError(f"tensor {self.name}: unknown kind {self.kind!r}")
        if not 1 <= self.bits <= 32:
            raise GraphError(f"tensor {self.name}: {self.bits} bits is outside 1..32")
        if len(self.scale) not in (1, self.shape[-1] if self.shape else 1):
            raise GraphError(f"tensor {self.name}: {len(self.scale)} scales for shape {self.shape}")
        if self.kind == "ptf" and (self.alpha is None or len(self.alpha) != self.shape[-1]):
            raise GraphError(f"tensor {self.name}: PTF tensor needs one alpha per channel")

    @property
    def scale_array(self) -> np.ndarray:
        return np.asarray(self.scale, dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["scale"] = [float(s) for s in self.scale]
        d["alpha"] = None if self.alpha is None else list(self.alpha)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TensorSpec":
        return cls(name=d["name"], shape=tuple(d["shape"]), bits=int(d["bits"]),
                   signed=bool(d["signed"]), scale=tuple(float(s) for s in d["scale"]),
                   zero_point=int(d["zero_point"]), kind=d["kind"],
                   alpha=None if d["alpha"] is None else tuple(int(a) for a in d["alpha"]))


@dataclass
class Node:
    """One integer operation. ``attrs`` hold JSON scalars; ``consts`` integer arrays."""

    name: str
    op: str
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    #: the model module this op belongs to (e.g. "blocks.3.attn"), for reports and mixed precision
    module: str = ""


class QuantizedGraph:
    """A validated DAG of integer :class:`Node` s over named :class:`TensorSpec` s."""

    def __init__(self, meta: dict[str, Any] | None = None):
        self.meta: dict[str, Any] = dict(meta or {})
        self.tensors: dict[str, TensorSpec] = {}
        self.nodes: dict[str, Node] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self._producer: dict[str, str] = {}

    # ---------------------------------------------------------------- building
    def add_input(self, spec: TensorSpec) -> str:
        self._add_tensor(spec)
        self.inputs.append(spec.name)
        return spec.name

    def add_node(self, node: Node, out: TensorSpec) -> str:
        if node.name in self.nodes:
            raise GraphError(f"duplicate node name {node.name}")
        if node.op not in OPS:
            raise GraphError(f"node {node.name}: unknown op {node.op!r}")
        for t in node.inputs:
            if t not in self.tensors:
                raise GraphError(f"node {node.name}: input tensor {t!r} does not exist")
        if out.name != node.output:
            raise GraphError(f"node {node.name}: output spec {out.name} != {node.output}")
        node.consts = {k: np.ascontiguousarray(np.asarray(v, dtype=np.int64)) for k, v in node.consts.items()}
        self._add_tensor(out)
        self.nodes[node.name] = node
        self._producer[out.name] = node.name
        return out.name

    def mark_output(self, tensor: str) -> None:
        if tensor not in self.tensors:
            raise GraphError(f"output tensor {tensor!r} does not exist")
        self.outputs.append(tensor)

    def _add_tensor(self, spec: TensorSpec) -> None:
        if spec.name in self.tensors:
            raise GraphError(f"duplicate tensor name {spec.name}")
        self.tensors[spec.name] = spec

    # ---------------------------------------------------------------- views
    def to_networkx(self) -> nx.DiGraph:
        """Ops as nodes (attribute ``node``), tensors on the edges (attribute ``tensor``)."""
        g = nx.DiGraph()
        for i, (name, node) in enumerate(self.nodes.items()):
            g.add_node(name, node=node, order=i)
        for name, node in self.nodes.items():
            for t in node.inputs:
                if t in self._producer:
                    g.add_edge(self._producer[t], name, tensor=t)
        return g

    def topological(self) -> list[Node]:
        """Nodes in a deterministic topological order (ties broken by insertion order)."""
        g = self.to_networkx()
        order = nx.lexicographical_topological_sort(g, key=lambda n: g.nodes[n]["order"])
        return [self.nodes[n] for n in order]

    def producer(self, tensor: str) -> Node | None:
        name = self._producer.get(tensor)
        return None if name is None else self.nodes[name]

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes.values() if tensor in n.inputs]

    # ---------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise :class:`GraphError` unless the graph is a well-formed integer DAG."""
        if self.meta.get("version", GRAPH_VERSION) != GRAPH_VERSION:
            raise GraphError(f"graph version {self.meta.get('version')} unsupported (expected {GRAPH_VERSION})")
        if not self.inputs or not self.outputs:
            raise GraphError("graph needs at least one input and one output")
        g = self.to_networkx()
        if not nx.is_directed_acyclic_graph(g):
            raise GraphError("graph has a cycle")
        for node in self.nodes.values():
            n_in, consts = OPS[node.op]
            if len(node.inputs) != n_in:
                raise GraphError(f"node {node.name} ({node.op}) takes {n_in} inputs, has {len(node.inputs)}")
            missing = [c for c in consts if c not in node.consts]
            if missing:
                raise GraphError(f"node {node.name} ({node.op}) lacks constants {missing}")
            for k, v in node.consts.items():
                if v.dtype != np.int64:
                    raise GraphError(f"node {node.name}: constant {k} is not integer")
            for t in node.inputs:
                if t not in self._producer and t not in self.inputs:
                    raise GraphError(f"node {node.name}: input {t} has no producer")
        for t in self.outputs:
            if t not in self._producer:
                raise GraphError(f"output {t} has no producer")

    def modules(self) -> list[str]:
        """Distinct model modules in graph order."""
        seen: list[str] = []
        for n in self.nodes.values():
            if n.module and n.module not in seen:
                seen.append(n.module)
        return seen


# -------------------------------------------------------------------- disk format

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez without timestamps, so identical graphs give identical bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def save_graph(graph: QuantizedGraph, directory: Path | str) -> Path:
    """Write ``graph.json`` + ``consts.npz`` into ``directory`` (created)."""
    graph.validate()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    nodes = []
    for node in graph.nodes.values():
        for k, v in node.consts.items():
            arrays[f"{node.name}/{k}"] = v
        nodes.append({"name": node.name, "op": node.op, "inputs": node.inputs, "output": node.output,
                      "module": node.module, "attrs": node.attrs, "consts": sorted(node.consts)})
    doc = {
        "format": "vit2hw.QuantizedGraph",
        "version": GRAPH_VERSION,
        "meta": graph.meta,
        "inputs": graph.inputs,
        "outputs": graph.outputs,
        "tensors": [t.to_json() for t in graph.tensors.values()],
        "nodes": nodes,
    }
    (d / "graph.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    _write_npz(d / "consts.npz", arrays)
    return d


def load_graph(directory: Path | str) -> QuantizedGraph:
    """Read a graph written by :func:`save_graph`; raises :class:`GraphError` when malformed."""
    d = Path(directory)
    try:
        doc = json.loads((d / "graph.json").read_text())
        npz = np.load(d / "consts.npz", allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise GraphError(f"cannot read a QuantizedGraph from {d}: {exc}") from None
    if doc.get("format") != "vit2hw.QuantizedGraph":
        raise GraphError(f"{d / 'graph.json'} is not a vit2hw QuantizedGraph")
    if doc.get("version") != GRAPH_VERSION:
        raise GraphError(f"graph version {doc.get('version')} unsupported (expected {GRAPH_VERSION})")
    g = QuantizedGraph(doc["meta"])
    specs = {t["name"]: TensorSpec.from_json(t) for t in doc["tensors"]}
    for name in doc["inputs"]:
        g.add_input(specs[name])
    with npz:
        for nd in doc["nodes"]:
            consts = {k: npz[f"{nd['name']}/{k}"] for k in nd["consts"]}
            g.add_node(Node(nd["name"], nd["op"], list(nd["inputs"]), nd["output"], nd["attrs"],
                            consts, nd.get("module", "")), specs[nd["output"]])
    for t in doc["outputs"]:
        g.mark_output(t)
    g.validate()
    return g
