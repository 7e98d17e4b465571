"""Built-in offline tasks (importing this package registers them) and the plugin tasks of other packages."""

from harness.tasks import length, sentiment, sort  # noqa: F401  (registration side effects)
from harness.tasks.base import (
    ENTRY_POINT_GROUP,
    Task,
    builtin_tasks,
    get_task,
    list_tasks,
    plugin_problems,
    register,
    task_source,
)

__all__ = [
    "ENTRY_POINT_GROUP", "Task", "builtin_tasks", "get_task", "list_tasks", "plugin_problems", "register", "task_source",
]
