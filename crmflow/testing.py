"""crmflow's pytest plugin: scenario files are tests, and fixtures give a ready engine.

Installing crmflow registers this module with pytest (entry point ``pytest11``), so a client
repository holding only YAML passes or fails with plain ``pytest``::

    client-repo/
      org.yaml                          (optional)
      workflows/
        price_approval.yaml
        scenarios/
          price_approval.yaml           <- collected: one test per scenario

**What is collected.** A ``*.scenario.yaml`` / ``*.scenario.yml`` file anywhere, and any
``*.yaml`` / ``*.yml`` file below a directory named ``scenarios`` whose top level has a
``scenarios:`` key. Each scenario is one test, named after it
(``workflows/scenarios/price_approval.yaml::a discount over 10% needs the manager``), so
``-k`` selects scenarios by name. A file with mistakes is one failing test that shows them
as ``file:line:column: ...``. A failing scenario shows the expectations that did not hold
(expected against actual, with their lines) and the timeline up to that step.

The workflows a scenario file runs against are found as ``crmflow simulate`` finds them: the
file's ``workflows:`` key, else the directory above its ``scenarios/`` directory (or the
file's own directory for ``*.scenario.yaml``). Set ``crmflow_workflows`` to use one directory
for every file that does not say.

**Fixtures.** ``crmflow_clock`` is a :class:`~crmflow.VirtualClock`; ``crmflow_engine`` an
:class:`~crmflow.Engine` on a fresh in-memory store, on that clock, over the repository's
workflows (with the org directory when configured)::

    def test_quote_needs_a_manager(crmflow_engine, crmflow_clock):
        crmflow_engine.start("price_approval", "Q-1", actor=Actor("alice", {"sales_rep"}), ...)
        crmflow_clock.advance("2d")
        crmflow_engine.tick()

**Settings** (``pytest.ini``, ``[tool.pytest.ini_options]`` or ``-o name=value``):

=====================  ===================================================================
``crmflow_workflows``  workflow directory, relative to the root directory (default
                       ``workflows``)
``crmflow_org``        org directory file for ``crmflow_engine`` (default: ``org.yaml`` in
                       the root directory when it exists)
``crmflow_start``      the clock's start, ISO 8601 (default ``2026-01-05T09:00:00+00:00``)
``crmflow_scenarios``  ``false`` to stop collecting scenario files
=====================  ===================================================================
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from crmflow._clock import VirtualClock
    from crmflow._errors import DefinitionError
    from crmflow.engine._runtime import Engine
    from crmflow.engine._scenario import Scenario, ScenarioFile
    from crmflow.engine._simulate import ScenarioResult

__all__ = [
    "ScenarioFailed",
    "ScenarioItem",
    "ScenarioYamlFile",
    "crmflow_clock",
    "crmflow_engine",
    "pytest_addoption",
    "pytest_collect_file",
]

_DEFAULT_START = "2026-01-05T09:00:00+00:00"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``crmflow_*`` settings."""
    parser.addini(
        "crmflow_workflows",
        "crmflow: workflow directory, relative to the root directory (default: workflows)",
        default="",
    )
    parser.addini("crmflow_org", "crmflow: org directory file for crmflow_engine", default="")
    parser.addini(
        "crmflow_start", f"crmflow: virtual clock start (default {_DEFAULT_START})", default=""
    )
    parser.addini(
        "crmflow_scenarios",
        "crmflow: collect scenario YAML files as tests (default: true)",
        type="bool",
        default=True,
    )


def _configured_workflows(config: pytest.Config) -> Path | None:
    value = str(config.getini("crmflow_workflows") or "")
    return config.rootpath / value if value else None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect scenario files (see the module documentation for the rule)."""
    if not parent.config.getini("crmflow_scenarios"):
        return None
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    # Imported here: a pytest run without scenario files pays nothing for the engine.
    from crmflow.engine._scenario import is_scenario_file

    if not is_scenario_file(file_path):
        return None
    collector: ScenarioYamlFile = ScenarioYamlFile.from_parent(parent, path=file_path)
    return collector


class ScenarioYamlFile(pytest.File):
    """A scenario file: one test per scenario, or one failing test when it has mistakes."""

    def collect(self) -> Iterator[pytest.Item]:
        """Load and check the file, then yield its scenarios."""
        from crmflow._errors import DefinitionError
        from crmflow.engine._scenario import collect_scenario_errors, load_scenario_file

        workflows = _configured_workflows(self.config)
        try:
            loaded = load_scenario_file(self.path, workflows=workflows)
        except DefinitionError:
            problems = collect_scenario_errors(self.path, workflows=workflows)
            yield ScenarioErrorItem.from_parent(
                self, name=f"{self.path.name} (errors)", problems=problems
            )
            return
        for scenario in loaded.scenarios:
            yield ScenarioItem.from_parent(self, name=scenario.name, file=loaded, scenario=scenario)


class ScenarioFailed(Exception):
    """Raised by a scenario test whose expectations did not hold."""

    def __init__(self, result: ScenarioResult) -> None:
        self.result = result
        super().__init__(result.failure_message())


class ScenarioItem(pytest.Item):
    """One scenario, run on a fresh engine and virtual clock."""

    def __init__(self, *, file: ScenarioFile, scenario: Scenario, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.file = file
        self.scenario = scenario

    def runtest(self) -> None:
        """Run the scenario; raise :class:`ScenarioFailed` when it fails."""
        from crmflow.engine._simulate import run_scenario

        result = run_scenario(self.file, self.scenario)
        if not result.passed:
            raise ScenarioFailed(result)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        """Expected against actual with their lines, then the timeline; not a traceback."""
        if isinstance(excinfo.value, ScenarioFailed):
            result = excinfo.value.result
            return f"{result.failure_message()}\n\n{result.timeline()}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """Where the scenario is written (pytest counts lines from 0)."""
        return self.path, max(self.scenario.pos.line - 1, 0), f"scenario: {self.scenario.name}"


class ScenarioErrorItem(pytest.Item):
    """Stands for a scenario file with mistakes: it fails and lists them."""

    def __init__(self, *, problems: list[DefinitionError], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.problems = problems

    def runtest(self) -> None:
        """Fail with the file's mistakes."""
        raise _FileErrors(self.problems)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        """Each mistake as ``file:line:column: path: message (did you mean ...?)``."""
        if isinstance(excinfo.value, _FileErrors):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """The file, at its first mistake."""
        line = self.problems[0].line - 1 if self.problems and self.problems[0].line else 0
        return self.path, line, f"scenario file: {self.path.name}"


class _FileErrors(Exception):
    def __init__(self, problems: list[DefinitionError]) -> None:
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems))


@pytest.fixture
def crmflow_clock(request: pytest.FixtureRequest) -> VirtualClock:
    """A virtual clock at ``crmflow_start`` (2026-01-05 09:00 UTC unless configured)."""
    from crmflow._clock import VirtualClock

    return VirtualClock(str(request.config.getini("crmflow_start") or _DEFAULT_START))


@pytest.fixture
def crmflow_engine(request: pytest.FixtureRequest, crmflow_clock: VirtualClock) -> Iterator[Engine]:
    """An engine over the repository's workflows, on a fresh in-memory store and the clock."""
    from crmflow.engine._runtime import Engine

    config = request.config
    workflows = _configured_workflows(config) or config.rootpath / "workflows"
    org_setting = str(config.getini("crmflow_org") or "")
    org: Path | None = config.rootpath / org_setting if org_setting else None
    if org is None and (config.rootpath / "org.yaml").is_file():
        org = config.rootpath / "org.yaml"
    with Engine.from_path(workflows, clock=crmflow_clock, org=org) as engine:
        yield engine
