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
    lr: float = 3e-4
    weight_decay: float = 0.0       # 0 = MLE; > 0 = MAP (AdamW's decoupled decay)
    epochs: int = 3
    max_steps: int = 0              # > 0 overrides epochs
    batch_size: int = 8
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    search_space: ClassVar[dict] = {"lr": ("float", 1e-5, 2e-3, True), "weight_decay": ("float", 0.0, 0.1, False)}

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr} must be > 0 (a learning rate such as 3e-4)")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay} must be >= 0")
        if self.epochs < 1 and self.max_steps < 1:
            raise ConfigError("epochs must be >= 1 (or set max_steps >= 1)")
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


def train_classifier(model, params, method, examples, cfg: TrainConfig, seed: int,
                     extra_loss: Callable[[int, int], torch.Tensor] | None = None, desc: str = "train") -> dict:
    """Minimise CE(class logits, label) [+ extra_loss(step, batch size)] over `params`.

    `method.scorer`/`method.backbone` give the forward; the loop visits every example each epoch (the last,
    smaller batch included) in an order fixed by `seed`.
    """
    scorer, bb = method.scorer, method.backbone
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, int(cfg.warmup_ratio * total)))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    step, tokens, losses, t0 = 0, 0, [], time.perf_counter()
    bar = tqdm(total=total, desc=desc, leave=False, mininterval=2)
    while step < total:
        order = torch.randperm(len(examples), generator=gen).tolist()
        for i in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            batch = scorer.encode([examples[j] for j in order[i:i + cfg.batch_size]]).to(bb.device)
            with bb.autocast():
                logits = scorer.class_logits(model, batch)
            loss = F.cross_entropy(logits, batch.labels)
            if extra_loss is not None:
                loss = loss + extra_loss(step, batch.size)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {step}; "
                                         f"try a smaller lr (now {cfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            step += 1
            tokens += batch.n_tokens
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", refresh=False)
    bar.close()
    model.eval()
    secs = time.perf_counter() - t0
    return {"steps": step, "train_tokens": tokens, "train_seconds": secs, "tokens_per_second": tokens / secs,
            "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "first_loss": losses[0] if losses else None}
