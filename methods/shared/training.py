"""The shared training loop: AdamW, linear warmup then linear decay, bf16 autocast, cross-entropy on the
scorer's K class logits. Trained methods reuse it and add their own loss terms through `extra_loss`."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from methods.base import ConfigError, MethodConfig


@dataclass
class TrainConfig(MethodConfig):
    lr: float = 3e-4                # AdamW learning rate (peak of the linear warmup / decay)
    weight_decay: float = 0.0       # 0 = MLE; > 0 = MAP (AdamW's decoupled decay)
    epochs: int = 3                 # passes over the training questions
    max_steps: int = 0              # > 0 overrides epochs
    batch_size: int = 8             # questions per step (the last, smaller batch included)
    warmup_ratio: float = 0.1       # fraction of the steps spent warming up the learning rate
    max_grad_norm: float = 1.0      # clip of the likelihood gradient only (0: no clip)
    search_space: ClassVar[dict] = {"lr": ("float", 1e-5, 2e-3, True), "weight_decay": ("float", 0.0, 0.1, False)}

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr} must be > 0 (a learning rate such as 3e-4)")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay} must be >= 0")
        if self.epochs < 1 and self.max_steps < 1:
            raise ConfigError("epochs must be >= 1 (or set max_steps >= 1)")
        if self.max_steps < 0:
            raise ConfigError(f"max_steps={self.max_steps} must be >= 0 (0: use epochs)")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")


def lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def _flat(params) -> list:
    """Tensors of `params`, which may be a list of tensors or of optimizer param groups."""
    out = []
    for p in params:
        out.extend(p["params"] if isinstance(p, dict) else [p])
    return out


def train_classifier(model, params, method, examples, cfg: TrainConfig, seed: int,
                     extra_loss: Callable[[int, int], torch.Tensor] | None = None, desc: str = "train",
                     kl_optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Minimise CE(class logits, label) [+ extra_loss(step, batch size)] over `params` (tensors or groups).

    `method.scorer`/`method.backbone` give the forward; the loop visits every example each epoch (the last,
    smaller batch included) in an order fixed by `seed`.

    The likelihood and the extra term (a KL) are back-propagated separately and `max_grad_norm` clips only
    the likelihood's gradient: one global clip over both let a large KL gradient shrink the likelihood
    gradient on every step (issue 11: pre-clip norms of 170-1600 against a clip of 1). The KL gradient is
    then added unclipped. With `kl_optimizer` (BLoB's reference), the extra term is stepped by that optimizer
    instead, after the main step (its parameters keep any likelihood gradient the main optimizer does not
    own, as in the reference). Per epoch the mean likelihood, extra term, pre-clip likelihood gradient norm,
    extra-term gradient norm and the fraction of clipped steps are recorded, separately.
    """
    scorer, bb = method.scorer, method.backbone
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    main = _flat(params)
    schedule = lr_lambda(total, int(cfg.warmup_ratio * total))
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, schedule) for o in (opt, kl_optimizer) if o is not None]
    kl_params = _flat(kl_optimizer.param_groups) if kl_optimizer is not None else main
    gen = torch.Generator().manual_seed(seed)
    model.train()
    step, tokens, losses, t0 = 0, 0, [], time.perf_counter()
    epochs: list[dict] = []
    bar = tqdm(total=total, desc=desc, leave=False, mininterval=2)
    while step < total:
        order = torch.randperm(len(examples), generator=gen).tolist()
        acc = {"examples": 0, "nll_sum": 0.0, "extra_sum": 0.0, "lik_grad_norm_sum": 0.0,
               "extra_grad_norm_sum": 0.0, "clipped": 0, "steps": 0}
        for i in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            batch = scorer.encode([examples[j] for j in order[i:i + cfg.batch_size]]).to(bb.device)
            with bb.autocast():
                logits = scorer.class_logits(model, batch)
            nll = F.cross_entropy(logits, batch.labels)
            if not torch.isfinite(nll):
                raise FloatingPointError(f"training loss became {nll.item()} at step {step}; "
                                         f"try a smaller lr (now {cfg.lr})")
            opt.zero_grad(set_to_none=True)
            extra = None
            if kl_optimizer is None:
                extra = extra_loss(step, batch.size) if extra_loss is not None else None
                nll.backward(retain_graph=extra is not None)  # the KL may share the forward's weight sample
                lik_norm = _clip(main, cfg.max_grad_norm)
                if extra is not None:
                    acc["extra_grad_norm_sum"] += _backward_extra(extra, kl_params)
                opt.step()
            else:  # the reference's two steps: likelihood by `opt`, then the KL, at the new values, by its own
                kl_optimizer.zero_grad(set_to_none=True)
                nll.backward()
                lik_norm = _clip(main, cfg.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
                extra = extra_loss(step, batch.size)
                acc["extra_grad_norm_sum"] += _backward_extra(extra, kl_params)
                kl_optimizer.step()
            loss = nll.detach() if extra is None else nll.detach() + extra.detach()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss (likelihood + KL) became {loss.item()} at step {step}; "
                                         f"try a smaller lr (now {cfg.lr})")
            acc["clipped"] += int(cfg.max_grad_norm > 0 and lik_norm > cfg.max_grad_norm)
            if extra is not None:
                acc["extra_sum"] += extra.item()
            for s in scheds:
                s.step()
            step += 1
            tokens += batch.n_tokens
            losses.append(loss.item())
            acc["examples"] += batch.size
            acc["nll_sum"] += nll.item() * batch.size
            acc["lik_grad_norm_sum"] += lik_norm
            acc["steps"] += 1
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", refresh=False)
        if acc["steps"]:
            n = acc["steps"]
            epochs.append({"epoch": len(epochs) + 1, "steps": n, "nll": acc["nll_sum"] / acc["examples"],
                           "extra": acc["extra_sum"] / n if extra_loss is not None else None,
                           "lik_grad_norm": acc["lik_grad_norm_sum"] / n,
                           "extra_grad_norm": acc["extra_grad_norm_sum"] / n if extra_loss is not None else None,
                           "clipped_fraction": acc["clipped"] / n})
    bar.close()
    model.eval()
    secs = time.perf_counter() - t0
    return {"steps": step, "train_tokens": tokens, "train_seconds": secs, "tokens_per_second": tokens / secs,
            "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "first_loss": losses[0] if losses else None,
            "epochs": epochs}


def _clip(params, max_norm: float) -> float:
    """Clip the gradient of `params` to `max_norm` (<= 0: no clip); return the norm before clipping."""
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf")))


def _backward_extra(extra: torch.Tensor, params) -> float:
    """Back-propagate the extra term (accumulating into .grad) and return the norm it added over `params`."""
    if not extra.requires_grad:  # a constant term: nothing to add
        return 0.0
    before = [None if p.grad is None else p.grad.clone() for p in params]
    extra.backward()
    return _added_norm(params, before)


def _added_norm(params, before) -> float:
    """L2 norm of what the last backward added to the gradients of `params` (before: their earlier grads)."""
    sq = 0.0
    for p, b in zip(params, before):
        if p.grad is not None:
            d = p.grad if b is None else p.grad - b
            sq += float(d.double().pow(2).sum())
    return sq ** 0.5
