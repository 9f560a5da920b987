"""Shared fixtures.  The lab fixtures skip (with the reason) when the lab
cannot run here: not root, no network namespaces, a tool missing."""

import contextlib
import os

import pytest

_lab_reason = []


def lab_unavailable():
    """None if the dual-WAN lab can run, else why not (checked once)."""
    if not _lab_reason:
        from tests.lab import topology
        _lab_reason.append(topology.can_run())
        if _lab_reason[0] is None:
            # leftovers of labs whose process died (killed run, crash)
            from tests.lab import cleanup
            cleanup.cleanup_dead()
    return _lab_reason[0]


def require_lab():
    reason = lab_unavailable()
    if reason:
        # In CI the lab is the point: a machine that cannot run it fails
        # loudly instead of passing with everything skipped.
        if os.environ.get("CI"):
            pytest.fail("CI=%s but the lab cannot run: %s" % (os.environ["CI"], reason))
        pytest.skip(reason)


@pytest.fixture
def lab_factory():
    """lab_factory(**Lab kwargs) -> an entered Lab, torn down after the test."""
    require_lab()
    from tests.lab import topology
    with contextlib.ExitStack() as stack:
        yield lambda **kw: stack.enter_context(topology.Lab(**kw))


@pytest.fixture(scope="module")
def lab():
    """One lab per test module, stock baseline running (the watchdog checks
    every second with the stock 150 s threshold; a test may lower
    ``lab.watchdog.stale_after`` for a while).  Tests using it must undo
    their faults."""
    require_lab()
    from tests.lab import topology
    with topology.Lab() as the_lab:
        the_lab.start_baseline(watchdog_interval=1)
        yield the_lab


@pytest.fixture
def fresh_lab(lab_factory):
    """A new lab with the stock baseline, for faults that cannot be undone."""
    return lab_factory().start_baseline(watchdog_interval=1, stale_after=5)
