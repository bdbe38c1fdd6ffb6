"""Laplace-LoRA defaults by evidence (issue 11): on ONE lora adapter, full vs truncated Kronecker factors,
marglik vs val_nll prior, probit vs MC link. Validation only: the validation split is cut in two halves,
`select` (val_nll chooses the prior there) and `assess` (every variant is scored there).

    .venv/bin/python evidence/issue11/laplace_variants.py --adapter results/protocol/<lora run>/artifacts \
        --task arc_easy --limit-train 1000 --out evidence/issue11/laplace_variants.json
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from backbones import BackboneConfig, Scorer, load_backbone  # noqa: E402
from methods.base import FitData  # noqa: E402
from methods.laplace_lora.predictive import glm_logits, glm_logprobs  # noqa: E402
from methods.laplace_lora.prior import choose_marglik, grid  # noqa: E402
from methods.laplace_lora import LaplaceLoRA  # noqa: E402
from methods.registry import load_fit  # noqa: E402
from methods.settings import make_config  # noqa: E402
from metrics import compute_metrics  # noqa: E402
from tasks import load_split  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--adapter", required=True)
ap.add_argument("--task", default="arc_easy")
ap.add_argument("--limit-train", type=int, default=1000)
ap.add_argument("--data-dir", default="../shared/datasets")
ap.add_argument("--mc-samples", type=int, default=10000)
ap.add_argument("--out", default="evidence/issue11/laplace_variants.json")
ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
ap.add_argument("--model", default="smollm2-135m", help="the adapter's model (tiny-random-llama to try the script)")
ap.add_argument("--limit-val", type=int, default=None, help="first N validation questions (to try the script)")
args = ap.parse_args()

bb = load_backbone(BackboneConfig(args.model, precision="bf16", device=args.device))
scorer = Scorer(bb.tokenizer, "loglik", "token")
train = load_split(args.task, "train", data_dir=args.data_dir, limit=args.limit_train)
val = load_split(args.task, "validation", data_dir=args.data_dir, limit=args.limit_val)
select, assess = val[: len(val) // 2], val[len(val) // 2:]
lams = grid(1e-4, 1e4, 21)


def moments(m, examples, lam):
    """(mean [N, K], cov [P, N, K, K], mask [N, K], labels [N]) of the linearised logits, batches of 8."""
    K = max(e.n_choices for e in examples)
    means, covs, masks, labels = [], [], [], []
    for i in range(0, len(examples), 8):
        b = scorer.encode(examples[i:i + 8]).to(bb.device)
        mean, cov = glm_logits(m.model, scorer, bb, m.layers, m.posterior, b, lam)
        k = mean.shape[1]
        # moments come back to the CPU: the MC link below draws from a CPU generator, on any device
        means.append(torch.nn.functional.pad(mean.float().cpu(), (0, K - k), value=float("-inf")))
        covs.append(torch.nn.functional.pad(cov.float().cpu(), (0, K - k, 0, K - k)))
        masks.append(torch.nn.functional.pad(b.choice_mask.cpu(), (0, K - k), value=False))
        labels.append(b.labels.cpu())
    return torch.cat(means), torch.cat(covs, 1), torch.cat(masks), torch.cat(labels)


def probs(mean, cov, mask, link, seed=0):
    g = torch.Generator().manual_seed(seed)
    return glm_logprobs(mean, cov, mask, link, args.mc_samples, g).exp().double().numpy()


out = {"task": args.task, "adapter": args.adapter, "train_n": len(train), "select_n": len(select),
       "assess_n": len(assess), "mc_samples": args.mc_samples, "device": str(bb.device), "variants": []}
for full_max in (4096, 256):
    cfg = make_config(LaplaceLoRA.Config, {"kfac_full_max": full_max, "prior_method": "fixed"})
    m = LaplaceLoRA(cfg, bb, scorer, 0)
    t0 = time.time()
    m.fit(FitData(train=train, validation=[], workdir=Path("/tmp"), base=load_fit("lora", args.adapter, bb, scorer)))
    fit_s = time.time() - t0
    theta_sq = float(sum(p.weight.detach().double().pow(2).sum() for _, p in m.layers))
    lam_ml, _ = choose_marglik(m.posterior, theta_sq, m.fitted["train_loglik_map"], lams)
    mean_s, cov_s, mask_s, y_s = moments(m, select, lams.float())
    priors = {"marglik": lam_ml}
    for link in ("probit", "mc"):
        nll = [compute_metrics(probs(mean_s, cov_s[j], mask_s, link), y_s.numpy())["nll"] for j in range(len(lams))]
        priors[f"val_nll[{link}]"] = float(lams[int(np.argmin(nll))])
    names = list(priors)
    mean_a, cov_a, mask_a, y_a = moments(m, assess, torch.tensor([priors[n] for n in names]))
    map_p = torch.softmax(mean_a.masked_fill(~mask_a, float("-inf")), -1).double().numpy()
    row = {"kfac_full_max": full_max, "low_rank_layers": m.fitted["low_rank_layers"], "fit_seconds": round(fit_s, 1),
           "theta_sq_mean": theta_sq / m.trainable_parameters(), "priors": priors,
           "map": compute_metrics(map_p, y_a.numpy()), "scores": {}}
    for j, name in enumerate(names):
        for link in ("probit", "mc"):
            p = probs(mean_a, cov_a[j], mask_a, link)
            met = compute_metrics(p, y_a.numpy())
            if link == "mc":  # do argmaxes flip between two MC draws of this size?
                met["mc_argmax_flips"] = int((probs(mean_a, cov_a[j], mask_a, link, seed=1).argmax(1) != p.argmax(1)).sum())
            met["tv_to_map"] = float(0.5 * np.abs(p - map_p).sum(1).mean())
            row["scores"][f"{name}|{link}"] = {k: met[k] for k in ("acc", "ece", "nll", "mean_conf", "tv_to_map")
                                               if k in met} | ({"mc_argmax_flips": met["mc_argmax_flips"]}
                                                               if "mc_argmax_flips" in met else {})
    out["variants"].append(row)
    print(json.dumps(row, indent=1), flush=True)
Path(args.out).write_text(json.dumps(out, indent=1))
