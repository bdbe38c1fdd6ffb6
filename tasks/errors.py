"""The one exception type of the tasks package."""
from __future__ import annotations


class TaskError(ValueError):
    """A task, split or data file cannot be used.

    The message is one line that says what is wrong and how to fix it, so a CLI can print it as is.
    """
