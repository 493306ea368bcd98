"""The seed conformance suite: every example of ../shared/seeds, verbatim, as a test.

Each test is marked ``@pytest.mark.seed(DOC, EXAMPLE)`` and reports what the example does on
this host through the ``seed_outcome`` fixture: ``seed_outcome.works("boots, serves the page")``
or ``seed_outcome.refused("E_NIXPKGS_UNAVAILABLE")``. The outcomes of a run are written to
``$MVM_SEED_TABLE`` (when set) as JSON, from which ``scripts/seed-table`` renders the README's
"seed example -> status on this machine" table. An outcome is only recorded when the test
passes, so the table never claims what a failing test did not prove.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

_RESULTS: list[dict[str, str]] = []


@attrs.define
class SeedOutcome:
    doc: str
    example: str
    status: str = ""
    detail: str = ""

    def works(self, detail: str) -> None:
        """The example ran as pasted; ``detail`` says what was observed."""
        self.status, self.detail = "works", detail

    def refused(self, code: str, detail: str = "") -> None:
        """The example is refused here with ``code`` (what this host lacks)."""
        self.status, self.detail = f"refused: {code}", detail


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "seed(doc, example): a seed example tested verbatim")


@pytest.fixture
def seed_outcome(request: pytest.FixtureRequest) -> Iterator[SeedOutcome]:
    marker = request.node.get_closest_marker("seed")
    if marker is None:
        raise pytest.UsageError(f"{request.node.nodeid}: seed_outcome needs @pytest.mark.seed")
    doc, example = marker.args
    outcome = SeedOutcome(doc, example)
    yield outcome
    rep = getattr(request.node, "rep_call", None)
    if rep is None or not rep.passed:
        return  # a failing test proves nothing: record nothing, add no second error
    if not outcome.status:
        raise AssertionError(f"{request.node.nodeid}: the test never said works() or refused()")
    _RESULTS.append(attrs.asdict(outcome) | {"test": request.node.nodeid})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("MVM_SEED_TABLE")
    if target and _RESULTS:
        Path(target).write_text(json.dumps(sorted(_RESULTS, key=lambda r: r["test"]), indent=2))
