"""Similarity- and ranking-aware interval search (Liu et al. 2021, "PTQ for Vision Transformer").

For every Linear layer the weight interval Δ_W and the input interval Δ_X are searched
alternately, each over ``candidates`` values in [α·Δ, β·Δ] around the max-based start,
to maximize the cosine similarity between the layer's float output and its quantized
output (mean over tokens). Within the integer contract:

* weights stay symmetric per output channel: the search picks one multiplier per layer
  applied to the per-channel max-based scales (not a per-channel search);
* a Linear input is an asymmetric per-tensor activation point that may feed several
  layers (``norm1.out`` feeds q, k and v): it is searched once, for the summed cosine
  of all its consumers; its zero point stays, its scale is multiplied;
* the q and k outputs (symmetric per tensor, operands of Q·Kᵀ) are searched on the
  attention scores: cosine of the score rows minus λ × a pairwise hinge ranking loss
  on the order of the scores within each row (the paper's ranking-aware loss); v by
  the cosine of its own output;
* the GELU input (the lookup table's input codes) is searched by the cosine of the
  GELU output; the residual-stream PTF points, the proj/fc2 outputs and the logits
  keep the baseline's quantizers; Shift-Log2 or PTF inputs are not searched (only the
  weights behind them).

The pass is sequential, like the paper: one fake-quant forward of the calibration
batch in which each layer's quantizers are searched just before its input is
quantized, so each layer sees its input as the already-refined quantized layers
before it produce it (the distribution it will meet at run time). The reference is
the float layer applied to that same input, so each objective measures the layer's
own quantization error and nothing upstream. Objectives are evaluated on a fixed
random subsample of tokens (``max_tokens``; attention: ``rank_rows`` query rows per
image, ``rank_pairs`` key pairs per row), in float32; every candidate set contains the
current interval, so no step can lower its objective on that sample.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from calib.bias_correction import correct_patch_embed, correction_hooks
from calib.fqvit import BitConfig, calibrate_fqvit, layer_weights
from calib.plan import ActQuant, QuantPlan, quantize_weight
from calib.sequential import Hook, linear_inputs, patch_input, run_sequential

__all__ = ["SearchOptions", "SearchOptionError", "refine_plan", "calibrate_ptq4vit", "token_cosine",
           "rank_inversions", "ranking_loss", "PairwiseRanking", "search_linear_group", "search_qk", "layer_cosines",
           "REFINE_FLAGS"]

#: score rows (image, head, query) over which the search log counts rank inversions
INVERSION_ROWS = 2048
#: the on/off switches of :func:`refine_plan`, accepted as method options too
REFINE_FLAGS = ("search", "ranking", "bias_correction")


class SearchOptionError(ValueError):
    """An invalid option of the similarity search."""


@dataclass(frozen=True)
class SearchOptions:
    """Parameters of the interval search (defaults follow the seed paper where it gives them)."""

    #: candidate intervals are ``candidates`` points of [alpha·Δ, beta·Δ] (plus Δ itself)
    alpha: float = 0.5
    beta: float = 1.2
    candidates: int = 20
    #: alternation rounds (weights, then inputs) per layer group
    rounds: int = 2
    #: λ: weight of the ranking hinge loss against the score cosine (0 = cosine only)
    rank_weight: float = 1.0
    #: θ: hinge margin in units of the float scores' standard deviation
    rank_margin: float = 0.0
    #: token rows sampled for the Linear objectives
    max_tokens: int = 512
    #: query rows per image and key pairs per row sampled for the attention objective
    rank_rows: int = 16
    rank_pairs: int = 128
    seed: int = 0
    #: also search v's output quantizer and the GELU input quantizer
    search_v: bool = True
    search_gelu_input: bool = True

    def __post_init__(self):
        if not (0.0 < self.alpha < self.beta):
            raise SearchOptionError(f"need 0 < alpha < beta (got alpha={self.alpha}, beta={self.beta})")
        if not (self.alpha <= 1.0 <= self.beta):
            raise SearchOptionError(f"[alpha, beta] must contain 1 (the max-based start); got "
                                    f"[{self.alpha}, {self.beta}]")
        for name in ("candidates", "rounds", "max_tokens", "rank_rows", "rank_pairs"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise SearchOptionError(f"{name} must be a positive integer (got {v!r})")
        if self.candidates < 2:
            raise SearchOptionError(f"candidates must be at least 2 (got {self.candidates})")
        if self.rank_weight < 0 or self.rank_margin < 0:
            raise SearchOptionError(f"rank_weight and rank_margin must be >= 0 (got {self.rank_weight}, "
                                    f"{self.rank_margin})")

    @classmethod
    def from_opts(cls, opts: dict) -> "SearchOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(opts) - names)
        if bad:
            raise SearchOptionError(f"unknown search option(s) {', '.join(bad)}; valid: "
                                    f"{', '.join(sorted(names | set(REFINE_FLAGS)))}")
        return cls(**opts)

    def factors(self) -> np.ndarray:
        return np.unique(np.append(np.linspace(self.alpha, self.beta, self.candidates), 1.0))


# ------------------------------------------------------------------ objectives

def token_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity of corresponding rows (last axis = features)."""
    return float(F.cosine_similarity(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), dim=1,
                                     eps=1e-12).mean())


class PairwiseRanking:
    """The ranking hinge of :func:`ranking_loss` with everything about ``ref`` precomputed."""

    def __init__(self, ref: torch.Tensor, pi: torch.Tensor, pj: torch.Tensor, margin: float = 0.0):
        sigma = float(ref.std()) or 1.0
        self.pi, self.pj, self.margin = pi, pj, margin
        sign = torch.sign(self._diff(ref))
        self.keep = (sign != 0).to(ref.dtype)
        self.signed = sign / sigma
        self.count = max(float(self.keep.sum()), 1.0)

    def _diff(self, s: torch.Tensor) -> torch.Tensor:
        # index_select: advanced indexing on the last axis is an order of magnitude slower
        flat = s.reshape(-1, s.shape[-1])
        return torch.index_select(flat, 1, self.pi) - torch.index_select(flat, 1, self.pj)

    def __call__(self, test: torch.Tensor) -> float:
        return float((torch.clamp(self.margin - self.signed * self._diff(test), min=0) * self.keep).sum()) \
            / self.count


def ranking_loss(ref: torch.Tensor, test: torch.Tensor, pi: torch.Tensor, pj: torch.Tensor,
                 margin: float = 0.0) -> float:
    """Pairwise hinge on the order of scores within each row (last axis): mean over the pairs
    (i, j) that ``ref`` orders of max(0, θ − sign(ref_i − ref_j)·(test_i − test_j)/σ), σ = std
    of ``ref`` (θ = ``margin``)."""
    return PairwiseRanking(ref, pi, pj, margin)(test)


def rank_inversions(ref, test, chunk: int = 512) -> float:
    """Pairs (i < j) within each row (last axis) whose order in ``test`` contradicts ``ref``;
    a pair ``ref`` orders but ``test`` ties counts one half (Kendall's discordance)."""
    r = np.asarray(ref.detach().double() if torch.is_tensor(ref) else ref, np.float64)
    t = np.asarray(test.detach().double() if torch.is_tensor(test) else test, np.float64)
    n = r.shape[-1]
    r, t = r.reshape(-1, n), t.reshape(-1, n)
    iu, ju = np.triu_indices(n, 1)
    total = 0.0
    for s in range(0, r.shape[0], chunk):
        dr = r[s:s + chunk][:, iu] - r[s:s + chunk][:, ju]
        dt = t[s:s + chunk][:, iu] - t[s:s + chunk][:, ju]
        total += float(np.count_nonzero(dr * dt < 0)) + 0.5 * float(np.count_nonzero((dt == 0) & (dr != 0)))
    return total


# ------------------------------------------------------------------ quantizers with a factor

def _fake_act(x: torch.Tensor, act: ActQuant, g: float) -> torch.Tensor:
    lo, hi = act.lo_hi
    s = float(act.scale[0]) * g
    return (torch.clamp(torch.round(x / s) + act.zero_point, lo, hi) - act.zero_point) * s


def _fake_weight(w: torch.Tensor, scale: torch.Tensor, g: float, bits: int) -> torch.Tensor:
    qmax = (1 << (bits - 1)) - 1
    s = (scale * g)[:, None]
    return torch.clamp(torch.round(w / s), -qmax, qmax) * s


def _searchable(act: ActQuant | None) -> bool:
    return act is not None and act.kind == "int" and np.size(act.scale) == 1


def _scaled(act: ActQuant, g: float) -> ActQuant:
    return dataclasses.replace(act, scale=np.asarray(act.scale, np.float64) * g)


def _argmax(factors, objective) -> tuple[float, float]:
    vals = [objective(float(f)) for f in factors]
    k = int(np.argmax(vals))
    return float(factors[k]), vals[k]


# ------------------------------------------------------------------ linear layers

@dataclass
class LayerTerm:
    """One Linear layer of a search group: float weight/bias, current weight scale and bits."""

    name: str
    w: torch.Tensor        # [out, in] float
    b_fp: torch.Tensor     # [out] float bias (the reference)
    b: torch.Tensor        # [out] the plan's bias (what the quantized layer adds)
    scale: torch.Tensor    # [out] current per-channel weight scale (the search start)
    bits: int


def search_linear_group(x: torch.Tensor, act: ActQuant | None, terms: list[LayerTerm],
                        opts: SearchOptions) -> dict:
    """Alternating search for a group of layers sharing the input ``x`` [M, in] (float, before
    its quantizer ``act``; None: the input is exact). Returns the input factor, one weight
    factor per layer and the summed cosine objective before and after."""
    factors = opts.factors()
    targets = [x @ t.w.T + t.b_fp for t in terms]
    search_x = _searchable(act)

    def xq(g):
        return _fake_act(x, act, g) if search_x else x

    def cos(i, xqv, wq):
        return token_cosine(xqv @ wq.T + terms[i].b, targets[i])

    gx, gw = 1.0, [1.0] * len(terms)
    wqs = [_fake_weight(t.w, t.scale, 1.0, t.bits) for t in terms]
    before = sum(cos(i, xq(gx), wqs[i]) for i in range(len(terms)))
    for _ in range(opts.rounds):
        xqv = xq(gx)
        for i, t in enumerate(terms):
            gw[i], _ = _argmax(factors, lambda g: cos(i, xqv, _fake_weight(t.w, t.scale, g, t.bits)))
            wqs[i] = _fake_weight(t.w, t.scale, gw[i], t.bits)
        if search_x:
            gx, _ = _argmax(factors, lambda g: sum(cos(i, xq(g), wqs[i]) for i in range(len(terms))))
    after = sum(cos(i, xq(gx), wqs[i]) for i in range(len(terms)))
    return {"input_factor": gx, "weight_factors": gw, "objective_before": before, "objective_after": after}


def _terms(plan: QuantPlan, fp: dict, layers: list[str]) -> list[LayerTerm]:
    out = []
    for name in layers:
        w, b = fp[name]
        wq = plan.weights[name]
        out.append(LayerTerm(name, torch.from_numpy(w).float(), torch.from_numpy(b).float(),
                             torch.from_numpy(np.asarray(plan.biases[name], np.float64)).float(),
                             torch.from_numpy(wq.scale).float(), wq.bits))
    return out


def _apply_linear(plan: QuantPlan, fp: dict, point: str | None, layers: list[str], res: dict) -> None:
    for name, g in zip(layers, res["weight_factors"]):
        wq = plan.weights[name]
        plan.weights[name] = quantize_weight(fp[name][0], wq.bits, wq.scale * g)
    if point is not None and res["input_factor"] != 1.0:
        plan.acts[point] = _scaled(plan.acts[point], res["input_factor"])


def _sample_rows(x: torch.Tensor, n: int, rng: np.random.Generator) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] <= n:
        return flat.float()
    idx = np.sort(rng.choice(flat.shape[0], n, replace=False))
    return flat[torch.from_numpy(idx)].float()


# ------------------------------------------------------------------ attention scores

def _scores(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """q [N, R, D], k [N, T, D] → scores [N, heads, R, T] (1/sqrt(head dim) applied)."""
    n, r, d = q.shape
    hd = d // heads
    qh = q.reshape(n, r, heads, hd).transpose(1, 2)
    kh = k.reshape(n, k.shape[1], heads, hd).transpose(1, 2)
    return (qh @ kh.transpose(-2, -1)) * hd ** -0.5


def search_qk(q_ref: torch.Tensor, k_ref: torch.Tensor, q_hat: torch.Tensor, k_hat: torch.Tensor,
              act_q: ActQuant, act_k: ActQuant, heads: int, opts: SearchOptions,
              rng: np.random.Generator) -> dict:
    """Alternating search of the q and k output intervals on the attention scores.

    ``q_ref``/``k_ref`` [N, R, D] / [N, T, D]: the float layers' outputs (q on a sample of R
    query rows, k on every token); ``q_hat``/``k_hat``: the quantized layers' outputs before
    their output quantizers. Objective: mean row cosine of the scores
    minus ``rank_weight`` × :func:`ranking_loss` over sampled key pairs. Also reports the rank
    inversions before and after (every key pair of the first :data:`INVERSION_ROWS` score rows)."""
    t = k_ref.shape[1]
    if t * (t - 1) // 2 <= 4 * opts.rank_pairs:  # short rows: every pair, no sampling noise
        iu, ju = np.triu_indices(t, 1)
        pi, pj = torch.from_numpy(iu), torch.from_numpy(ju)
    else:
        pi = torch.from_numpy(rng.integers(0, t, opts.rank_pairs))
        pj = torch.from_numpy((pi.numpy() + rng.integers(1, t, opts.rank_pairs)) % t)
    ref = _scores(q_ref.float(), k_ref.float(), heads)
    qh, kh = q_hat.float(), k_hat.float()

    def test_scores(gq, gk):
        return _scores(_fake_act(qh, act_q, gq), _fake_act(kh, act_k, gk), heads)

    rank = PairwiseRanking(ref, pi, pj, opts.rank_margin)

    def objective(gq, gk):
        s = test_scores(gq, gk)
        val = token_cosine(s, ref)
        if opts.rank_weight > 0:
            val -= opts.rank_weight * rank(s)
        return val

    factors = opts.factors()
    gq = gk = 1.0
    before = objective(gq, gk)
    inv_before = _inversions(ref, test_scores(gq, gk))
    for _ in range(opts.rounds):
        gq, _ = _argmax(factors, lambda g: objective(g, gk))
        gk, after = _argmax(factors, lambda g: objective(gq, g))
    s = test_scores(gq, gk)
    return {"q_factor": gq, "k_factor": gk, "objective_before": before, "objective_after": objective(gq, gk),
            "cosine_after": token_cosine(s, ref), "inversions_before": inv_before,
            "inversions_after": _inversions(ref, s),
            "pairs": float(min(ref[..., 0].numel(), INVERSION_ROWS) * t * (t - 1) / 2)}


def _inversions(ref: torch.Tensor, test: torch.Tensor) -> float:
    n = ref.shape[-1]
    return rank_inversions(ref.reshape(-1, n)[:INVERSION_ROWS], test.reshape(-1, n)[:INVERSION_ROWS])


def search_act(x: torch.Tensor, act: ActQuant, opts: SearchOptions, fn=None) -> dict:
    """Interval of one activation quantizer by the cosine of ``fn(x)`` vs ``fn(Q(x))``."""
    fn = fn or (lambda v: v)
    ref = fn(x)
    g, after = _argmax(opts.factors(), lambda g: token_cosine(fn(_fake_act(x, act, g)), ref))
    return {"factor": g, "objective_before": token_cosine(fn(_fake_act(x, act, 1.0)), ref),
            "objective_after": after}


# ------------------------------------------------------------------ the sequential pass

def _search_hooks(model, plan: QuantPlan, fp: dict, opts: SearchOptions, rng, log: dict, bar,
                  correct: bool) -> dict[str, list[Hook]]:
    depth = len(model.blocks)
    inputs = linear_inputs(depth)
    bc = correction_hooks(plan, fp, depth) if correct else {}
    hooks: dict[str, list[Hook]] = {}

    def linear_hook(point, x):
        layers = inputs[point]
        res = search_linear_group(_sample_rows(x, opts.max_tokens, rng), plan.acts[point],
                                  _terms(plan, fp, layers), opts)
        _apply_linear(plan, fp, point, layers, res)
        log[point] = res
        bar.update(1)

    def qkv_out_hook(point, x):
        blk = point.rsplit(".", 2)[0]
        heads = model.blocks[int(blk.split(".")[1])].attn.num_heads
        n, t = x.shape[0], x.shape[1]
        rows = torch.from_numpy(np.sort(rng.choice(t, min(opts.rank_rows, t), replace=False)))
        xq = plan.acts[point].fake(x)
        ref, hat = {}, {}
        for tag, xs, xqs in (("q", x[:, rows], xq[:, rows]), ("k", x, xq), ("v", x, xq)):
            if tag == "v":  # v's objective is per token: a token sample suffices
                idx = torch.from_numpy(np.sort(rng.choice(n * t, min(opts.max_tokens, n * t), replace=False)))
                xs, xqs = xs.reshape(n * t, -1)[idx], xqs.reshape(n * t, -1)[idx]
            name = f"{blk}.attn.{tag}"
            w, b = fp[name]
            ref[tag] = xs.float() @ torch.from_numpy(w).float().T + torch.from_numpy(b).float()
            hat[tag] = xqs.float() @ torch.from_numpy(plan.weights[name].dequant()).float().T + \
                torch.from_numpy(np.asarray(plan.biases[name], np.float64)).float()
        aq, ak = plan.acts[f"{blk}.attn.q"], plan.acts[f"{blk}.attn.k"]
        if _searchable(aq) and _searchable(ak):
            res = search_qk(ref["q"], ref["k"], hat["q"], hat["k"], aq, ak, heads, opts, rng)
            plan.acts[f"{blk}.attn.q"] = _scaled(aq, res["q_factor"])
            plan.acts[f"{blk}.attn.k"] = _scaled(ak, res["k_factor"])
            log[f"{blk}.attn.scores"] = res
        av = plan.acts[f"{blk}.attn.v"]
        if opts.search_v and _searchable(av):
            res = search_act(hat["v"], av, opts)
            plan.acts[f"{blk}.attn.v"] = _scaled(av, res["factor"])
            log[f"{blk}.attn.v"] = res

    def gelu_in_hook(point, x):
        act = plan.acts[point]
        if _searchable(act):
            res = search_act(_sample_rows(x, opts.max_tokens, rng), act, opts, F.gelu)
            plan.acts[point] = _scaled(act, res["factor"])
            log[point] = res

    for point in inputs:
        hooks[point] = [linear_hook] + bc.get(point, [])
        if point.endswith("norm1.out"):
            hooks[point].append(qkv_out_hook)
    if opts.search_gelu_input:
        for i in range(depth):
            hooks[f"blocks.{i}.mlp.fc1.out"] = [gelu_in_hook]
    return hooks


def refine_plan(model, spec, pixels: np.ndarray, plan: QuantPlan, *, search: bool = True,
                ranking: bool = True, bias_correction: bool = True, progress: bool = False,
                **opts) -> QuantPlan:
    """A copy of ``plan`` after the similarity/ranking search and bias correction.

    Works for any bit widths already in ``plan`` (uniform or mixed): each quantizer keeps its
    bits, kind and zero point; only intervals and float biases change. ``opts`` are
    :class:`SearchOptions` fields. ``ranking=False`` searches q/k by the score cosine alone."""
    sopts = SearchOptions.from_opts(opts)
    if not ranking:
        sopts = dataclasses.replace(sopts, rank_weight=0.0)
    plan = copy.deepcopy(plan)
    fp = layer_weights(model, spec)
    log: dict[str, dict] = {}
    rng = np.random.default_rng(sopts.seed)
    depth = len(model.blocks)
    if search:
        x = _sample_rows(patch_input(spec, pixels), sopts.max_tokens, rng)
        res = search_linear_group(x, None, _terms(plan, fp, ["patch_embed"]), sopts)
        _apply_linear(plan, fp, None, ["patch_embed"], res)
        log["patch_embed"] = res
    if bias_correction:
        correct_patch_embed(spec, pixels, plan, fp)
    with tqdm(total=len(linear_inputs(depth)), desc=f"{plan.method}: search", file=sys.stderr,
              disable=not (progress and search), leave=False) as bar:
        if search:
            hooks = _search_hooks(model, plan, fp, sopts, rng, log, bar, bias_correction)
        else:
            hooks = correction_hooks(plan, fp, depth) if bias_correction else {}
        if hooks:
            run_sequential(model, spec, pixels, plan, hooks)
    plan.notes["similarity_search"] = "on" if search else "off"
    plan.notes["ranking_weight"] = float(sopts.rank_weight) if search else 0.0
    plan.notes["bias_correction"] = "on" if bias_correction else "off"
    plan.notes["search_log"] = log
    return plan


def calibrate_ptq4vit(model, spec, pixels: np.ndarray, cfg: BitConfig, act_observer: str = "minmax",
                      progress: bool = True, attn: str = "auto", **opts) -> QuantPlan:
    """FQ-ViT baseline quantizers, then :func:`refine_plan` (search, ranking, bias correction)."""
    flags = {k: opts.pop(k) for k in REFINE_FLAGS if k in opts}
    SearchOptions.from_opts(opts)  # reject bad options before the (slow) baseline
    base = calibrate_fqvit(model, spec, pixels, cfg, act_observer, progress=progress, method="ptq4vit", attn=attn)
    return refine_plan(model, spec, pixels, base, progress=progress, **flags, **opts)


# ------------------------------------------------------------------ measurement

def layer_cosines(model, spec, pixels: np.ndarray, plan: QuantPlan,
                  other: QuantPlan | None = None) -> dict[str, tuple[float, float | None]]:
    """Layer → (cosine of ``plan``'s quantized layer output to the float layer's, the same for
    ``other``'s quantizers on the very same inputs), over every token, in ``plan``'s sequential
    pass. Makes the search's claim checkable independently of its token sample."""
    fp = layer_weights(model, spec)
    out: dict[str, tuple[float, float | None]] = {}

    def cos_of(p: QuantPlan, point, layer, x):
        xq = p.acts[point].fake(x) if point else x
        w, b = fp[layer]
        ref = x @ torch.from_numpy(w).T + torch.from_numpy(b)
        y = xq @ torch.from_numpy(p.weights[layer].dequant()).T + torch.from_numpy(
            np.asarray(p.biases[layer], np.float64))
        return token_cosine(y, ref)

    def measure(point, layers, x):
        x = x.double()
        for layer in layers:
            out[layer] = (cos_of(plan, point, layer, x), None if other is None else cos_of(other, point, layer, x))

    measure(None, ["patch_embed"], patch_input(spec, pixels))
    hooks = {p: [lambda point, x: measure(point, linear_inputs(len(model.blocks))[point], x)]
             for p in linear_inputs(len(model.blocks))}
    run_sequential(model, spec, pixels, plan, hooks)
    return out
