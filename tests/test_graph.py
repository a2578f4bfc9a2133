"""QuantizedGraph: structure, validation and an exact, byte-deterministic disk round trip."""

import json

import numpy as np
import pytest

from vit2hw.graph import GRAPH_VERSION, GraphError, Node, QuantizedGraph, TensorSpec, load_graph, save_graph
from vit2hw.reference import run_graph
from vit2hw.pipeline import graph_input


def test_graph_is_a_dag_with_every_op_known_and_integer_constants(digits_q8):
    g = digits_q8.graph
    g.validate()
    nxg = g.to_networkx()
    assert nxg.number_of_nodes() == len(g.nodes)
    ops = {n.op for n in g.nodes.values()}
    assert {"patchify", "linear", "prepend_row", "layernorm", "matmul_qk", "softmax", "attn_v", "lut",
            "residual_add", "take_rows"} <= ops
    assert all(v.dtype == np.int64 for n in g.nodes.values() for v in n.consts.values())
    # three blocks × (q, k, v, proj, fc1, fc2) + patch embedding + head
    assert sum(n.op == "linear" for n in g.nodes.values()) == 3 * 6 + 2


def test_save_load_round_trip_is_exact(digits_q8, digits_test, tmp_path):
    g = digits_q8.graph
    save_graph(g, tmp_path / "a")
    h = load_graph(tmp_path / "a")
    assert h.meta == json.loads(json.dumps(g.meta))
    assert h.tensors == g.tensors and h.inputs == g.inputs and h.outputs == g.outputs
    for name, node in g.nodes.items():
        other = h.nodes[name]
        assert (other.op, other.inputs, other.output, other.attrs, other.module) == \
               (node.op, node.inputs, node.output, node.attrs, node.module)
        assert other.consts.keys() == node.consts.keys()
        for k in node.consts:
            assert np.array_equal(other.consts[k], node.consts[k])
    x = graph_input(digits_test.images[:4])
    assert np.array_equal(run_graph(g, x)["head.out"], run_graph(h, x)["head.out"])
    save_graph(h, tmp_path / "b")
    for f in ("graph.json", "consts.npz"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def _tiny_graph():
    g = QuantizedGraph({"version": GRAPH_VERSION})
    g.add_input(TensorSpec("x", (2, 3), 8))
    g.add_node(Node("t", "take_rows", ["x"], "y", {"start": 0, "count": 1}), TensorSpec("y", (1, 3), 8))
    g.mark_output("y")
    return g


def test_validation_rejects_malformed_graphs():
    g = _tiny_graph()
    g.validate()
    with pytest.raises(GraphError, match="unknown op"):
        g.add_node(Node("bad", "conv3d", ["y"], "z"), TensorSpec("z", (1, 3), 8))
    with pytest.raises(GraphError, match="does not exist"):
        g.add_node(Node("bad2", "lut", ["nope"], "z"), TensorSpec("z", (1, 3), 8))
    g.add_node(Node("lut", "lut", ["y"], "w", {}, {}), TensorSpec("w", (1, 3), 8))
    with pytest.raises(GraphError, match="lacks constants"):
        g.validate()
    with pytest.raises(GraphError, match="PTF tensor needs"):
        TensorSpec("p", (1, 3), 8, kind="ptf")


def test_load_rejects_other_versions_and_garbage(tmp_path):
    save_graph(_tiny_graph(), tmp_path / "g")
    doc = json.loads((tmp_path / "g" / "graph.json").read_text())
    doc["version"] = GRAPH_VERSION + 1
    (tmp_path / "g" / "graph.json").write_text(json.dumps(doc))
    with pytest.raises(GraphError, match="version"):
        load_graph(tmp_path / "g")
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "graph.json").write_text("{not json")
    with pytest.raises(GraphError):
        load_graph(tmp_path / "h")


def test_reference_flags_a_result_outside_its_declared_width():
    from vit2hw.reference import ReferenceError
    g = QuantizedGraph({"version": GRAPH_VERSION})
    g.add_input(TensorSpec("x", (1, 4), 8))
    # an identity table into a 4-bit tensor: codes above 7 break the declared width
    g.add_node(Node("id", "lut", ["x"], "y", {}, {"table": np.arange(-128, 128)}), TensorSpec("y", (1, 4), 4))
    g.mark_output("y")
    run_graph(g, np.array([[[1, 2, 3, -4]]]))
    with pytest.raises(ReferenceError):
        run_graph(g, np.array([[[1, 2, 3, 100]]]))
