"""Built-in offline tasks. Importing this package registers them."""

from harness.tasks import length, sentiment, sort  # noqa: F401  (registration side effects)
from harness.tasks.base import Task, get_task, list_tasks, register

__all__ = ["Task", "get_task", "list_tasks", "register"]
