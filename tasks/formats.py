"""Every prompt of the benchmark, in one place.

Each function renders one example in both scoring modes (see `MCExample`):
- `label`: the papers' prompt; the model's next-token logits for the label words are the class logits.
  Label words carry no leading space: the scorer adds it.
- `loglik`: lm-eval-harness style; class k scores log p(continuations[k] | contexts[k]).
"""
from __future__ import annotations

from .types import MCExample

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _lettered(choices) -> str:
    return "".join(f"\n{LETTERS[k]}. {c}" for k, c in enumerate(choices))


def multiple_choice(ex_id: str, question: str, choices, label: int) -> MCExample:
    """A question with K lettered answers (ARC, OpenBookQA, MMLU, custom files)."""
    choices = tuple(choices)
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"needs 2 to {len(LETTERS)} choices, got {len(choices)}")
    if not 0 <= label < len(choices):
        raise ValueError(f"label {label} is out of range for {len(choices)} choices")
    context = f"Question: {question}\nAnswer:"
    return MCExample(
        id=ex_id,
        label=label,
        choices=choices,
        label_prompt=f"Question: {question}\nChoices:{_lettered(choices)}\nAnswer:",
        label_words=tuple(LETTERS[: len(choices)]),
        contexts=(context,) * len(choices),
        continuations=tuple(f" {c}" for c in choices),
    )


def boolq(ex_id: str, passage: str, question: str, answer: bool) -> MCExample:
    """A yes/no question about a passage. Class order is (False, True), so label == int(answer).

    BoolQ questions are lower-case and have no question mark; the prompt adds one.
    """
    prompt = f"{passage}\nQuestion: {question}?\nAnswer:"
    return MCExample(
        id=ex_id,
        label=int(answer),
        choices=("False", "True"),
        label_prompt=prompt,
        label_words=("False", "True"),
        contexts=(prompt, prompt),
        continuations=(" no", " yes"),
    )


def winogrande(ex_id: str, sentence: str, option1: str, option2: str, label: int) -> MCExample:
    """A sentence with one blank `_` and two fillers.

    `loglik` uses partial evaluation (Trinh & Le 2018, as lm-eval does): the context is the sentence
    up to the blank with the option filled in, and the scored continuation is the rest of the
    sentence, which is the same for both options; so the option's own prior does not count.
    """
    i = sentence.index("_")  # ValueError when there is no blank
    rest = " " + sentence[i + 1:].strip()
    options = (option1, option2)
    return MCExample(
        id=ex_id,
        label=label,
        choices=options,
        label_prompt=f"Sentence: {sentence}\nChoices:{_lettered(options)}\nAnswer:",
        label_words=("A", "B"),
        contexts=tuple(sentence[:i] + o for o in options),
        continuations=(rest, rest),
    )
