"""Tasks: turn benchmark datasets (hub, offline mirror, or a user's files) into `MCExample`s.

    from tasks import list_tasks, check_task, load_split
    test = load_split("arc_easy", "test", data_dir="../shared/datasets", limit=100)

Files: registry.py (the task table and row converters), formats.py (every prompt), source.py
(mirror/hub reading), custom.py (custom:<dir> with train/validation/test files, custom:<file> test-only
sets), loading.py (splits), errors.py.
"""
from .custom import file_stem
from .errors import TaskError
from .loading import check_task, load_split
from .registry import SPLITS, list_tasks
from .source import resolve_data_dir
from .types import MCExample

__all__ = ["file_stem", "MCExample", "SPLITS", "TaskError", "check_task", "list_tasks", "load_split",
           "resolve_data_dir"]
