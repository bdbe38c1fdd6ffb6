"""The plain reference computation the optimised scorers are measured against.

What a straightforward transformers loop does: one right-padded sequence per (question, choice), the model's
full-vocabulary logits at every position (no `logits_to_keep`), a log-softmax over the vocabulary, and the
continuation's token log-probabilities summed and divided by their count (the same `token` normalisation as
the suite's default). `label` mode: one sequence per question, the last real position's logits.

Tokenisation reuses the scorer's own rule (`Scorer._split`, `Scorer._prefix`): both sides must see the same
token ids, and tokenising is not the cost being measured.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from backbones import Scorer
from tasks.types import MCExample


@dataclass
class PlainBatch:
    mode: str
    input_ids: torch.Tensor       # [R, L] right-padded
    attention_mask: torch.Tensor  # [R, L]
    n_choices: list[int]          # per question
    labels: torch.Tensor          # [B]
    # loglik: row r scores tokens [start[r], end[r]) (positions of the continuation); label: end[r] - 1 is the last token
    start: list[int]
    end: list[int]
    label_ids: torch.Tensor       # label mode: [B, K] label token ids

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def encode_plain(scorer: Scorer, examples: list[MCExample]) -> PlainBatch:
    prefix = scorer._prefix()
    rows, start, end = [], [], []
    K = max(e.n_choices for e in examples)
    label_ids = torch.zeros(len(examples), K, dtype=torch.long)
    for b, e in enumerate(examples):
        if scorer.mode == "label":
            rows.append(prefix + scorer._encode(e.label_prompt))
            start.append(len(rows[-1]) - 1), end.append(len(rows[-1]))
            label_ids[b, : e.n_choices] = torch.tensor(scorer.label_token_ids(e.label_words, e.label_prompt))
            continue
        for ctx, cont in zip(e.contexts, e.continuations):
            c, t = scorer._split(ctx, cont)
            rows.append(prefix + c + t)
            start.append(len(prefix) + len(c)), end.append(len(rows[-1]))
    L = max(map(len, rows))
    ids = torch.full((len(rows), L), scorer.tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    return PlainBatch(scorer.mode, ids, mask, [e.n_choices for e in examples], torch.tensor([e.label for e in examples]),
                      start, end, label_ids)


def plain_class_logits(model, pb: PlainBatch) -> torch.Tensor:
    """[B, K] class logits (-inf for absent choices), computed the plain way."""
    logits = model(input_ids=pb.input_ids, attention_mask=pb.attention_mask, use_cache=False).logits  # [R, L, V]
    B, K = len(pb.n_choices), max(pb.n_choices)
    if pb.mode == "label":
        last = logits[torch.arange(B), torch.tensor(pb.end) - 1].float()              # [B, V]
        scores = last.gather(1, pb.label_ids)
        mask = torch.arange(K)[None] < torch.tensor(pb.n_choices)[:, None]
        return scores.masked_fill(~mask, float("-inf"))
    logp = logits.float().log_softmax(-1)                                             # every position, full vocab
    tok = logp[:, :-1].gather(-1, pb.input_ids[:, 1:, None]).squeeze(-1)              # log p(token t+1 | <= t)
    pos = torch.arange(tok.shape[1])[None]
    cont = (pos >= torch.tensor(pb.start)[:, None] - 1) & (pos < torch.tensor(pb.end)[:, None] - 1)
    scores = (tok * cont).sum(-1) / cont.sum(-1)                                      # mean over continuation tokens
    rows_b = [b for b, k in enumerate(pb.n_choices) for _ in range(k)]    # rows are question-major
    rows_k = [j for k in pb.n_choices for j in range(k)]
    out = torch.full((B, K), float("-inf"))
    out[rows_b, rows_k] = scores
    return out
