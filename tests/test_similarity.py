"""Similarity- and ranking-aware interval search (calib.similarity) and method ptq4vit, on vit_digits."""

import numpy as np
import pytest
import torch

from calib.fqvit import BitConfig, calibrate_fqvit
from calib.methods import run_method
from calib.plan import BitsError
from calib.sequential import linear_inputs
from calib.similarity import SearchOptionError, layer_cosines, rank_inversions, ranking_loss, refine_plan
from vit2hw.pipeline import QuantResult, evaluate


@pytest.fixture(scope="module")
def base_w4a4(digits_model, digits_calib):
    model, spec = digits_model
    return calibrate_fqvit(model, spec, digits_calib, BitConfig.uniform(len(model.blocks), 4, 4), progress=False)


@pytest.fixture(scope="module")
def searched(digits_model, digits_calib, base_w4a4):
    """Search only (no bias correction), ranking-aware with a strong ranking weight, and cosine-only."""
    model, spec = digits_model
    rank = refine_plan(model, spec, digits_calib, base_w4a4, bias_correction=False, rank_weight=20.0)
    cos = refine_plan(model, spec, digits_calib, base_w4a4, bias_correction=False, ranking=False)
    return rank, cos


@pytest.fixture(scope="module")
def searched_all_tokens(digits_model, digits_calib, base_w4a4):
    """Cosine-only search whose token sample (max_tokens above 32 images × 17 tokens) is every
    token: the search's guarantee then holds on a full measurement, not just in expectation."""
    model, spec = digits_model
    return refine_plan(model, spec, digits_calib, base_w4a4, bias_correction=False, ranking=False, max_tokens=1024)


def test_rank_inversions_counts_discordant_pairs_and_half_ties():
    assert rank_inversions([[1, 2, 3]], [[3, 2, 1]]) == 3
    assert rank_inversions([[1, 2, 3]], [[1, 2, 3]]) == 0
    assert rank_inversions([[1, 2, 3]], [[1, 1, 3]]) == 0.5
    ref = torch.tensor([[0.0, 1.0, 2.0]])
    pi, pj = torch.tensor([0, 1]), torch.tensor([2, 2])
    assert ranking_loss(ref, ref, pi, pj) == 0.0
    assert ranking_loss(ref, -ref, pi, pj) > 0.0


def test_search_never_lowers_the_summed_output_cosine_and_raises_it_at_w4a4(digits_model, digits_calib, base_w4a4,
                                                                             searched_all_tokens):
    """Objective: per input group, the summed cosine of each layer's quantized output to the float
    layer's, recomputed on every token with both plans' quantizers on the same inputs."""
    model, spec = digits_model
    cos = layer_cosines(model, spec, digits_calib, searched_all_tokens, other=base_w4a4)
    groups = {None: ["patch_embed"], **linear_inputs(len(model.blocks))}
    gains = []
    for layers in groups.values():
        after = sum(cos[n][0] for n in layers)
        before = sum(cos[n][1] for n in layers)
        assert after >= before - 1e-6, layers
        gains.append(after - before)
    assert sum(g > 1e-3 for g in gains) >= 5


def test_ranking_loss_reduces_rank_inversions_of_attention_scores(searched):
    rank, cos = (p.notes["search_log"] for p in searched)
    keys = [k for k in rank if k.endswith("attn.scores")]
    assert len(keys) == 3
    inv_rank = sum(rank[k]["inversions_after"] for k in keys)
    inv_cos = sum(cos[k]["inversions_after"] for k in keys)
    inv_base = sum(cos[k]["inversions_before"] for k in keys)
    assert inv_cos < inv_base
    assert inv_rank < inv_cos


def test_ptq4vit_lowers_and_integer_reference_agrees_with_fake_quant(digits_model, digits_calib, digits_test):
    model, spec = digits_model
    from calib.lower import lower_plan
    plan = run_method("ptq4vit", model, spec, digits_calib, "w4a8", progress=False)
    assert plan.method == "ptq4vit" and plan.notes["bias_correction"] == "on"
    m = evaluate(model, spec, QuantResult(plan, lower_plan(plan, model, spec)), digits_test.images,
                 digits_test.labels, progress=False)
    assert m["agreement"] >= 0.99
    assert m["integer_top1"] >= m["fp_top1"] - 2.0


def test_refine_keeps_widths_kinds_and_the_baseline_points(base_w4a4, searched):
    plan = searched[0]
    for p, a in base_w4a4.acts.items():
        assert (plan.acts[p].bits, plan.acts[p].kind, plan.acts[p].zero_point) == (a.bits, a.kind, a.zero_point)
        if p.endswith(("norm1.in", "norm2.in", "proj.out", "fc2.out")) or p in ("norm.in", "head.out"):
            assert np.array_equal(plan.acts[p].scale, a.scale), p
    for n, w in base_w4a4.weights.items():
        assert plan.weights[n].bits == w.bits and np.abs(plan.weights[n].q).max() <= (1 << (w.bits - 1)) - 1


@pytest.mark.parametrize("opts, match", [
    ({"alpha": 1.5}, "alpha"), ({"alpha": 0.5, "beta": 0.9}, "contain 1"), ({"candidates": 1}, "candidates"),
    ({"rounds": 0}, "rounds"), ({"rank_weight": -1.0}, "rank_weight"), ({"max_tokens": 2.5}, "max_tokens"),
    ({"bogus": 1}, "unknown search option"),
])
def test_bad_options_are_clear_errors(digits_model, digits_calib, opts, match):
    model, spec = digits_model
    with pytest.raises(SearchOptionError, match=match):
        run_method("ptq4vit", model, spec, digits_calib, "8", progress=False, **opts)


def test_ptq4vit_rejects_mixed_bits(digits_model, digits_calib):
    model, spec = digits_model
    with pytest.raises(BitsError, match="uniform"):
        run_method("ptq4vit", model, spec, digits_calib, "mixed", progress=False)
