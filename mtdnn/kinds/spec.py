"""What a head kind reads of a task: the shape of `mtdnn.data.tasks.TaskSpec`, as a Protocol.

The kinds sit below the task registry (the registry asks the kinds to validate a task YAML), so they must
not import it, not even for type hints: a cycle is a cycle to a reader. `TaskSpec` satisfies this Protocol.
"""

from __future__ import annotations

from typing import Any, Protocol


class TaskSpec(Protocol):
    name: str
    head: str  # the kind's name
    columns: Any  # column roles -> column names (ColumnsSpec)
    labels: list[str]
    metrics: list[str]
    max_length: int
    pair_encoding: str  # cross | bi
    dropout: float
    submission: Any  # SubmissionSpec or None
    file: str  # the YAML it came from (for messages)
    options: Any  # the kind's own Options

    @property
    def num_labels(self) -> int: ...
