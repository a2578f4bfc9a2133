"""The command line: results written where asked, and every bad input a one-line error that writes nothing."""

import json

import pytest
import torch

from vit2hw.cli import main
from vit2hw.graph import load_graph


def _fails(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) >= 1 and err[-1].startswith("vit2hw: error:")
    assert match in err[-1], err[-1]
    return err[-1]


def test_quantize_writes_a_loadable_graph_and_replaces_old_output(tmp_path, capsys):
    out = tmp_path / "g"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert main(["quantize", "--model", "vit_digits", "--bits", "8", "--calib-images", "8", "--attn", "log2",
                 "--out", str(out), "--quiet"]) == 0
    g = load_graph(out)
    assert g.meta["model"] == "vit_digits" and not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["g"]  # no staging leftovers


def test_eval_json_has_the_promised_fields(tmp_path, capsys):
    js = tmp_path / "r.json"
    assert main(["eval", "--model", "vit_digits", "--bits", "8", "--calib-images", "8", "--limit", "40",
                 "--json", str(js), "--quiet"]) == 0
    r = json.loads(js.read_text())
    for k in ("fp_top1", "fakequant_top1", "integer_top1", "agreement", "logit_cosine", "n_images"):
        assert k in r
    assert r["n_images"] == 40 and 0 <= r["agreement"] <= 1 and 0 <= r["integer_top1"] <= 100


@pytest.mark.parametrize("argv, match", [
    (["--model", "resnet50"], "unknown model"),
    (["--model", "vit_digits", "--bits", "5"], "unsupported bit width 5"),
    (["--model", "vit_digits", "--bits", "w3a8"], "unsupported bit width 3"),
    (["--model", "vit_digits", "--bits", "eight"], "cannot parse bit widths"),
    (["--model", "vit_digits", "--bits", "mixed", "--method", "fqvit"], "does not do mixed precision"),
    (["--model", "vit_digits", "--method", "magic"], "unknown method"),
    (["--model", "vit_digits", "--calib-images", "0"], "--calib-images"),
    (["--model", "vit_digits", "--weights", "/nonexistent/w.pth"], "does not exist"),
])
def test_bad_quantize_requests_write_nothing(tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    _fails(capsys, ["quantize", *argv, "--out", str(out), "--quiet"], match)
    assert list(tmp_path.iterdir()) == []


def test_malformed_and_mismatched_checkpoints(tmp_path, capsys):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    _fails(capsys, ["quantize", "--model", "vit_digits", "--weights", str(garbage), "--out", str(tmp_path / "o")],
           str(garbage.name))
    from vit2hw.models.zoo import create_model
    sd = create_model("vit_digits").state_dict()
    sd["head.weight"] = torch.zeros(7, 64)
    del sd["blocks.0.norm1.bias"]
    bad = tmp_path / "mismatch.pth"
    torch.save({"model": sd}, bad)
    line = _fails(capsys, ["quantize", "--model", "vit_digits", "--weights", str(bad), "--out", str(tmp_path / "o")],
                  "")
    assert "head.weight" in line or "blocks.0.norm1.bias" in line
    assert not (tmp_path / "o").exists()


def test_empty_data_directory(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(capsys, ["quantize", "--model", "deit_tiny", "--weights", "synthetic", "--calib-data", str(empty),
                    "--out", str(tmp_path / "o")], str(empty.name))
    assert not (tmp_path / "o").exists()


def test_failure_while_writing_leaves_no_partial_output(tmp_path, capsys, monkeypatch):
    import vit2hw.graph as graph_mod

    def broken(graph, directory):
        (directory / "graph.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(graph_mod, "save_graph", broken)
    with pytest.raises(OSError):
        main(["quantize", "--model", "vit_digits", "--calib-images", "4", "--attn", "log2",
              "--out", str(tmp_path / "o"), "--quiet"])
    assert list(tmp_path.iterdir()) == []


def test_models_and_methods_listings(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in ("deit_tiny", "deit_small", "deit_base", "vit_digits"))
    assert main(["methods"]) == 0
    assert "fqvit" in capsys.readouterr().out
