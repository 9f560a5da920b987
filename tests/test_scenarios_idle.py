"""An idle tunnel at the shipped defaults in the dual-WAN lab: our keepalives
only, the far end sending nothing (the lab's server has no keepalive, and
WireGuard answers a keepalive with nothing).

wgrouter runs with check_interval, probe_timeout and failback_holddown left
out of its config (model.Settings), under a wrapper that records every
process it starts.  WGROUTER_LAB_SCALE stretches the bounds.
"""

import os
import sys
import time

import pytest

from tests.conftest import require_lab
from tests.lab import observe
from tests.lab import scenarios
from tests.lab import topology
from tests.test_scenarios import daemon_log

pytestmark = pytest.mark.lab

SCALE = float(os.environ.get("WGROUTER_LAB_SCALE", "1"))
KEEPALIVE = 25  # the lab's keepalive on wan (write_wgrouter_config)
IDLE_BOUND = (KEEPALIVE + 5.0) * SCALE
SHIPPED = {"check_interval": None, "probe_timeout": None, "failback_holddown": None}

# Runs the daemon as `python3 -m wgrouter run` does, with every way the
# stdlib starts a process (subprocess, os.fork, os.posix_spawn) recorded in
# a file, one line each: time, then what.
RECORDER = r"""
import os, runpy, subprocess, sys, time
LOG = os.environ["WGROUTER_FORK_LOG"]
def record(what):
    with open(LOG, "a") as f:
        f.write("%.3f %s\n" % (time.time(), what))
execute_child = subprocess.Popen._execute_child
def recorded(self, args, *rest, **kw):
    record("subprocess %r" % (args,))
    return execute_child(self, args, *rest, **kw)
subprocess.Popen._execute_child = recorded
for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp"):
    real = getattr(os, name, None)
    if real is not None:
        def wrapper(*args, _real=real, _name=name, **kw):
            record("os.%s %r" % (_name, args[:2]))
            return _real(*args, **kw)
        setattr(os, name, wrapper)
runpy.run_module("wgrouter", run_name="__main__")
"""


def forks(path, since, until=None):
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        t, _, what = line.partition(" ")
        if float(t) >= since and (until is None or float(t) < until):
            out.append(what)
    return out


def rx_bytes(lab):
    """Bytes the router's WireGuard device has received from the server."""
    r = lab.run("router", "wg", "show", lab.router_wg, "transfer")
    return sum(int(line.split("\t")[1]) for line in r.stdout.splitlines() if "\t" in line)


@pytest.fixture
def idle_lab():
    require_lab()
    lab = topology.Lab(keep_tmp=bool(os.environ.get("WGROUTER_LAB_KEEP")))
    lab.__enter__()
    cap = None
    try:
        log = lab.log("forks.log")
        os.environ["WGROUTER_FORK_LOG"] = log
        cmd = [sys.executable, "-c", RECORDER, "run", "--root", lab.root]
        scenarios.start(lab, "wgrouter", cmd=cmd, **SHIPPED)
        lab.fork_log = log
        cap = lab.cap = observe.Capture(lab)
        yield lab
    finally:
        os.environ.pop("WGROUTER_FORK_LOG", None)
        if cap is not None:
            cap.stop()
        lab.__exit__(None, None, None)


def test_idle_tunnel_silent_failure_recovered_within_keepalive_plus_5s_without_forking(idle_lab):
    lab = idle_lab
    # Steady state: the start's routes and kick are done, the tunnel is up
    # and nobody sends through it.  Over more than a keepalive interval the
    # daemon must probe it (it receives an answer) and start no process.
    time.sleep(2.0)
    steady, rx0 = time.time(), rx_bytes(lab)
    time.sleep(KEEPALIVE + 8.0)
    rx1 = rx_bytes(lab)
    forked = forks(lab.fork_log, steady)
    assert forked == [], (forked, daemon_log(lab))
    assert rx1 > rx0, "an idle tunnel got no probe in %ds (rx %d -> %d)\n%s" % (
        KEEPALIVE + 8, rx0, rx1, daemon_log(lab))
    assert forks(lab.fork_log, 0), "the recorder saw not even the start's commands"

    out = scenarios.silent_failure_idle(lab, lab.cap, limit=IDLE_BOUND + 30, idle=0)
    t = out.fault_time
    assert out.recovered, (out, scenarios.peer_status(lab), daemon_log(lab))
    assert out.seconds <= IDLE_BOUND, (out, daemon_log(lab))
    assert scenarios.peer_status(lab)["wan"] == "wanb"
    assert observe.tunnel_works(lab, timeout=5 * SCALE)
    assert lab.cap.leaks(since=t) == []
    # wan is still up for the kernel and netifd: only wgrouter noticed
    assert "NO-CARRIER" not in lab.ip("router", "link", "show", "wan").stdout
