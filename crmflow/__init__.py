"""crmflow: an embeddable workflow and rules engine for CRM and ERP processes.

Workflows are state machines declared in YAML; rules guard transitions and explain every
refusal; state, history and idempotency records persist through SQL storage plugins.

>>> from crmflow import Engine, Actor
>>> engine = Engine.from_path("workflows/")            # doctest: +SKIP
"""

from crmflow._clock import Clock, SystemClock, VirtualClock, parse_duration
from crmflow._errors import (
    ConcurrencyConflict,
    CrmflowError,
    DefinitionError,
    ExpressionError,
    InstanceExists,
    InvalidData,
    MissingFact,
    PermissionDenied,
    PluginError,
    StorageError,
    UnknownInstance,
    UnknownTask,
    UnknownTrigger,
)
from crmflow._hashchain import ChainReport
from crmflow._task_types import (
    CostEntry,
    OwnerLoad,
    Progress,
    ReassignPreview,
    Task,
    TaskOutcome,
)
from crmflow._types import (
    Actor,
    FireResult,
    Instance,
    Override,
    Refusal,
    TransitionContext,
    TriggerOption,
)
from crmflow.engine import (
    Engine,
    LintIssue,
    WorkflowDef,
    lint,
    load_definitions,
    load_workflow_file,
    load_workflow_text,
    mermaid,
)
from crmflow.engine._timer_ops import TickReport
from crmflow.plugins import HistoryRecord, hookimpl

__version__ = "0.1.0"

__all__ = [
    "Actor",
    "ChainReport",
    "Clock",
    "ConcurrencyConflict",
    "CostEntry",
    "CrmflowError",
    "DefinitionError",
    "Engine",
    "ExpressionError",
    "FireResult",
    "HistoryRecord",
    "Instance",
    "InstanceExists",
    "InvalidData",
    "LintIssue",
    "MissingFact",
    "Override",
    "OwnerLoad",
    "PermissionDenied",
    "PluginError",
    "Progress",
    "ReassignPreview",
    "Refusal",
    "StorageError",
    "SystemClock",
    "Task",
    "TaskOutcome",
    "TickReport",
    "TransitionContext",
    "TriggerOption",
    "UnknownInstance",
    "UnknownTask",
    "UnknownTrigger",
    "VirtualClock",
    "WorkflowDef",
    "__version__",
    "hookimpl",
    "lint",
    "load_definitions",
    "load_workflow_file",
    "load_workflow_text",
    "mermaid",
    "parse_duration",
]
