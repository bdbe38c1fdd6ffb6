"""The one record every task produces and every scorer consumes.

A task turns hub rows into `MCExample`s with *both* scoring modes already rendered as text, so that
methods and scorers never format prompts or pick answer strings themselves.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MCExample:
    id: str
    label: int                              # index of the correct choice, 0 <= label < K
    choices: tuple[str, ...]                # the K answer texts, in label order
    # `label` scoring: one prompt; class k's logit is the next-token logit of label_words[k].
    label_prompt: str
    label_words: tuple[str, ...]            # e.g. ("A", "B", "C", "D"); BoolQ: ("False", "True")
    # `loglik` scoring: class k's logit is log p(continuations[k] | contexts[k]).
    # Most tasks share one context; WinoGrande (partial evaluation) has one context per option.
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]

    @property
    def n_choices(self) -> int:
        return len(self.choices)


def length_order(examples: list[MCExample]) -> list[int]:
    """Indices of `examples` from shortest to longest text: batches of neighbours need little padding."""
    return sorted(range(len(examples)), key=lambda i: sum(map(len, examples[i].contexts)) + len(examples[i].label_prompt))
