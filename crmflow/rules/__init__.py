"""The crmflow rule language: parse, type-check and evaluate guard rules.

Expressions are a safe subset of Python expression syntax, parsed with :mod:`ast` into crmflow's
own IR and never evaluated as Python. Two back ends give the same verdicts: ``durable``
(durable_rules, when installed) and ``python`` (a pure-Python evaluator). See ``docs/rules.md``.
"""

from __future__ import annotations

from ._ast import Expr
from ._backend import (
    PreparedGroup,
    RulesBackend,
    RulesBackendError,
    available_backends,
    make_backend,
)
from ._checker import Schema
from ._evaluate import RuleEvaluationError
from ._functions import FunctionSpec
from ._parser import parse_expression
from ._rule import CompiledRule, Verdict, compile_rule
from ._template import render_value

__all__ = [
    "CompiledRule",
    "Expr",
    "FunctionSpec",
    "PreparedGroup",
    "RuleEvaluationError",
    "RulesBackend",
    "RulesBackendError",
    "Schema",
    "Verdict",
    "available_backends",
    "compile_rule",
    "make_backend",
    "parse_expression",
    "render_value",
]
