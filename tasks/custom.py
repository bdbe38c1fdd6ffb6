"""`custom:<path>` tasks: a user's own multiple-choice JSON-lines file.

One JSON object per line: {"question": str, "choices": [str, str, ...], "answer": int, "id": optional}.
`answer` is the 0-based index of the correct choice. Blank lines are ignored.
"""
from __future__ import annotations

from pathlib import Path

from . import formats
from .errors import TaskError
from .source import read_jsonl
from .types import MCExample

PREFIX = "custom:"
_SCHEMA = 'each line must be {"question": str, "choices": [>= 2 str], "answer": int index, "id": optional}'


def is_custom(name: str) -> bool:
    return name.startswith(PREFIX)


def custom_path(name: str) -> Path:
    """The file of a `custom:<path>` task; it must exist (checked without reading it)."""
    raw = name[len(PREFIX):]
    if not raw:
        raise TaskError(f"{name!r} names no file; write custom:<path to a JSON-lines file>")
    path = Path(raw).expanduser()
    if not path.is_file():
        raise TaskError(f"{name}: no such file {path.resolve()}; check the path (relative paths are "
                        "relative to the working directory)")
    return path


def load_custom(name: str) -> list[MCExample]:
    """Every row of the file, in file order, validated and rendered like the other MC tasks."""
    path = custom_path(name)
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
