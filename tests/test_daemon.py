"""The daemon's ubus handlers: diagnose holds the ubus thread only briefly."""
import threading

import pytest

from tests.test_scenarios import wlab  # noqa: F401 (the lab fixture)
from wgrouter import daemon
from wgrouter import diagnose
from wgrouter import runfiles


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


# ------------------------------------------------------------ lifecycle


def test_sigterm_during_setup_stops_before_the_loop(tmp_path, monkeypatch):
    """procd may stop the daemon while it starts (MQTT connecting, ubus):
    the SIGTERM must not be forgotten when the loop begins."""
    import signal
    from tests.test_core import make_config
    d = daemon.Daemon(root=str(tmp_path), cfg=make_config(), use_ubus=False)
    monkeypatch.setattr(d, "_start_mqtt", lambda: d._on_signal(signal.SIGTERM, None))
    monkeypatch.setattr(d, "_step", lambda now: None)
    stepped = []
    real_select = d.sel.select
    monkeypatch.setattr(d.sel, "select", lambda timeout: stepped.append(timeout) or real_select(0))
    d.run()
    assert stepped == []
    assert not (tmp_path / "var/run/wgrouter.pid").exists()


def test_an_exception_in_a_step_is_logged_and_retried(tmp_path, monkeypatch, capsys):
    from tests.test_core import make_config
    d = daemon.Daemon(root=str(tmp_path), cfg=make_config(), use_ubus=False)

    def boom(now):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(d, "_step", boom)
    assert d._guarded_step(100.0) == 100.0 + d.STEP_RETRY
    assert d.kernel_changed
    assert "step failed" in capsys.readouterr().err
    assert list(d._guarded(lambda: 1 / 0)) == []


def _run_daemon(root):
    import subprocess
    import sys
    return subprocess.Popen([sys.executable, "-m", "wgrouter", "run", "--root", str(root), "--no-ubus"],
                            stderr=subprocess.PIPE, text=True)


def _line(proc):
    import select
    ready, _, _ = select.select([proc.stderr], [], [], 20)
    assert ready, "the daemon said nothing"
    return proc.stderr.readline()


def test_invalid_config_at_start_waits_for_a_fixed_one(tmp_path):
    """Exiting would make procd respawn python every 5 s with the same error:
    the daemon logs it once and waits for SIGHUP (reload) or SIGTERM."""
    import signal
    from tests import test_config
    test_config.write(tmp_path, wgrouter=test_config.WGROUTER + "\nconfig wan 'wanb'\n\toption keepalive 'x'\n")
    proc = _run_daemon(tmp_path)
    try:
        line = _line(proc)
        assert "invalid configuration, managing nothing" in line and "keepalive" in line, line
        assert proc.poll() is None
        pidfile = tmp_path / "var/run/wgrouter.pid"
        assert pidfile.read_text().strip() == str(proc.pid)
        assert not (tmp_path / "var/run/wgrouter/ifaces").exists()  # hotplug passes nothing
        proc.send_signal(signal.SIGUSR1)  # a stray hotplug signal does not kill it
        proc.send_signal(signal.SIGHUP)  # reload, config still broken
        assert "configuration still invalid" in _line(proc)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not pidfile.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_reload_registers_ubus_once_the_binding_is_there(tmp_path, monkeypatch):
    """luci-app-wgrouter brings python3-ubus after wgrouter started: a reload
    registers the object; one already registered is left alone."""
    import types
    from tests import test_config
    from wgrouter import config
    test_config.write(tmp_path)
    (tmp_path / "var/run/wgrouter").mkdir(parents=True)
    d = daemon.Daemon(root=str(tmp_path), cfg=config.load(str(tmp_path)), use_ubus=True)
    d.engine = types.SimpleNamespace(reconfigure=lambda cfg, now: None)
    d.shell = types.SimpleNamespace(reconfigure=lambda cfg: None)
    tries = []
    monkeypatch.setattr(d, "_start_ubus", lambda: tries.append(1))
    d._reload()
    assert tries == [1]
    assert (tmp_path / "var/run/wgrouter/ifaces").read_text().split() == ["wan", "wanb", "wg0"]
    d.ubus = object()
    d._reload()
    assert tries == [1]


# ------------------------------------------------------------ control socket


def test_idle_control_clients_do_not_hold_up_a_request(tmp_path):
    """Three clients connect and say nothing: a status request is answered
    while they are still connected (the loop waited for none of them), and
    they are dropped at their deadline."""
    import socket
    import signal
    from tests import test_config
    from wgrouter import control
    test_config.write(tmp_path)
    proc = _run_daemon(tmp_path)
    try:
        assert "started" in _line(proc)
        path = str(tmp_path / runfiles.CONTROL)
        idle = []
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            idle.append(s)
        reply = control.request(str(tmp_path), {"method": "status"})
        assert reply["pid"] == proc.pid
        # the ubus handlers' requests, from a thread of their own (here from
        # another process: through the control socket instead of Daemon.post)
        ubus_side = daemon.Handlers(type("D", (), {"root": str(tmp_path), "config": None,
                                                   "post": lambda self, req: control.request(str(tmp_path), req)})())
        assert ubus_side.switch("wanb") == {"ok": True, "wan": "wanb"}
        assert ubus_side.reapply() == {"ok": True}
        for s in idle:  # still open: the daemon did not wait them out first
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
        for s in idle:  # closed by the daemon at their deadline
            s.settimeout(control.CLIENT_TIMEOUT + 5)
            assert s.recv(1) == b""
            s.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert err.count("sent no complete request within") == 3, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# ------------------------------------------------------------ hotplug spool


def _spool(tmp_path, data):
    from wgrouter import control
    path = tmp_path / runfiles.SPOOL
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _taken(events):
    return [(e.data["action"], e.data["interface"], e.data.get("device")) for e in events]


def test_a_bad_spool_line_costs_only_itself(tmp_path):
    logs = []
    path = _spool(tmp_path, b"ifup wan\xff\nifdown wan\n")
    assert _taken(runfiles.read_spool(str(tmp_path), log=logs.append)) == [("ifdown", "wan", None)]
    assert not path.exists()
    assert len(logs) == 1 and "1 bad line(s)" in logs[0] and "line 1" in logs[0] \
        and str(path) in logs[0], logs


@pytest.mark.parametrize("line", [
    b"ifup", b"reboot wan", b"ifup wan eth0 extra", b"ifup wan eth/0", b"ifup wan eth:0",
    b"ifup wan " + b"e" * 16, b"ifup w\x00an", b"ifup wan\x1b[2J",
])
def test_spool_lines_that_are_not_hotplug_events_are_skipped(tmp_path, line):
    logs = []
    _spool(tmp_path, b"ifdown wanb\n" + line + b"\nifup wan phy0-sta0\n")
    assert _taken(runfiles.read_spool(str(tmp_path), log=logs.append)) == [
        ("ifdown", "wanb", None), ("ifup", "wan", "phy0-sta0")]
    assert len(logs) == 1 and "line 2" in logs[0], logs


def test_a_spool_over_the_bound_is_cut_to_its_newest_lines(tmp_path):
    logs = []
    old = b"ifdown wan\n" * (2 * runfiles.SPOOL_MAX // 11)
    _spool(tmp_path, old + b"ifup wan\n")
    events = runfiles.read_spool(str(tmp_path), log=logs.append)
    assert _taken(events[-1:]) == [("ifup", "wan", None)]
    assert len(events) <= runfiles.SPOOL_MAX // 9
    assert all(e.data["interface"] == "wan" for e in events)  # no half line taken
    assert len(logs) == 1 and "cut unread" in logs[0], logs


def test_random_bytes_in_the_spool_never_raise(tmp_path):
    import random
    logs = []
    junk = random.Random(14).randbytes(1024 * 1024)
    _spool(tmp_path, junk + b"\nifdown wan\n")
    events = runfiles.read_spool(str(tmp_path), log=logs.append)
    assert ("ifdown", "wan", None) in _taken(events)
    assert len(logs) <= 2  # the cut, and the bad lines: once each


def test_an_unreadable_spool_is_logged_not_raised(tmp_path):
    from wgrouter import control
    logs = []
    (tmp_path / runfiles.SPOOL).mkdir(parents=True)
    assert runfiles.read_spool(str(tmp_path), log=logs.append) == []
    assert logs and "not read" in logs[0]


def test_a_new_daemon_drops_what_was_spooled_for_a_dead_one(tmp_path, capsys):
    """Found by the chaos soak (seed 3066579571): a carrier loss on wanb and
    a SIGKILL at once.  The hotplug script spooled 'ifdown wanb' for the
    dying daemon; the carrier came back while none ran (the script spools
    nothing then, so no 'ifup wanb'); the respawned daemon took the stale
    'ifdown wanb' and held wanb down, with the kernel showing it up, until it
    was killed again: the next two carrier losses on wan found no WAN up.  A
    new daemon starts from the kernel's state; the core is then never told
    wanb went down."""
    from tests.test_core import Rig, make_config, of
    from wgrouter import model
    _spool(tmp_path, b"ifdown wanb\n")
    pidfile = tmp_path / runfiles.PIDFILE
    pidfile.write_text("%d\n" % (2 ** 22 + 1))  # the dead daemon's (above any pid_max)
    d = daemon.Daemon(root=str(tmp_path), cfg=make_config(), use_ubus=False)
    try:
        d._setup()
        taken = list(d.pending)
    finally:
        d._abort_setup()
        d.monitor.close()
    # what the start feeds the core (the old one: wanb held down, the kernel showing it up)
    rig = Rig()
    rig.step(*taken)
    rig.up["wan"] = False
    decision = rig.step(dt=1)
    assert [a.wan for a in of(decision, model.ApplyPath)] == ["wanb"], decision
    assert not (tmp_path / runfiles.SPOOL).exists()
    assert "1 event(s) left by an earlier run dropped (ifdown wanb)" in capsys.readouterr().err

@pytest.mark.lab
def test_a_bad_spool_line_on_a_running_daemon_costs_only_itself(wlab):
    """On a running daemon: "ifup wan\\xff" then "ifdown wan" in the spool,
    and the ifdown is taken (the tunnel leaves wan); then 1 MB of random
    bytes ending in "ifup wan": the daemon keeps running, cuts the spool,
    takes the newest line and fails back after the hold-down."""
    import os
    import random
    import signal
    from tests.lab import scenarios
    from tests.test_scenarios import SCALE, daemon_log
    from wgrouter import control
    lab = wlab()
    scenarios.steady(lab.probes)
    spool = os.path.join(lab.root, runfiles.SPOOL)
    with open(spool, "ab") as f:
        f.write(b"ifup wan\xff\nifdown wan\n")
    lab.wgrouter.send_signal(signal.SIGUSR1)
    scenarios.wait_state(lab, lambda p: p.get("wan") == "wanb", 5 * SCALE)
    assert "1 bad line(s) skipped" in daemon_log(lab), daemon_log(lab)
    with open(spool, "ab") as f:
        f.write(random.Random(2).randbytes(1024 * 1024) + b"\nifup wan\n")
    lab.wgrouter.send_signal(signal.SIGUSR1)
    scenarios.wait_state(lab, lambda p: p.get("wan") == "wan", (scenarios.LAB_HOLDDOWN + 5) * SCALE)
    log = daemon_log(lab)
    assert "cut unread" in log and "event source failed" not in log, log
    assert lab.wgrouter.poll() is None
    assert lab.tunnel_works(10)


class SlowImport:
    """A stand-in for the slow file system of the QEMU tier, where importing
    paho took over 40 s: importing wgrouter.mqtt waits until released."""

    def __init__(self):
        self.gate = threading.Event()
        self.asked = threading.Event()

    def find_spec(self, name, path=None, target=None):
        if name == "wgrouter.mqtt":
            self.asked.set()
            self.gate.wait(30)
        return None  # then imported as usual


def _loop_answers(d, request, timeout=10.0):
    import time
    deadline = time.monotonic() + timeout
    while not d.running or d.wake_w is None:
        assert time.monotonic() < deadline, "the daemon did not start"
        threading.Event().wait(0.01)
    return d.post(request, timeout=max(0.1, deadline - time.monotonic()))


@pytest.fixture
def slow_mqtt_import(monkeypatch):
    import sys
    import wgrouter
    slow = SlowImport()
    monkeypatch.delitem(sys.modules, "wgrouter.mqtt", raising=False)
    monkeypatch.delattr(wgrouter, "mqtt", raising=False)  # else `from wgrouter import mqtt` finds it
    monkeypatch.setattr(sys, "meta_path", [slow] + sys.meta_path)
    yield slow
    slow.gate.set()


@pytest.mark.parametrize("at", ["start", "reload"])
def test_mqtt_starting_slowly_never_holds_the_loop(tmp_path, monkeypatch, slow_mqtt_import, at):
    """MQTT is started off the loop, at start-up and at reload: requests are
    answered while paho is still being imported, the transitions of the
    meantime reach MQTT once it is ready, and SIGTERM stops it."""
    import dataclasses
    import os
    import signal
    from tests.test_core import make_config
    from wgrouter import model
    slow = slow_mqtt_import
    on = model.MqttSettings(enabled=True, host="127.0.0.1", port=1, identity="gw")
    cfg = make_config()
    cfg = dataclasses.replace(cfg, mqtt=on if at == "start" else model.MqttSettings())
    d = daemon.Daemon(root=str(tmp_path), cfg=cfg, use_ubus=False)
    if at == "reload":
        from wgrouter import config as wconfig
        monkeypatch.setattr(wconfig, "load", lambda root: dataclasses.replace(cfg, mqtt=on))
    seen = {}

    def client():
        try:
            if at == "reload":
                _loop_answers(d, {"method": "status"})
                os.kill(os.getpid(), signal.SIGHUP)
            assert slow.asked.wait(10), "MQTT was not started"
            # paho is still being imported: the loop answers all the same
            seen["switch"] = _loop_answers(d, {"method": "switch", "wan": "wanb"})
            seen["starting"] = type(d.mqtt).__name__
            slow.gate.set()
            for _ in range(1000):
                if isinstance(d.mqtt, sinks.MqttSink):
                    break
                threading.Event().wait(0.01)
            seen["sink"] = d.mqtt
            seen["events"] = [m.payload for m in d.mqtt.telemetry.queued() if m.topic.endswith("/event")]
        finally:
            slow.gate.set()
            os.kill(os.getpid(), signal.SIGTERM)

    from wgrouter import sinks
    thread = threading.Thread(target=client)
    thread.start()
    d.run()
    thread.join(10)
    assert seen["switch"] == {"ok": True, "wan": "wanb"}
    assert seen["starting"] == "MqttStarter"
    assert isinstance(seen["sink"], sinks.MqttSink)
    assert any(b"pinned to wanb" in p for p in seen["events"]), seen["events"]
    assert seen["sink"].telemetry._stopping  # stopped with the daemon


class _QuietShell:
    """The shell of a loop with nothing going on: no WAN, no peer, no action."""
    wg_error = kernel_error = None

    def learn(self, pending):
        return False

    def observe(self, kernel_changed):
        return {}, {}, {}

    def execute(self, action):
        return []

    def relays(self):
        return {}


def test_a_step_builds_its_status_only_when_someone_takes_it(tmp_path, monkeypatch):
    """The snapshot (the whole status as JSON) is most of an idle step's work;
    without MQTT nothing takes it until a status request comes."""
    from tests.test_core import make_config
    from wgrouter import core, sinks
    d = daemon.Daemon(root=str(tmp_path), cfg=make_config(), use_ubus=False)
    d.engine, d.shell = core.Engine(d.config, 100.0), _QuietShell()
    built = []
    real = d.engine.snapshot
    monkeypatch.setattr(d.engine, "snapshot", lambda now, wall=None: built.append(now) or real(now, wall))
    for t in (100.0, 101.5, 103.0):
        d._step(t)
    assert built == []
    first = d.status()
    assert built == [103.0] and "tunnels" in first
    assert d.status()["tunnels"] == first["tunnels"] and built == [103.0]  # built once
    d._step(104.5)
    d.status()
    assert built == [103.0, 104.5]

    class Taker(sinks.Sink):
        takes_state = True
        seen = []

        def state(self, snapshot, wall):
            self.seen.append(snapshot)

    d.mqtt = Taker()
    d._step(106.0)
    d._step(107.5)
    assert built[-2:] == [106.0, 107.5] and len(Taker.seen) == 2
