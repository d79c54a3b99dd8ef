"""JUnit XML reports, the format CI systems (Jenkins, GitLab, GitHub actions) read test results in.

The document follows the widely used Ant/Jenkins layout (the ``xunit2`` family pytest writes)::

    <testsuites name=... tests= failures= errors= skipped= time=>
      <testsuite name=... tests= failures= errors= skipped= time= timestamp= hostname=>
        <properties><property name="file" value="workflows/scenarios/deal.yaml"/></properties>
        <testcase classname=... name=... time=...>
          <failure message="..." type="...">details</failure>      (or <error>, <skipped>)
          <system-out>the timeline</system-out>
        </testcase>
      </testsuite>
    </testsuites>

Only attributes that schema allows are written (no ``file``/``line`` on a test case): the
location of a failure is in its message, as ``file:line:column``.
"""

from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["JUnitCase", "JUnitSuite", "junit_xml", "write_junit"]

# Characters XML 1.0 cannot carry at all; a message with one would make the file unreadable.
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(text: str) -> str:
    return _INVALID_XML.sub("?", text)


@dataclass
class JUnitCase:
    """One test case.

    Attributes:
        name: what was tested (a scenario's name).
        classname: the group it belongs to (dotted, as CI systems group by it).
        time: seconds taken.
        failure: ``(message, details)`` when an expectation did not hold.
        error: ``(message, details)`` when it could not run at all.
        skipped: a reason, when it was not run.
        output: text for ``system-out`` (the timeline).

    """

    name: str
    classname: str
    time: float = 0.0
    failure: tuple[str, str] | None = None
    error: tuple[str, str] | None = None
    skipped: str | None = None
    output: str = ""
    failure_type: str = "AssertionError"
    error_type: str = "DefinitionError"


@dataclass
class JUnitSuite:
    """A group of test cases (one scenario file)."""

    name: str
    cases: list[JUnitCase] = field(default_factory=list)
    properties: Mapping[str, str] = field(default_factory=dict)
    timestamp: datetime | None = None

    @property
    def failures(self) -> int:
        """Cases with a failure."""
        return sum(c.failure is not None for c in self.cases)

    @property
    def errors(self) -> int:
        """Cases with an error."""
        return sum(c.error is not None for c in self.cases)

    @property
    def skipped(self) -> int:
        """Cases skipped."""
        return sum(c.skipped is not None for c in self.cases)

    @property
    def time(self) -> float:
        """Seconds taken by all cases."""
        return sum(c.time for c in self.cases)


def junit_xml(suites: Sequence[JUnitSuite], *, name: str = "crmflow") -> ET.ElementTree:
    """Build the JUnit document for ``suites``."""
    root = ET.Element(
        "testsuites",
        {
            "name": name,
            "tests": str(sum(len(s.cases) for s in suites)),
            "failures": str(sum(s.failures for s in suites)),
            "errors": str(sum(s.errors for s in suites)),
            "skipped": str(sum(s.skipped for s in suites)),
            "time": f"{sum(s.time for s in suites):.3f}",
        },
    )
    host = socket.gethostname()
    for index, suite in enumerate(suites):
        stamp = (suite.timestamp or datetime.now(UTC)).replace(microsecond=0, tzinfo=None)
        element = ET.SubElement(
            root,
            "testsuite",
            {
                "name": _clean(suite.name),
                "tests": str(len(suite.cases)),
                "failures": str(suite.failures),
                "errors": str(suite.errors),
                "skipped": str(suite.skipped),
                "time": f"{suite.time:.3f}",
                "timestamp": stamp.isoformat(),
                "hostname": host,
                "id": str(index),
            },
        )
        if suite.properties:
            props = ET.SubElement(element, "properties")
            for key, value in suite.properties.items():
                ET.SubElement(props, "property", {"name": key, "value": _clean(value)})
        for case in suite.cases:
            _case(element, case)
    ET.indent(root)
    return ET.ElementTree(root)


def _case(parent: ET.Element, case: JUnitCase) -> None:
    element = ET.SubElement(
        parent,
        "testcase",
        {
            "name": _clean(case.name),
            "classname": _clean(case.classname),
            "time": f"{case.time:.3f}",
        },
    )
    for tag, value, kind in (
        ("failure", case.failure, case.failure_type),
        ("error", case.error, case.error_type),
    ):
        if value is not None:
            message, details = value
            child = ET.SubElement(element, tag, {"message": _clean(message), "type": kind})
            child.text = _clean(details)
    if case.skipped is not None:
        ET.SubElement(element, "skipped", {"message": _clean(case.skipped)})
    if case.output:
        ET.SubElement(element, "system-out").text = _clean(case.output)


def write_junit(path: str | Path, suites: Iterable[JUnitSuite], *, name: str = "crmflow") -> None:
    """Write the JUnit XML for ``suites`` to ``path`` (UTF-8, with an XML declaration)."""
    tree = junit_xml(list(suites), name=name)
    target = Path(path)
    if target.parent and not target.parent.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
    tree.write(target, encoding="utf-8", xml_declaration=True)
