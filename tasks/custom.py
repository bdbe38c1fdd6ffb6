"""`custom:<path>` tasks: a user's own multiple-choice data, in one of two forms.

- `custom:<dir>`: a directory holding `train.jsonl`, `test.jsonl` and optionally `validation.jsonl`
  (the layout of a Hugging Face JSON dataset); a trainable (ID) task. train = train.jsonl and
  validation = validation.jsonl when that file exists; without it, validation is held out from
  train.jsonl (seeded by split_seed, val_fraction of its rows) and train is the rest. test = test.jsonl,
  never mixed with the others: an id found both in test.jsonl and in train.jsonl/validation.jsonl is
  refused as a leak.
- `custom:<file>`: one JSON-lines file, an evaluation-only (OOD) set: its only split is `test`, the
  whole file.

Every file: one JSON object per line, {"question": str, "choices": [str, str, ...], "answer": int,
"id": optional}. `answer` is the 0-based index of the correct choice. Blank lines are ignored. A row
without an id gets "<file stem>-<row index>" (`train-3`, `test-3`, `mine-3`), so ids are distinct across
the files of a directory and a prediction can be traced to its row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import formats
from .errors import TaskError
from .source import read_jsonl
from .types import MCExample

PREFIX = "custom:"
_SCHEMA = 'each line must be {"question": str, "choices": [>= 2 str], "answer": int index, "id": optional}'
_DIR_FILES = ("train.jsonl", "test.jsonl")  # required in a directory; validation.jsonl is optional
_HOW_TO_TRAIN = ("to train on your data give a directory custom:<dir> holding train.jsonl and test.jsonl "
                 "(validation.jsonl optional)")


def is_custom(name: str) -> bool:
    return name.startswith(PREFIX)


def file_stem(name: str) -> str:
    """A file-name stem for a task name, safe and distinct: built-in names as they are; `custom:<path>`
    becomes `custom-<file name>-<8 hex of the path>`, so a path never leaves the directory it is written to
    and two files of one name in different folders do not collide."""
    if not is_custom(name):
        return name
    import hashlib
    import re
    raw = name[len(PREFIX):]
    leaf = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(raw.rstrip("/")).name).strip("._")[:40] or "data"
    return f"custom-{leaf}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class CustomSource:
    """Where a custom task's rows live; every file it names exists (checked without reading it)."""
    name: str
    path: Path
    is_dir: bool

    @property
    def has_validation(self) -> bool:
        return self.is_dir and (self.path / "validation.jsonl").is_file()

    def require_split(self, split: str) -> None:
        if not self.is_dir and split != "test":
            raise TaskError(f"{self.name} is an evaluation-only file: it has only a test split, not {split}; "
                            + _HOW_TO_TRAIN)


def custom_source(name: str) -> CustomSource:
    """The file or directory of a `custom:<path>` task; it must exist, and a directory must hold
    train.jsonl and test.jsonl."""
    raw = name[len(PREFIX):]
    if not raw:
        raise TaskError(f"{name!r} names no file; write custom:<path to a JSON-lines file> (evaluation only) "
                        "or custom:<directory holding train.jsonl and test.jsonl>")
    path = Path(raw).expanduser()
    if path.is_file():
        return CustomSource(name, path, is_dir=False)
    if not path.is_dir():
        raise TaskError(f"{name}: no such file or directory {path.resolve()}; check the path (relative paths "
                        "are relative to the working directory)")
    for needed in _DIR_FILES:
        if not (path / needed).is_file():
            raise TaskError(f"{name}: the directory {path.resolve()} has no {needed}; a custom directory must "
                            "hold train.jsonl and test.jsonl (validation.jsonl optional), or name a single "
                            "JSON-lines file to use it for evaluation only")
    return CustomSource(name, path, is_dir=True)


@dataclass(frozen=True)
class CustomData:
    """The files of a custom task that some splits need, read and validated. Files not needed are None;
    `validation` is also None when a directory has no validation.jsonl."""
    source: CustomSource
    train: list[MCExample] | None = None
    validation: list[MCExample] | None = None
    test: list[MCExample] | None = None


def load_custom(name: str, splits=("test",)) -> CustomData:
    """Read and validate the files behind `splits` (in file order; nothing else is read).

    test needs only the test file. train or validation of a directory need train.jsonl, validation.jsonl
    when present, and test.jsonl, which is read to refuse an id it shares with the training files.
    """
    src = custom_source(name)
    for split in splits:
        src.require_split(split)
    if not src.is_dir:
        return CustomData(src, test=read_custom_file(name, src.path))
    training = any(s in ("train", "validation") for s in splits)
    test = read_custom_file(name, src.path / "test.jsonl") if training or "test" in splits else None
    if not training:
        return CustomData(src, test=test)
    train = read_custom_file(name, src.path / "train.jsonl")
    val = read_custom_file(name, src.path / "validation.jsonl") if src.has_validation else None
    test_ids = {e.id for e in test}
    for file, rows in (("train.jsonl", train), ("validation.jsonl", val or [])):
        shared = [e.id for e in rows if e.id in test_ids]
        if shared:
            more = f" and {len(shared) - 1} more" if len(shared) > 1 else ""
            raise TaskError(f"{name}: id {shared[0]!r}{more} is in both {file} and test.jsonl, which would "
                            "score the model on rows it was trained or tuned on; remove those rows from one "
                            "of the files (or give them distinct ids if they are different questions)")
    return CustomData(src, train=train, validation=val, test=test)


def read_custom_file(name: str, path: Path) -> list[MCExample]:
    """Every row of one file, in file order, validated and rendered like the other MC tasks."""
    rows, line_numbers = read_jsonl(path, name)
    if not rows:
        raise TaskError(f"{name}: {path} is empty; {_SCHEMA}")
    examples, seen = [], {}
    for i, (row, n) in enumerate(zip(rows, line_numbers)):
        where = f"{path}:{n}"
        problem = _problem(row)
        if problem:
            raise TaskError(f"{name}: {where}: {problem}; {_SCHEMA}")
        ex_id = str(row["id"]) if row.get("id") is not None else f"{path.stem}-{i}"
        if ex_id in seen:
            raise TaskError(f"{name}: {where}: duplicate id {ex_id!r} (first on line {seen[ex_id]}); "
                            "ids must be unique")
        seen[ex_id] = n
        examples.append(formats.multiple_choice(ex_id, row["question"], row["choices"], row["answer"]))
    return examples


def _problem(row: dict) -> str | None:
    """What is wrong with one row, or None."""
    for field in ("question", "choices", "answer"):
        if field not in row:
            return f"missing field {field!r}"
    question, choices, answer = row["question"], row["choices"], row["answer"]
    if not isinstance(question, str) or not question.strip():
        return f"question must be a non-empty string, got {question!r}"
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        return f"choices must be a list of strings, got {choices!r}"
    if any(not c.strip() for c in choices):
        return f"choices must be non-empty strings, got {choices!r}"
    if not 2 <= len(choices) <= len(formats.LETTERS):
        return f"choices must have 2 to {len(formats.LETTERS)} entries, got {len(choices)}"
    # bool is an int subclass in Python, but `true` as an answer is surely a mistake.
    if not isinstance(answer, int) or isinstance(answer, bool):
        return f"answer must be an integer index into choices, got {answer!r}"
    if not 0 <= answer < len(choices):
        return f"answer {answer} is out of range for {len(choices)} choices (0..{len(choices) - 1})"
    if "id" in row and row["id"] is not None and (not isinstance(row["id"], (str, int))
                                                  or isinstance(row["id"], bool)):
        return f"id must be a string or an integer, got {row['id']!r}"
    return None
