"""The table of hub tasks: where each one's rows live and how a row becomes an `MCExample`.

Adding a task is one `TaskSpec` entry in `_SPECS` (plus a row converter if its schema is new).
Converters take (hub row, example id) and may raise KeyError/TypeError/ValueError on a bad row;
the loader turns those into a `TaskError` that names the row.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from . import formats
from .errors import TaskError
from .types import MCExample

SPLITS = ("train", "validation", "test")


# --- row converters, one per hub schema -------------------------------------------------------

def _keyed_choices(question: str, choices: dict, answer_key: str, ex_id: str) -> MCExample:
    # ARC/OBQA store choices as {"text": [...], "label": [...]}; the answer key is one of the
    # labels, which are usually "A".."E" but "1".."4" for ~5% of ARC items.
    labels = list(choices["label"])
    if answer_key not in labels:
        raise ValueError(f"answerKey {answer_key!r} is not one of the choice labels {labels}")
    return formats.multiple_choice(ex_id, question, choices["text"], labels.index(answer_key))


def arc_row(row: dict, ex_id: str) -> MCExample:
    return _keyed_choices(row["question"], row["choices"], row["answerKey"], ex_id)


def obqa_row(row: dict, ex_id: str) -> MCExample:
    return _keyed_choices(row["question_stem"], row["choices"], row["answerKey"], ex_id)


def winogrande_row(row: dict, ex_id: str) -> MCExample:
    if row["answer"] not in ("1", "2"):  # the hub's test split is unlabelled (answer "")
        raise ValueError(f"answer must be '1' or '2', got {row['answer']!r}")
    return formats.winogrande(ex_id, row["sentence"], row["option1"], row["option2"],
                              int(row["answer"]) - 1)


def boolq_row(row: dict, ex_id: str) -> MCExample:
    if not isinstance(row["answer"], bool):
        raise TypeError(f"answer must be a bool, got {row['answer']!r}")
    return formats.boolq(ex_id, row["passage"], row["question"], row["answer"])


def mmlu_row(row: dict, ex_id: str) -> MCExample:
    return formats.multiple_choice(ex_id, row["question"], row["choices"], int(row["answer"]))


# --- the table ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    hub_id: str
    config: str
    convert: Callable[[dict, str], MCExample]
    # In-distribution tasks follow the papers: train/validation are a seeded split of the hub's
    # train split and `test` is the hub's validation split. Evaluation-only (OOD) tasks have just
    # `test`, taken from `test_split`.
    eval_only: bool = False
    test_split: str = "validation"
    subjects: tuple[str, ...] = ()  # MMLU groups: keep only rows whose `subject` is listed

    @property
    def splits(self) -> tuple[str, ...]:
        return ("test",) if self.eval_only else SPLITS

    def hub_split(self, split: str) -> str:
        """The hub split that `split` is drawn from (validates `split`)."""
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r} for {self.name}; use one of {', '.join(SPLITS)}")
        if split not in self.splits:
            raise TaskError(f"{self.name} is an evaluation-only (OOD) task: it has only a test split, "
                            f"not {split}; train on an in-distribution task and evaluate on {self.name}")
        return self.test_split if split == "test" else "train"

    def keep(self, row: dict) -> bool:
        return not self.subjects or row["subject"] in self.subjects

    @property
    def summary(self) -> str:
        kind = "OOD, evaluation-only (test)" if self.eval_only else "ID, trainable (train/validation/test)"
        return f"[{kind}] {self.description}"


def _mmlu(name: str, title: str, subjects: tuple[str, ...]) -> TaskSpec:
    return TaskSpec(name, f"MMLU {title}: {', '.join(subjects)} (cais/mmlu test)", "cais/mmlu", "all",
                    mmlu_row, eval_only=True, test_split="test", subjects=subjects)


_SPECS = [
    TaskSpec("arc_easy", "AI2 ARC-Easy grade-school science questions, 3-5 choices",
             "allenai/ai2_arc", "ARC-Easy", arc_row),
    TaskSpec("arc_challenge", "AI2 ARC-Challenge grade-school science questions, 3-5 choices",
             "allenai/ai2_arc", "ARC-Challenge", arc_row),
    TaskSpec("obqa", "OpenBookQA elementary science questions, 4 choices",
             "allenai/openbookqa", "main", obqa_row),
    TaskSpec("winogrande_s", "WinoGrande (S training set, 640 rows) pronoun resolution, 2 options",
             "allenai/winogrande", "winogrande_s", winogrande_row),
    TaskSpec("winogrande_m", "WinoGrande (M training set, 2558 rows) pronoun resolution, 2 options",
             "allenai/winogrande", "winogrande_m", winogrande_row),
    TaskSpec("boolq", "BoolQ yes/no questions about a Wikipedia passage",
             "google/boolq", "default", boolq_row),
    _mmlu("mmlu_chem", "chemistry", ("college_chemistry",)),
    _mmlu("mmlu_phys", "physics", ("college_physics",)),
    _mmlu("mmlu_cs", "computer science", ("college_computer_science", "high_school_computer_science",
                                          "computer_security", "machine_learning")),
    _mmlu("mmlu_eng", "engineering", ("electrical_engineering",)),
    _mmlu("mmlu_law", "law", ("international_law", "jurisprudence", "professional_law")),
    _mmlu("mmlu_health", "health", ("anatomy", "clinical_knowledge", "college_medicine", "human_aging",
                                    "nutrition", "professional_medicine", "virology")),
]
TASKS: dict[str, TaskSpec] = {s.name: s for s in _SPECS}


def list_tasks() -> list[tuple[str, str]]:
    """(name, one-line description) for every built-in task, in table order."""
    return [(s.name, s.summary) for s in _SPECS]


def get_spec(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        pass
    close = difflib.get_close_matches(name.lower(), TASKS, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise TaskError(f"unknown task {name!r}; {hint}see `python benchmark.py list tasks` for the "
                    "task names, or use custom:<path> for your own JSON-lines file")
