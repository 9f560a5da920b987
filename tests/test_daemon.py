"""The daemon's ubus handlers: diagnose holds the ubus thread only briefly."""
import threading

import pytest

from wgrouter import daemon
from wgrouter import diagnose


class FakeDaemon:
    root = "/nonexistent"
    config = None


@pytest.fixture
def slow_diagnose(monkeypatch):
    """diagnose.run blocks until the test releases it; counts its runs."""
    gate = threading.Event()
    runs = []

    def run(root, config):
        runs.append(root)
        gate.wait(10)
        return {"summary": "ok", "run": len(runs)}

    monkeypatch.setattr(diagnose, "run", run)
    monkeypatch.setattr(daemon, "UBUS_DIAGNOSE_WAIT", 0.05)
    return gate, runs


def test_fast_diagnose_is_answered_in_the_same_call(slow_diagnose):
    gate, runs = slow_diagnose
    gate.set()
    h = daemon.Handlers(FakeDaemon())
    assert h.diagnose() == {"summary": "ok", "run": 1}
    assert h.diagnose() == {"summary": "ok", "run": 2}  # each call a fresh report


def test_slow_diagnose_answers_later_calls_without_running_twice(slow_diagnose):
    gate, runs = slow_diagnose
    h = daemon.Handlers(FakeDaemon())
    first = h.diagnose()
    assert "still running" in first["error"], first
    assert "still running" in h.diagnose()["error"]  # the same run, not a second one
    assert len(runs) == 1
    gate.set()
    for _ in range(200):
        if h._diag_thread is None:
            break
        threading.Event().wait(0.01)
    assert h.diagnose() == {"summary": "ok", "run": 1}  # the late report, handed out once
    assert h.diagnose() == {"summary": "ok", "run": 2}


def test_a_stale_late_report_is_not_handed_out(slow_diagnose, monkeypatch):
    gate, runs = slow_diagnose
    gate.set()
    h = daemon.Handlers(FakeDaemon())
    h._diag_done = (-1e9, {"summary": "old"})  # finished long before UBUS_DIAGNOSE_KEEP
    assert h.diagnose() == {"summary": "ok", "run": 1}


def test_a_crashing_diagnose_is_an_error_report(monkeypatch):
    def boom(root, config):
        raise RuntimeError("no netlink")
    monkeypatch.setattr(diagnose, "run", boom)
    assert daemon.Handlers(FakeDaemon()).diagnose() == {"error": "diagnose failed: no netlink"}
