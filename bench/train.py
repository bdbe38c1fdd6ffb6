"""`train`: our `lora` training (methods/shared/training.py `train_classifier`, packed loglik scorer) against a plain
transformers + peft loop on the same model, LoRA init, batches and optimiser.

Both compute the same loss: cross-entropy over the K choices of each question's token-normalised
continuation log-likelihood. Ours packs the K choices behind one copy of the prompt and projects only the
scored positions onto the vocabulary; the plain loop runs one sequence per choice and a full-vocabulary
log-softmax at every position. Tokens/s counts the tokens of the plain per-choice layout for both, so the
two rates measure the same work; the step-0 losses must agree.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from backbones import Scorer
from bench.common import (FLOP_RULE, WORK_RULE, Context, Timer, add_target, frac_of_peak, gflops, matmul_rate,
                          nonembedding_params, report, train_work_flops)
from bench.plain import encode_plain, plain_class_logits
from methods.base import FitData
from methods.shared.training import train_classifier


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The example indices of train_classifier's first `steps` batches (its epoch loop, same generator)."""
    gen = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    while len(out) < steps:
        order = torch.randperm(n, generator=gen).tolist()
        out += [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return out[:steps]


def plain_training(ctx: Context, examples, batches, lora_cfg) -> tuple[float, float]:
    """(step-0 loss, seconds of the timed steps): one warm-up step on batch 0, then every batch."""
    from peft import get_peft_model

    bb = ctx.backbone()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.s.seed)  # the same LoRA A init as ours (LoRA._wrap seeds the same way)
        model = get_peft_model(bb.model, lora_cfg.peft_config())
    scorer = Scorer(bb.tokenizer, "loglik")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lora_cfg.lr, weight_decay=lora_cfg.weight_decay)
    model.train()

    def step(idx: list[int]) -> float:
        pb = encode_plain(scorer, [examples[i] for i in idx])
        with ctx.autocast(bb):
            logits = plain_class_logits(model, pb)
        loss = F.cross_entropy(logits, pb.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, lora_cfg.max_grad_norm)
        opt.step()
        return loss.item()

    first = step(batches[0])
    with Timer() as t:
        for idx in batches:
            step(idx)
    return first, t.seconds


def run(ctx: Context) -> dict:
    s = ctx.s
    rep = report("train", "lora training tokens/s: ours (packed scorer) vs a plain transformers+peft loop")
    examples = ctx.examples("train", s.train_steps * s.batch_size)
    batches = batch_order(len(examples), s.batch_size, s.train_steps, s.seed)
    # ours: a 1-step fit is the warm-up and gives the step-0 loss; then train_classifier times `steps` steps
    lora = ctx.method("lora", ctx.backbone(), {"max_steps": 1, "warmup_ratio": 0.0})
    plain_tokens = sum(encode_plain(lora.scorer, [examples[i] for i in b]).n_tokens for b in batches)
    packed_tokens = sum(lora.scorer.encode([examples[i] for i in b]).n_tokens for b in batches)
    first_ours = lora.fit(FitData(train=examples, validation=[], workdir=ctx.workdir))["first_loss"]
    cfg = dataclasses.replace(lora.config, max_steps=s.train_steps)
    params = [p for p in lora.model.parameters() if p.requires_grad]
    stats = train_classifier(lora.model, params, lora, examples, cfg, s.seed, desc="bench lora")
    ours_s = stats["train_seconds"]

    first_plain, plain_s = plain_training(ctx, examples, batches, cfg)

    n = nonembedding_params(lora.backbone.model)
    peak = ctx.peak()["gflops"]
    # the work each loop does (bench.common.WORK_RULE): real tokens, padded row length, head positions
    ours_b, plain_b = [], []
    for b in batches:
        eb = lora.scorer.encode([examples[i] for i in b])
        R, L = eb.input_ids.shape
        ours_b.append((R, L, eb.n_tokens, R * (L - int(eb.pred_pos.min()))))  # logits_to_keep = L - first
        pb = encode_plain(lora.scorer, [examples[i] for i in b])
        R, L = pb.input_ids.shape
        plain_b.append((R, L, pb.n_tokens, R * L))                              # full logits at every position
    n_lora = lora.trainable_parameters()
    work = {"ours": train_work_flops(lora.backbone.model, n, n_lora, ours_b),
            "plain": train_work_flops(lora.backbone.model, n, n_lora, plain_b)}
    c = lora.backbone.model.config
    T = round(work["ours"]["real_tokens"] / len(batches))          # tokens a step of ours processes
    P = round(sum(h for *_, h in ours_b) / len(batches))           # head positions a step of ours computes
    shapes = {f"{T}x{c.hidden_size}x{c.hidden_size}": (T, c.hidden_size, c.hidden_size),
              f"{T}x{c.hidden_size}x{c.intermediate_size}": (T, c.hidden_size, c.intermediate_size),
              f"{T}x{c.intermediate_size}x{c.hidden_size}": (T, c.intermediate_size, c.hidden_size),
              f"{P}x{c.hidden_size}x{c.vocab_size} (head)": (P, c.hidden_size, c.vocab_size)}
    shape_rates = {k: matmul_rate(*v, s.peak_repeats) for k, v in shapes.items()}
    shape_peak = max(shape_rates.values())
    fig = {"ours_seconds": ours_s, "plain_seconds": plain_s, "ours_tokens_per_s": plain_tokens / ours_s,
           "plain_tokens_per_s": plain_tokens / plain_s, "speedup": plain_s / ours_s,
           "plain_layout_tokens": plain_tokens, "packed_tokens": packed_tokens, "nonembedding_params": n,
           "ours_gflops": gflops(n, plain_tokens, ours_s, 6), "plain_gflops": gflops(n, plain_tokens, plain_s, 6),
           "step0_loss_ours": first_ours, "step0_loss_plain": first_plain,
           "step0_loss_abs_diff": abs(first_ours - first_plain),
           "work": work, "matmul_gflops_at_model_shapes": shape_rates, "peak_at_model_shapes": shape_peak}
    for k, secs in (("ours", ours_s), ("plain", plain_s)):
        fig[k + "_work_gflops"] = work[k]["flops"] / secs / 1e9
    rows = [[label, s.train_steps, f"{fig[k + '_seconds']:.2f}", f"{fig[k + '_tokens_per_s']:.0f}",
             f"{fig[k + '_gflops']:.1f}", frac_of_peak(fig[k + "_gflops"], peak)]
            for label, k in (("ours (packed loglik)", "ours"), ("plain (per-choice, full vocab)", "plain"))]
    rep["tables"].append({"title": f"train: {s.train_steps} steps x {s.batch_size} questions ({s.precision}), "
                                   f"{plain_tokens} plain-layout tokens ({packed_tokens} packed)",
                          "header": ["loop", "steps", "seconds", "tokens/s", "GFLOP/s", "of bf16 peak"], "rows": rows})
    rep["tables"].append({
        "title": "train, work actually done (WORK_RULE): utilisation against the square peak and the peak at "
                 "the model's own GEMM shapes",
        "header": ["loop", "real tokens", "padding", "work GFLOP/s", "of square peak", "of model-shape peak"],
        "rows": [[label, work[k]["real_tokens"], f"{work[k]['padding_fraction']:.1%}", f"{fig[k + '_work_gflops']:.1f}",
                  frac_of_peak(fig[k + "_work_gflops"], peak), frac_of_peak(fig[k + "_work_gflops"], shape_peak)]
                 for label, k in (("ours (packed loglik)", "ours"), ("plain (per-choice, full vocab)", "plain"))]})
    rep["tables"].append({"title": "bf16 matmul GFLOP/s at the model's shapes (m x k x n, best of "
                                   f"{s.peak_repeats})", "header": ["shape", "GFLOP/s"],
                          "rows": [[k, f"{v:.1f}"] for k, v in shape_rates.items()]})
    rep["figures"] = fig
    add_target(rep, "lora training tokens/s vs plain", fig["speedup"], 1.5, True, "x")
    rep["notes"] += [f"step-0 loss: ours {first_ours:.6f}, plain {first_plain:.6f}, |diff| "
                     f"{abs(first_ours - first_plain):.2e} (the same function from the same init"
                     + ("; bf16 rounding differs between the layouts)" if s.precision == "bf16" else ")"),
                     ("tokens/s = tokens of the plain per-choice layout / seconds, for both loops; "
                     "one warm-up step each, not timed"), FLOP_RULE, WORK_RULE]
    return rep

