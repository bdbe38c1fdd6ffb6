"""Where hub rows come from: an offline mirror (JSON-lines in hub schema) or the Hugging Face hub.

Mirror layout: `<root>/<hub id>/<config>/<split>.jsonl`, one hub row per line, same columns as
`datasets.load_dataset(hub_id, config, split=split)`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from .errors import TaskError

ENV_VAR = "BAYESPEFT_DATA_DIR"
_UNSET_HINT = f"Unset --data-dir/{ENV_VAR} to load it from the Hugging Face hub."


def resolve_data_dir(data_dir: str | None) -> str | None:
    """The mirror root to read: explicit `data_dir` > env BAYESPEFT_DATA_DIR > None (= the hub)."""
    chosen = data_dir or os.environ.get(ENV_VAR) or None
    if chosen is None:
        return None
    chosen = os.path.expanduser(chosen)
    if not os.path.isdir(chosen):
        origin = "--data-dir" if data_dir else ENV_VAR
        raise TaskError(f"the data mirror {chosen} (from {origin}) is not a directory; "
                        f"fix the path, or unset --data-dir/{ENV_VAR} to use the Hugging Face hub")
    return chosen


def mirror_path(root: str, hub_id: str, config: str, hub_split: str) -> Path:
    return Path(root, hub_id, config, f"{hub_split}.jsonl")


def require_mirror_file(task: str, root: str, hub_id: str, config: str, hub_split: str,
                        split: str) -> Path:
    """The mirror file for a hub split, or a TaskError that says which splits the mirror has."""
    path = mirror_path(root, hub_id, config, hub_split)
    if path.is_file():
        return path
    have = sorted(p.stem for p in path.parent.glob("*.jsonl")) if path.parent.is_dir() else []
    used_for = f", which the {split} split is drawn from" if split != hub_split else ""
    raise TaskError(f"{task}: the data mirror at {root} has no {hub_split} split{used_for} "
                    f"({hub_id}/{config}/{hub_split}.jsonl is missing; "
                    f"available: {', '.join(have) or 'none'}). {_UNSET_HINT}")


def read_rows(task: str, root: str | None, hub_id: str, config: str, hub_split: str,
              split: str) -> tuple[list[dict], Callable[[int], str]]:
    """All rows of one hub split, and `where(i)`: a human-readable location of row i for errors."""
    if root is None:
        rows = _hub_rows(task, hub_id, config, hub_split)
        return rows, lambda i: f"{hub_id} ({config}) {hub_split} split, row {i}"
    path = require_mirror_file(task, root, hub_id, config, hub_split, split)
    rows, line_numbers = read_jsonl(path, task)
    return rows, lambda i: f"{path}:{line_numbers[i]}"


MAX_LINE_CHARS = 100_000  # one question with its choices; longer lines would stall training on any machine


def _lines(f, path: Path, task: str):
    try:
        yield from enumerate(f, start=1)
    except UnicodeDecodeError as e:
        raise TaskError(f"{task}: {path} is not UTF-8 text (byte {e.start} of a line: {e.reason}); "
                        "save it as UTF-8 JSON lines") from None


def read_jsonl(path: Path, task: str) -> tuple[list[dict], list[int]]:
    """Objects of a JSON-lines file and their 1-based line numbers; blank lines are skipped."""
    rows, line_numbers = [], []
    path = Path(path)
    if path.is_dir():
        raise TaskError(f"{task}: {path} is a directory where a JSON-lines file was expected")
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise TaskError(f"{task}: cannot read {path} ({e.strerror}); check the path and its permissions") from None
    with f:
        for n, line in _lines(f, path, task):
            if not line.strip():
                continue
            if len(line) > MAX_LINE_CHARS:
                raise TaskError(f"{task}: {path}:{n}: the line has {len(line):,} characters (limit "
                                f"{MAX_LINE_CHARS:,}); a multiple-choice question that long is surely a mistake")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{task}: {path}:{n}: invalid JSON ({e.msg}, column {e.colno}); "
                                "fix or re-create that line") from None
            if not isinstance(row, dict):
                raise TaskError(f"{task}: {path}:{n}: expected a JSON object, got "
                                f"{type(row).__name__}; fix or re-create that line")
            rows.append(row)
            line_numbers.append(n)
    return rows, line_numbers


def _hub_rows(task: str, hub_id: str, config: str, hub_split: str) -> list[dict]:
    fallback = f"or set --data-dir/{ENV_VAR} to an offline mirror"
    try:
        import datasets  # lazy: slow to import, and not needed with a mirror
    except ImportError as e:
        raise TaskError(f"{task}: loading from the Hugging Face hub needs the `datasets` package "
                        f"({e}); install it, {fallback}") from e
    try:
        ds = datasets.load_dataset(hub_id, config, split=hub_split)
    except Exception as e:  # network, auth, missing split...: all reported the same way
        reason = (str(e).strip().splitlines() or [""])[0][:300]
        raise TaskError(f"{task}: could not load {hub_id} ({config}) split {hub_split} from the "
                        f"Hugging Face hub ({type(e).__name__}: {reason}); check your connection, "
                        f"{fallback}") from e
    return ds.to_list() if hasattr(ds, "to_list") else [dict(r) for r in ds]
