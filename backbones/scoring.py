"""Scorers: one backbone forward -> K class logits per example. The only place prompts meet tokens.

- `loglik`: class k's logit is log p(continuation_k | context_k), summed over the continuation's tokens and
  divided by its token count (`token`, default), its character count (`char`) or not at all (`none`).
- `label`: class k's logit is the next-token logit of label word k at the prompt's last position.

Sequences are left-padded so that every row ends at the last position; the only logits the scorer needs
are then the last few positions, so we ask the model for exactly those (`logits_to_keep`) instead of
a full-vocabulary projection of every position, which dominates small-model cost.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from tasks.types import MCExample

SCORING_MODES = ("loglik", "label")
NORMALIZATIONS = ("token", "char", "none")


@dataclass
class EncodedBatch:
    ids: list[str]
    labels: torch.Tensor          # [B]
    choice_mask: torch.Tensor     # [B, K] True where example b has a choice k
    input_ids: torch.Tensor       # [R, L] left-padded rows (loglik: one per choice; label: one per example)
    attention_mask: torch.Tensor  # [R, L]
    row_example: torch.Tensor     # [R] which example a row belongs to
    row_choice: torch.Tensor      # [R] which choice a row scores (label mode: 0)
    target_ids: torch.Tensor      # loglik: [R, C] right-aligned continuation tokens; label: [B, K] label token ids
    target_mask: torch.Tensor     # loglik: [R, C] 1 on real continuation tokens
    norm: torch.Tensor            # loglik: [R] divisor of the summed log-likelihood

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def expand(self, s: int) -> "EncodedBatch":
        """The batch repeated `s` times, sample-major (rows of copy j come after those of copy j-1).

        Stochastic layers then give each copy its own weight sample, so S samples cost one forward pass
        (the batch-expand trick); `class_logits` of the result is [s * B, K].
        """
        B = self.size
        rep = lambda t: t.repeat(s, *([1] * (t.dim() - 1)))  # noqa: E731
        offsets = (torch.arange(s, device=self.row_example.device) * B).repeat_interleave(len(self.row_example))
        return replace(self, ids=self.ids * s, labels=rep(self.labels), choice_mask=rep(self.choice_mask),
                       input_ids=rep(self.input_ids), attention_mask=rep(self.attention_mask),
                       row_example=rep(self.row_example) + offsets, row_choice=rep(self.row_choice),
                       target_ids=rep(self.target_ids), target_mask=rep(self.target_mask) if self.target_mask.numel() else self.target_mask,
                       norm=rep(self.norm) if self.norm.numel() else self.norm)

    def to(self, device) -> "EncodedBatch":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})


class Scorer:
    def __init__(self, tokenizer, mode: str = "loglik", normalization: str = "token", max_length: int = 1024):
        if mode not in SCORING_MODES:
            raise ValueError(f"scoring {mode!r} is not one of {', '.join(SCORING_MODES)}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization {normalization!r} is not one of {', '.join(NORMALIZATIONS)}")
        self.tok, self.mode, self.normalization, self.max_length = tokenizer, mode, normalization, max_length
        self._label_ids: dict[tuple, list[int]] = {}

    def describe(self) -> dict:
        return {"mode": self.mode, "normalization": self.normalization if self.mode == "loglik" else None}

    # ---- encoding -------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _prefix(self) -> list[int]:
        bos = self.tok.bos_token_id
        # Prepend BOS only for tokenizers that do so themselves (Llama-2/3, Gemma); SmolLM2 does not.
        return [bos] if bos is not None and self.tok("a")["input_ids"][:1] == [bos] else []

    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's rule: tokenize the whole string and take the continuation as what follows the context."""
        ctx = self._encode(context)
        whole = self._encode(context + continuation)
        if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
            return ctx, whole[len(ctx):]
        return ctx, self._encode(continuation)

    def label_token_ids(self, words: tuple[str, ...], prompt: str) -> list[int]:
        """One token id per label word, as the model would write it after the prompt.

        Try " A" then "A": the first variant whose K first tokens are all distinct wins. Cached per word set.
        """
        if words in self._label_ids:
            return self._label_ids[words]
        base = self._encode(prompt)
        for sep in (" ", ""):
            ids = []
            for w in words:
                whole = self._encode(prompt + sep + w)
                ids.append(whole[len(base)] if whole[: len(base)] == base and len(whole) > len(base)
                           else self._encode(sep + w)[0])
            if len(set(ids)) == len(ids):
                self._label_ids[words] = ids
                return ids
        raise ValueError(f"label words {words} do not map to distinct tokens with this tokenizer")

    def encode(self, examples: list[MCExample]) -> EncodedBatch:
        B, K = len(examples), max(e.n_choices for e in examples)
        choice_mask = torch.zeros(B, K, dtype=torch.bool)
        for b, e in enumerate(examples):
            choice_mask[b, : e.n_choices] = True
        labels = torch.tensor([e.label for e in examples])
        prefix = self._prefix()
        rows, row_ex, row_ch, conts, norms = [], [], [], [], []
        if self.mode == "label":
            target = torch.zeros(B, K, dtype=torch.long)
            for b, e in enumerate(examples):
                rows.append(prefix + self._encode(e.label_prompt))
                target[b, : e.n_choices] = torch.tensor(self.label_token_ids(e.label_words, e.label_prompt))
                row_ex.append(b), row_ch.append(0)
            tmask, norm = torch.zeros(0), torch.zeros(0)
        else:
            for b, e in enumerate(examples):
                for k, (ctx, cont) in enumerate(zip(e.contexts, e.continuations)):
                    c_ids, t_ids = self._split(ctx, cont)
                    rows.append(prefix + c_ids + t_ids)
                    conts.append(t_ids)
                    row_ex.append(b), row_ch.append(k)
                    norms.append({"token": len(t_ids), "char": len(cont), "none": 1}[self.normalization])
            C = max(len(c) for c in conts)
            target = torch.full((len(rows), C), self.tok.pad_token_id, dtype=torch.long)
            tmask = torch.zeros(len(rows), C)
            for r, t in enumerate(conts):  # right-aligned: continuations end at the last position
                target[r, C - len(t):] = torch.tensor(t)
                tmask[r, C - len(t):] = 1
            norm = torch.tensor(norms, dtype=torch.float32).clamp(min=1)
        rows = [r[-self.max_length:] for r in rows]  # truncate from the left: keep the end of the prompt
        L = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), L), self.tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros(len(rows), L, dtype=torch.long)
        for r, ids in enumerate(rows):
            input_ids[r, L - len(ids):] = torch.tensor(ids)
            attn[r, L - len(ids):] = 1
        return EncodedBatch([e.id for e in examples], labels, choice_mask, input_ids, attn,
                            torch.tensor(row_ex), torch.tensor(row_ch), target, tmask, norm)

    # ---- scoring --------------------------------------------------------------------------------
    def class_logits(self, model, batch: EncodedBatch, **forward_kwargs) -> torch.Tensor:
        """[B, K] float32 class logits (-inf where an example has fewer than K choices)."""
        position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        if self.mode == "label":
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        position_ids=position_ids, logits_to_keep=1, use_cache=False, **forward_kwargs)
            logits = out.logits[:, -1].float().gather(1, batch.target_ids)
            return logits.masked_fill(~batch.choice_mask, float("-inf"))
        C = batch.target_ids.shape[1]
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=position_ids, logits_to_keep=C + 1, use_cache=False, **forward_kwargs)
        logp = out.logits[:, :-1].float().log_softmax(-1)            # position t predicts token t+1
        tok_ll = logp.gather(-1, batch.target_ids.unsqueeze(-1)).squeeze(-1) * batch.target_mask
        row_scores = tok_ll.sum(-1) / batch.norm
        logits = torch.full(batch.choice_mask.shape, float("-inf"), device=row_scores.device)
        logits[batch.row_example, batch.row_choice] = row_scores
        return logits
