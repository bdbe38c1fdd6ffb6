"""Scorers: one backbone forward -> K class logits per example. The only place prompts meet tokens.

- `loglik`: class k's logit is log p(continuation_k | context_k), summed over the continuation's tokens and
  divided by its token count (`token`, default), its character count (`char`) or not at all (`none`).
- `label`: class k's logit is the next-token logit of label word k at the prompt's last position.

Rows are left-padded, so the scored tokens sit at the end and the model is asked only for the logits of
those last positions (`logits_to_keep`) instead of a full-vocabulary projection of every position, which
dominates small-model cost. In `loglik` mode the K choices of a question are packed into one row by
default: the shared prompt once, then each choice as a segment that attends to the prompt and to itself
only (a block-causal 4-D mask; positions restart after the prompt), which is exactly the per-choice
computation with the prompt's tokens processed once instead of K times. `pack=False` keeps one row per
choice (the plain layout, used as the reference in tests and benchmarks).
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
    input_ids: torch.Tensor       # [R, L] left-padded rows
    attention_mask: torch.Tensor  # [R, L] 1 on real tokens
    position_ids: torch.Tensor    # [R, L]
    segments: torch.Tensor        # packed loglik: [R, L] -1 pad, 0 shared prompt, k+1 choice k; else empty
    # One query per scored (example, choice): which row's logits, at which positions, predict which tokens.
    row_example: torch.Tensor     # [Q] example of query q
    row_choice: torch.Tensor      # [Q] choice of query q
    score_row: torch.Tensor       # [Q] row holding query q's tokens (label mode: [B])
    pred_pos: torch.Tensor        # loglik: [Q, C] positions whose logits predict target_ids
    target_ids: torch.Tensor      # loglik: [Q, C] continuation tokens; label: [B, K] label token ids
    target_mask: torch.Tensor     # loglik: [Q, C] 1 on real continuation tokens
    norm: torch.Tensor            # loglik: [Q] divisor of the summed log-likelihood

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
        B, R = self.size, self.input_ids.shape[0]

        def rep(t, offset=0):
            if t.numel() == 0:
                return t
            out = t.repeat(s, *([1] * (t.dim() - 1)))
            if offset:
                out = out + (torch.arange(s, device=t.device) * offset).repeat_interleave(t.shape[0]).view(
                    -1, *([1] * (t.dim() - 1)))
            return out
        return replace(self, ids=self.ids * s, labels=rep(self.labels), choice_mask=rep(self.choice_mask),
                       input_ids=rep(self.input_ids), attention_mask=rep(self.attention_mask),
                       position_ids=rep(self.position_ids), segments=rep(self.segments),
                       row_example=rep(self.row_example, B), row_choice=rep(self.row_choice),
                       score_row=rep(self.score_row, R), pred_pos=rep(self.pred_pos), target_ids=rep(self.target_ids),
                       target_mask=rep(self.target_mask), norm=rep(self.norm))

    def to(self, device) -> "EncodedBatch":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(x) for x in seqs)
    for i in range(n):
        if any(x[i] != seqs[0][i] for x in seqs[1:]):
            return i
    return n


class Scorer:
    def __init__(self, tokenizer, mode: str = "loglik", normalization: str = "token", max_length: int = 2048,
                 pack: bool = True):
        if mode not in SCORING_MODES:
            raise ValueError(f"scoring {mode!r} is not one of {', '.join(SCORING_MODES)}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization {normalization!r} is not one of {', '.join(NORMALIZATIONS)}")
        self.tok, self.mode, self.normalization, self.max_length = tokenizer, mode, normalization, max_length
        self.pack = pack and mode == "loglik"  # share each prompt across its K choices (loglik only)
        self._label_ids: dict[tuple, list[int]] = {}

    def describe(self) -> dict:
        return {"mode": self.mode, "normalization": self.normalization if self.mode == "loglik" else None,
                "packed_choices": self.pack}

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
        rows, segs, q_row, q_ex, q_ch, q_pos, q_tgt, norms = [], [], [], [], [], [], [], []
        if self.mode == "label":
            target = torch.zeros(B, K, dtype=torch.long)
            for b, e in enumerate(examples):
                rows.append(prefix + self._encode(e.label_prompt))
                target[b, : e.n_choices] = torch.tensor(self.label_token_ids(e.label_words, e.label_prompt))
            q_row = list(range(B))
        else:
            for b, e in enumerate(examples):
                pairs = [self._split(c, t) for c, t in zip(e.contexts, e.continuations)]
                if not all(c for c, _ in pairs):
                    raise ValueError(f"example {e.id}: empty context; loglik scoring needs at least one prompt token")
                fulls = [prefix + c + t for c, t in pairs]
                # Packed: the K sequences share their common prefix (the prompt) once; each choice's own
                # tokens follow as a segment that sees the prompt and itself only (block mask below).
                shared = min(_common_prefix(fulls), min(len(prefix) + len(c) for c, _ in pairs)) if self.pack else 0
                row, seg = fulls[0][:shared], [0] * shared
                for k, ((_, t), full) in enumerate(zip(pairs, fulls)):
                    if not self.pack:
                        row, seg = [], []
                    start, tail = len(row), full[shared:]
                    row, seg = row + tail, seg + [k + 1] * len(tail)
                    first = start + len(tail) - len(t)  # position of the first scored token
                    # a token is predicted by the position before it; a segment's first token by the prompt's last
                    q_pos.append([p - 1 if p > start else shared - 1 for p in range(first, first + len(t))])
                    q_tgt.append(t)
                    q_ex.append(b), q_ch.append(k), q_row.append(len(rows))
                    norms.append({"token": len(t), "char": len(e.continuations[k]), "none": 1}[self.normalization])
                    if not self.pack:
                        rows.append(row), segs.append(seg)
                if self.pack:
                    rows.append(row), segs.append(seg)
        over = max(len(r) for r in rows) - self.max_length
        if over > 0:
            raise ValueError(f"a sequence is {over} tokens longer than max_length={self.max_length}; "
                             "raise max_length or shorten the prompts")
        L = max(len(r) for r in rows)
        pad = [L - len(r) for r in rows]
        input_ids = torch.full((len(rows), L), self.tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros(len(rows), L, dtype=torch.long)
        for r, ids in enumerate(rows):
            input_ids[r, pad[r]:] = torch.tensor(ids)
            attn[r, pad[r]:] = 1
        segments = torch.zeros(0, dtype=torch.long)
        if self.pack and self.mode == "loglik":
            segments = torch.full((len(rows), L), -1, dtype=torch.long)
            position_ids = torch.zeros(len(rows), L, dtype=torch.long)
            for r, sg in enumerate(segs):
                segments[r, pad[r]:] = torch.tensor(sg)
                n0 = sg.count(0)  # choice segments restart their positions right after the prompt
                local = [i if g == 0 else n0 + i - sg.index(g) for i, g in enumerate(sg)]
                position_ids[r, pad[r]:] = torch.tensor(local)
        else:
            position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        empty = torch.zeros(0)
        if self.mode == "label":
            return EncodedBatch([e.id for e in examples], labels, choice_mask, input_ids, attn, position_ids, segments,
                                torch.arange(B), torch.zeros(B, dtype=torch.long), torch.tensor(q_row),
                                torch.zeros(0, dtype=torch.long), target, empty, empty)
        C = max(len(t) for t in q_tgt)
        pred_pos = torch.zeros(len(q_tgt), C, dtype=torch.long)
        target = torch.full((len(q_tgt), C), self.tok.pad_token_id, dtype=torch.long)
        tmask = torch.zeros(len(q_tgt), C)
        for q, (pos, t) in enumerate(zip(q_pos, q_tgt)):
            off = pad[q_row[q]]
            pred_pos[q, : len(t)] = torch.tensor(pos) + off
            pred_pos[q, len(t):] = pred_pos[q, len(t) - 1]  # padding slots point at a real position (masked)
            target[q, : len(t)] = torch.tensor(t)
            tmask[q, : len(t)] = 1
        return EncodedBatch([e.id for e in examples], labels, choice_mask, input_ids, attn, position_ids, segments,
                            torch.tensor(q_ex), torch.tensor(q_ch), torch.tensor(q_row), pred_pos, target, tmask,
                            torch.tensor(norms, dtype=torch.float32).clamp(min=1))

    # ---- scoring --------------------------------------------------------------------------------
    def _attention_mask(self, model, batch: EncodedBatch):
        """2-D padding mask, or for packed rows a 4-D block mask: a choice sees the prompt and itself."""
        if batch.segments.numel() == 0:
            return batch.attention_mask
        seg = batch.segments
        L = seg.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=seg.device).tril()
        visible = (seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] == 0)
        allowed = causal & visible & (seg[:, None, :] >= 0)
        allowed |= torch.eye(L, dtype=torch.bool, device=seg.device)  # padding rows attend to themselves (no NaN)
        allowed = allowed[:, None]
        if getattr(model.config, "_attn_implementation", "sdpa") == "sdpa":
            return allowed
        return torch.zeros(allowed.shape, device=seg.device).masked_fill(~allowed, torch.finfo(torch.float32).min)

    def class_logits(self, model, batch: EncodedBatch, **forward_kwargs) -> torch.Tensor:
        """[B, K] float32 class logits (-inf where an example has fewer than K choices)."""
        mask = self._attention_mask(model, batch)
        if self.mode == "label":
            out = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                        logits_to_keep=1, use_cache=False, **forward_kwargs)
            logits = out.logits[:, -1].float().gather(1, batch.target_ids)
            return logits.masked_fill(~batch.choice_mask, float("-inf"))
        L = batch.input_ids.shape[1]
        first = int(batch.pred_pos.min())
        out = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                    logits_to_keep=L - first, use_cache=False, **forward_kwargs)
        logp = out.logits.float().log_softmax(-1)                     # [R, L - first, V]
        picked = logp[batch.score_row[:, None], batch.pred_pos - first]  # [Q, C, V]
        tok_ll = picked.gather(-1, batch.target_ids.unsqueeze(-1)).squeeze(-1) * batch.target_mask
        scores = tok_ll.sum(-1) / batch.norm
        logits = torch.full(batch.choice_mask.shape, float("-inf"), device=scores.device)
        logits[batch.row_example, batch.row_choice] = scores
        return logits
