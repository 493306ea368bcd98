"""Health thresholds (pure logic) and the HealthCheck actor against the real agent."""

from __future__ import annotations

from mvm.actors.health_check import HealthPolicy, HealthTracker


def test_thresholds_need_consecutive_fresh_verdicts() -> None:
    tracker = HealthTracker(HealthPolicy(unhealthy_after=2, healthy_after=1))
    assert tracker.state == "unknown" and not tracker.settled
    assert tracker.observe("healthy", 100) == "healthy"
    assert tracker.settled
    assert tracker.observe("unhealthy", 200) is None  # one failure is not enough
    assert not tracker.settled  # pending: the actor polls at the check interval
    assert tracker.observe("unhealthy", 200) is None  # same check seen twice: ignored
    assert tracker.observe("unhealthy", 300) == "unhealthy"
    assert tracker.settled
    assert tracker.observe("healthy", 400) == "healthy"


def test_a_success_resets_the_failure_count() -> None:
    tracker = HealthTracker(HealthPolicy(unhealthy_after=3))
    tracker.observe("healthy", 1)
    tracker.observe("unhealthy", 2)
    tracker.observe("unhealthy", 3)
    tracker.observe("healthy", 4)
    assert tracker.observe("unhealthy", 5) is None
    assert tracker.observe("unhealthy", 6) is None
    assert tracker.state == "healthy"
