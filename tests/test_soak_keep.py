"""Where a failing chaos soak keeps its logs (tests/lab/soak.py keep_logs):
outside every path the lab's cleanup removes, never over an earlier run's."""

import os
import tempfile

from tests.lab import cleanup
from tests.lab import soak
from tests.lab import topology


def _lab_logdir(base):
    tmp = os.path.join(base, "%st9999999abc-xyz" % topology.TMP_PREFIX)
    os.makedirs(os.path.join(tmp, "log"))
    with open(os.path.join(tmp, "log", "wgrouter.log"), "w") as f:
        f.write("wgrouter: started\n")
    return os.path.join(tmp, "log")


def test_kept_logs_are_outside_the_labs_prefix_and_hold_the_daemon_log(tmp_path):
    logdir = _lab_logdir(str(tmp_path))
    path = soak.keep_logs(3066579571, logdir, "daemon text\n", base=str(tmp_path))
    assert path == os.path.join(str(tmp_path), "wgrouter-soak-3066579571")
    assert not os.path.basename(path).startswith(topology.TMP_PREFIX)
    with open(os.path.join(path, "wgrouter.log")) as f:
        assert f.read() == "wgrouter: started\n"
    with open(os.path.join(path, "daemon.log")) as f:
        assert f.read() == "daemon text\n"


def test_a_second_run_of_the_seed_keeps_the_first_runs_logs(tmp_path):
    first = soak.keep_logs(7, _lab_logdir(str(tmp_path)), "one", base=str(tmp_path))
    second = soak.keep_logs(7, None, "two", base=str(tmp_path))
    assert second == first + "-2"
    with open(os.path.join(first, "daemon.log")) as f:
        assert f.read() == "one"
    with open(os.path.join(second, "daemon.log")) as f:
        assert f.read() == "two"


def test_the_dead_lab_cleanup_does_not_see_the_kept_dir(monkeypatch, tmp_path):
    # cleanup_dead() removes the temp dirs of labs whose process is gone;
    # the kept copy must not be one of them, whatever pid its seed reads as
    # (9999999 is above the largest pid_max, 2**22: no such process)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(cleanup, "namespaces", lambda: [])
    _lab_logdir(str(tmp_path))
    soak.keep_logs(1, None, "", base=str(tmp_path))
    assert cleanup.dead_prefixes() == ["t9999999abc"]
    cleanup.cleanup("t9999999abc")
    assert os.listdir(str(tmp_path)) == ["wgrouter-soak-1"]
