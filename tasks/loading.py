"""`load_split` and `check_task`: the public entry points that tie registry, source and custom together.

Splits: hub tasks draw train/validation from the hub's train split and test from another hub split (see
`load_split`); `custom:<dir>` has its own train/validation/test files and `custom:<file>` is test only
(see custom.py). A test split never shares examples (ids) with the train/validation splits of its task.
"""
from __future__ import annotations

import numpy as np

from . import source
from .custom import is_custom, load_custom
from .errors import TaskError
from .registry import SPLITS, TaskSpec, get_spec
from .types import MCExample


def check_task(name: str, splits=SPLITS, data_dir: str | None = None) -> None:
    """Fail early, without loading a model: the task exists, has these splits, and (with a mirror)
    the files they come from exist; hub/mirror rows are not read. A custom task's files that these
    splits need are read and validated in full (they are small). Raises TaskError; returns None when
    all is well."""
    if isinstance(splits, str):
        splits = (splits,)
    if is_custom(name):
        _check_split_names(splits, name)
        # a user's files are small: validate every line of the files these splits need, before anything is written
        load_custom(name, splits)
        return
    spec = get_spec(name)
    root = source.resolve_data_dir(data_dir)
    for split in splits:
        hub_split = spec.hub_split(split)
        if root is not None:
            source.require_mirror_file(name, root, spec.hub_id, spec.config, hub_split, split)


def load_split(name: str, split: str, *, data_dir: str | None = None, split_seed: int = 0,
               val_fraction: float = 0.1, limit: int | None = None) -> list[MCExample]:
    """The examples of one split of a task, deterministic in its arguments.

    Hub tasks: train/validation are a seeded held-out split of the hub's train split; test is the hub's
    validation split (MMLU groups, evaluation-only: the hub's test split, and no train/validation).
    custom:<dir>: train = train.jsonl and validation = validation.jsonl, or, without that file, a seeded
    held-out split of train.jsonl; test = test.jsonl. custom:<file>: evaluation-only, test = the file.
    `limit` keeps the first `limit` examples of the result.
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise TaskError(f"limit must be None or a positive integer, got {limit!r}")
    if not 0.0 < val_fraction < 1.0:
        raise TaskError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    if is_custom(name):
        _check_split_names((split,), name)
        data = load_custom(name, (split,))
        if split == "test":
            examples = data.test
        elif data.validation is not None:  # the directory has its own validation.jsonl
            examples = data.train if split == "train" else data.validation
        else:
            examples = _held_out(data.train, split, split_seed, val_fraction, name)
    else:
        spec = get_spec(name)
        hub_split = spec.hub_split(split)
        pool = _load_hub_split(spec, hub_split, split, source.resolve_data_dir(data_dir))
        examples = pool if split == "test" else _held_out(pool, split, split_seed, val_fraction, name)
    return examples[:limit] if limit is not None else examples


def _held_out(pool: list[MCExample], split: str, seed: int, val_fraction: float,
              name: str) -> list[MCExample]:
    """train or validation: a seeded permutation of the pool; its first round(f*n) rows are
    validation and the rest train, each kept in permutation order."""
    order = np.random.default_rng(seed).permutation(len(pool))
    n_val = round(val_fraction * len(pool))
    picked = order[:n_val] if split == "validation" else order[n_val:]
    if len(picked) == 0:
        raise TaskError(f"{name}: the {split} split would be empty ({len(pool)} rows, "
                        f"val_fraction={val_fraction} gives {n_val} validation rows); "
                        "change val_fraction or use more data")
    return [pool[i] for i in picked]


def _load_hub_split(spec: TaskSpec, hub_split: str, split: str, root: str | None) -> list[MCExample]:
    rows, where = source.read_rows(spec.name, root, spec.hub_id, spec.config, hub_split, split)
    examples = []
    for i, row in enumerate(rows):  # i: the row's index in the hub split, for fallback ids
        try:
            if not spec.keep(row):
                continue
            # Rows without an id get "<task>-<hub split>-<index>": stable under limit and under
            # split_seed, because it names the hub row, not its position in our split.
            ex_id = row.get("id") or f"{spec.name}-{hub_split}-{i}"
            examples.append(spec.convert(row, str(ex_id)))
        except KeyError as e:
            raise TaskError(f"{spec.name}: {where(i)}: the row has no field {e}; "
                            "the data does not match the hub schema of this task") from None
        except (TypeError, ValueError) as e:
            raise TaskError(f"{spec.name}: {where(i)}: bad row ({e}); "
                            "the data does not match the hub schema of this task") from None
    return examples


def _check_split_names(splits, name: str) -> None:
    for split in splits:
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r} for {name}; use one of {', '.join(SPLITS)}")
