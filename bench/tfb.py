"""`tfb`: our TFB sigma search (methods/tfb.py `fit_posthoc`) against a plain rendering of the reference
procedure (Wang-ML-Lab/bayesian-peft `tfblora`), on the same adapter, anchor set, sigma bounds, bisection
steps, samples per estimate and criterion.

Plain: the same SVD reparametrisation, then `iterations` bisection steps over [sigma_min, sigma_max]; each
step is a full anchor evaluation with nothing carried over: the MAP predictions recomputed, then N fresh
weight samples, each written into the LoRA A' matrices and run as its own forward pass over the anchor set.
It keeps the largest sigma seen to satisfy the constraint (the reference keeps the last failing one, which
by construction does not). Ours caches the MAP predictions, reuses one noise stream for every sigma, draws
the N samples in one batch-expanded pass, and checks sigma_max and sigma_min before bisecting. Both use the
same scorer, so the ratio is the search procedure's alone.

Constraint check: both sigmas are re-evaluated with the plain evaluator under one common seed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from backbones import Scorer
from bench.common import Context, Timer, add_target, report
from methods.registry import load_fit
from methods.shared.adapter import load_adapter, lora_layers
from methods.base import FitData


class PlainTFB:
    """The reference-style search on its own copy of the adapter."""

    def __init__(self, ctx: Context, adapter, anchor, cfg):
        self.ctx, self.cfg = ctx, cfg
        self.bb = ctx.backbone()
        self.model = load_adapter(self.bb, adapter)
        self.scorer = Scorer(self.bb.tokenizer, "loglik")
        self.batches = ctx.encode_all(self.scorer, anchor)  # tokenised once, like a pre-tokenised dataset
        self.labels = torch.cat([b.labels for b in self.batches])
        self.layers = []  # (A' weight, A' at the MAP, 1/d per row)
        with torch.no_grad():
            for _, layer in lora_layers(self.model):
                name = layer.active_adapters[0]
                A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
                U, d, Vh = torch.linalg.svd(B.double(), full_matrices=False)
                B.copy_((U * d).to(B.dtype))
                A.copy_((Vh @ A.double()).to(A.dtype))
                inv_d = torch.where(d > 1e-12, 1 / d.clamp(min=1e-12), torch.zeros_like(d)).float()
                self.layers.append((A, A.detach().clone(), inv_d))

    def _probs(self) -> torch.Tensor:
        out = []
        with torch.no_grad(), self.bb.autocast():
            for b in self.batches:
                out.append(self.scorer.class_logits(self.model, b).float().softmax(-1))
        return torch.cat(out)

    def degradation(self, sigma: float, gen: torch.Generator) -> float:
        """Relative NLL change of the N-sample predictive over the MAP one (the suite's `nll` criterion)."""
        map_nll = F.nll_loss(self._probs().clamp_min(1e-12).log(), self.labels).item()  # recomputed every time
        total = 0
        try:
            for _ in range(self.cfg.anchor_samples):
                with torch.no_grad():
                    for A, A0, inv_d in self.layers:
                        A.copy_(A0 + torch.randn(A0.shape, generator=gen) * (sigma * inv_d)[:, None])
                total = total + self._probs()
        finally:
            with torch.no_grad():
                for A, A0, _ in self.layers:
                    A.copy_(A0)
        nll = F.nll_loss((total / self.cfg.anchor_samples).clamp_min(1e-12).log(), self.labels).item()
        return (nll - map_nll) / map_nll

    def search(self, seed: int) -> tuple[float, float | None, int]:
        """(sigma, its measured degradation or None if never measured, evaluations)."""
        gen = torch.Generator().manual_seed(seed)
        lo, hi, d_lo = self.cfg.sigma_min, self.cfg.sigma_max, None
        for _ in range(self.cfg.iterations):
            mid = (lo + hi) / 2
            d = self.degradation(mid, gen)
            if d <= self.cfg.tolerance:
                lo, d_lo = mid, d
            else:
                hi = mid
        return lo, d_lo, self.cfg.iterations


def run(ctx: Context) -> dict:
    s = ctx.s
    rep = report("tfb", "TFB sigma search: ours vs a plain reference-style bisection")
    if s.tfb_anchor > s.adapter_examples:
        raise ValueError(f"--tfb-anchor {s.tfb_anchor} > --adapter-examples {s.adapter_examples}: the anchor set is "
                         "drawn from the adapter's training questions")
    adapter, _ = ctx.adapter()
    anchor = ctx.fit_examples()[: s.tfb_anchor]
    settings = {"variant": "paper", "anchor_size": len(anchor), "anchor_samples": s.tfb_samples, "iterations": s.tfb_iterations,
                "sigma_min": s.tfb_sigma_min, "sigma_max": s.tfb_sigma_max, "criterion": "nll"}
    ours = ctx.method("tfb", ctx.backbone(), settings)
    with Timer() as t_ours:
        fitted = ours.fit(FitData(train=anchor, validation=[], workdir=ctx.workdir,
                                  base=load_fit("lora", adapter, ours.backbone, ours.scorer)))
    plain = PlainTFB(ctx, adapter, anchor, ours.config)
    with Timer() as t_plain:
        p_sigma, p_deg, p_evals = plain.search(s.seed + 1)

    tol, check_seed = ours.config.tolerance, s.seed + 12345
    if p_deg is None:  # plain never accepted a midpoint: its answer is sigma_min, measured here
        p_deg = plain.degradation(p_sigma, torch.Generator().manual_seed(s.seed + 1))
    recheck = {name: plain.degradation(sig, torch.Generator().manual_seed(check_seed))
               for name, sig in (("ours", fitted["sigma_q"]), ("plain", p_sigma))}
    o_evals = len(fitted["search"])
    fig = {"ours_seconds": fitted["search_seconds"], "ours_fit_seconds": t_ours.seconds, "plain_seconds": t_plain.seconds,
           "speedup": t_plain.seconds / fitted["search_seconds"], "ours_evaluations": o_evals,
           "plain_evaluations": p_evals,
           "per_evaluation_speedup": (t_plain.seconds / p_evals) / (fitted["search_seconds"] / o_evals),
           "ours_sigma": fitted["sigma_q"], "plain_sigma": p_sigma, "epsilon": tol,
           "ours_degradation_in_search": fitted["degradation"], "plain_degradation_in_search": p_deg,
           "recheck_seed": check_seed, "ours_degradation_recheck": recheck["ours"],
           "plain_degradation_recheck": recheck["plain"], "settings": settings}
    rows = []
    for name, secs, evals, sig, deg in (("ours", fitted["search_seconds"], o_evals, fitted["sigma_q"], fitted["degradation"]),
                                        ("plain", t_plain.seconds, p_evals, p_sigma, p_deg)):
        # the constraint as each search defines it (its own Monte Carlo draws); the recheck with other draws is
        # shown, not required: a sigma on the boundary passes a fresh draw only about half the time
        ok = s.tfb_sigma_min <= sig <= s.tfb_sigma_max and deg <= tol
        fig[f"{name}_satisfies"] = bool(ok)
        rows.append([name, f"{secs:.2f}", evals, f"{sig:.5g}", "-" if deg is None else f"{deg:.2e}",
                     f"{recheck[name]:.2e}", "yes" if ok else "NO"])
    rep["tables"].append({"title": f"tfb: {len(anchor)} anchor questions, N={s.tfb_samples} samples, "
                                   f"{s.tfb_iterations} bisection steps, sigma in [{s.tfb_sigma_min:g}, "
                                   f"{s.tfb_sigma_max:g}], epsilon {tol:g} (relative NLL change)",
                          "header": ["search", "search s", "evaluations", "sigma", "degradation (search)",
                                     "degradation (recheck)", "<= epsilon"], "rows": rows})
    rep["figures"] = fig
    add_target(rep, "TFB search vs plain (speed-up)", fig["speedup"], 3, True, "x")
    rep["targets"][-1]["met"] = bool(rep["targets"][-1]["met"] and fig["ours_satisfies"])
    rep["notes"] += [(f"ours: {fitted['search_seconds']:.2f} s includes the SVD, the cached MAP pass and {o_evals} "
                     f"evaluations; plain: the SVD is done before timing, then {p_evals} evaluations"),
                     ("<= epsilon: the degradation each search measured for its own answer (its own noise draws); "
                     "recheck: both sigmas evaluated again by the plain evaluator with one other seed, for "
                     "comparison — the answer sits on the boundary, so fresh draws land on either side")]
    return rep
