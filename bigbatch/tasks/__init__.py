"""Tasks, one file each, behind one interface (tasks/base.py): ``get_task(cfg.task)``."""

from __future__ import annotations

from bigbatch.errors import UserError
from bigbatch.tasks.audio import Audio
from bigbatch.tasks.base import Task
from bigbatch.tasks.classify import Classification
from bigbatch.tasks.lm import LanguageModelling
from bigbatch.tasks.translate import Translation
from bigbatch.tasks.vision import Vision

TASKS: dict[str, Task] = {t.name: t for t in (LanguageModelling(), Classification(), Translation(), Vision(), Audio())}


def get_task(name: str) -> Task:
    """The Task of ``name`` (lm, classify, translate, vision, audio)."""
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"task={name!r}: expected one of {', '.join(TASKS)}") from None


__all__ = ["TASKS", "Task", "get_task"]
