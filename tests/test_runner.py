import os
import selectors

import pytest

from wgrouter import runner


def test_run_captures_output_and_rc():
    r = runner.Runner().run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert r == runner.Result(3, "out\n", "err\n")


def test_run_passes_input():
    r = runner.Runner().run(["cat"], input="hello")
    assert (r.rc, r.out) == (0, "hello")


def test_run_converts_arguments_to_strings():
    r = runner.Runner().run(["echo", 51820])
    assert r.out == "51820\n"


def test_missing_command_raises():
    with pytest.raises(runner.CommandMissing) as e:
        runner.Runner().run(["/nonexistent/wg-xyz", "show"])
    assert "wg-xyz" in str(e.value)
    assert isinstance(e.value, runner.wgrouter.Error)


def test_timeout_kills_and_reports():
    r = runner.Runner().run(["sleep", "30"], timeout=0.2)
    assert r.rc == runner.TIMEOUT_RC
    assert "timed out" in r.err


def test_spawn_missing_raises():
    with pytest.raises(runner.CommandMissing):
        runner.Runner().spawn(["/nonexistent/ping-xyz"])


def test_child_reads_until_eof_and_reaps():
    proc = runner.Runner().spawn(["sh", "-c", "echo one; echo two; echo bad >&2; exit 2"])
    os.set_blocking(proc.stdout.fileno(), False)
    child = runner.Child(proc, 0, lambda rc, out, err: [(rc, out, err)], lambda: [])
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        sel.select(5)
        if not child.read():
            break
    sel.close()
    rc, out, err = child.reap()
    assert (rc, out, err) == (2, "one\ntwo\n", "bad\n")
    assert proc.stdout.closed and proc.stderr.closed


def test_child_reap_kill():
    proc = runner.Runner().spawn(["sleep", "30"])
    child = runner.Child(proc, 0, None, None)
    rc, out, err = child.reap(kill=True)
    assert rc == -9
    assert proc.poll() == -9


def test_reap_does_not_wait_for_a_lingering_grandchild():
    # the grandchild keeps stdout/stderr open after the child exited
    proc = runner.Runner().spawn(["sh", "-c", "sleep 30 & echo $!; echo warn >&2"])
    proc.wait()
    pid = int(proc.stdout.readline())
    child = runner.Child(proc, 0, None, None)
    try:
        rc, out, err = child.reap()
        assert (rc, err) == (0, "warn\n")
    finally:
        os.kill(pid, 9)


def test_fork_failure_is_a_result_or_cannot_start(monkeypatch):
    def no_memory(*args, **kw):
        raise OSError(12, "Cannot allocate memory")  # fork() on a router short of memory

    monkeypatch.setattr(runner.subprocess, "Popen", no_memory)
    r = runner.Runner().run(["wg", "show", "all", "dump"])
    assert r == runner.Result(runner.CANNOT_START_RC, "", "cannot start wg: Cannot allocate memory")
    with pytest.raises(runner.CannotStart) as e:
        runner.Runner().spawn(["ping", "-c", "1", "10.9.0.1"])
    assert str(e.value) == "cannot start ping: Cannot allocate memory"
    assert isinstance(e.value, runner.wgrouter.Error) and issubclass(runner.CommandMissing, runner.CannotStart)
