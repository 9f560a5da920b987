"""wgrouter.ubusobj against FakeBus and tests/ubus_contract.json."""

import os
import re
import threading

import pytest

from tests import fakebus
from wgrouter import ubusobj

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRACT = fakebus.load_contract()

# JSON type of a contract argument -> blobmsg type name of the binding
BLOBMSG = {"string": "STRING", "integer": "INT32", "boolean": "BOOL", "number": "DOUBLE",
           "object": "TABLE", "array": "ARRAY"}

STATUS = {
    "tunnels": {"wg0": {"peers": {"office": {
        "state": "up", "wan": "wan", "endpoint": "192.0.2.1:51820",
        "endpoint_source": "netifd", "keepalive": 25, "handshake_age": 12.5,
        "rx": 1234, "tx": 5678, "last_step": None}}}},
    "wans": {"wan": {"up": True, "healthy": True, "active": True},
             "wanb": {"up": True, "healthy": True, "active": False}},
    "events": [{"time": 1700000000.5, "text": "wg0 peer office: was wanb, now wan, because failback"}],
    "version": "0.1.0",
    "pid": 1234,
    "uptime": 12.0,
}


class Handlers:
    def __init__(self):
        self.calls = []
        self.threads = []

    def _seen(self, *call):
        self.calls.append(call)
        self.threads.append(threading.get_ident())

    def status(self):
        self._seen("status")
        return STATUS

    def reapply(self):
        self._seen("reapply")
        return {"ok": True}

    def switch(self, wan):
        self._seen("switch", wan)
        if wan not in ("auto", "wan", "wanb"):
            return {"error": "unknown WAN %r" % wan}
        return {"ok": True, "wan": wan}

    def diagnose(self):
        self._seen("diagnose")
        raise NotImplementedError


@pytest.fixture
def bus():
    return fakebus.FakeBus()


@pytest.fixture
def service(bus):
    logs = []
    svc = ubusobj.UbusService(Handlers(), backend=bus, log=logs.append)
    svc.logs = logs
    assert svc.start()
    yield svc
    svc.stop()


def client(bus):
    """A second connection to the same bus, like the ubus CLI or rpcd."""
    other = fakebus.FakeBus(bus.ubusd)
    other.connect()
    return other


# --------------------------------------------------------------- contract

def test_object_matches_contract(service, bus):
    assert ubusobj.OBJECT == CONTRACT["object"]
    signatures = client(bus).objects()[CONTRACT["object"]]
    expected = {m: {a: getattr(bus, "BLOBMSG_TYPE_" + BLOBMSG[t]) for a, t in spec["args"].items()}
                for m, spec in CONTRACT["methods"].items()}
    assert signatures == expected


def test_events_match_contract():
    assert set(ubusobj.EVENTS) == set(CONTRACT["events"])


@pytest.mark.parametrize("method,args,expected_call", [
    ("status", {}, ("status",)),
    ("reapply", {}, ("reapply",)),
    ("switch", {"wan": "wanb"}, ("switch", "wanb")),
    ("switch", {"wan": "auto"}, ("switch", "auto")),
    ("diagnose", {}, ("diagnose",)),
])
def test_calls_reach_handler_and_replies_match_contract(service, bus, method, args, expected_call):
    replies = client(bus).call("wgrouter", method, args)
    assert len(replies) == 1
    fakebus.check_reply(method, replies[0])
    assert service.handlers.calls == [expected_call]


def test_diagnose_not_implemented_is_an_error_reply(service, bus):
    [reply] = client(bus).call("wgrouter", "diagnose", {})
    assert reply == {"error": "diagnose is not available in this version"}


def test_handler_exception_becomes_error_reply(service, bus):
    def broken():
        raise ValueError("snapshot missing")
    service.handlers.status = broken
    [reply] = client(bus).call("wgrouter", "status", {})
    assert "snapshot missing" in reply["error"]
    fakebus.check_reply("status", reply)
    assert any("status failed" in line for line in service.logs)


@pytest.mark.parametrize("method,args", [
    ("status", {"verbose": True}),  # undeclared argument
    ("reapply", {"now": 1}),
    ("switch", {}),  # missing argument
    ("switch", {"wan": 2}),  # mistyped
    ("switch", {"wan": True}),
    ("switch", {"wan": "wanb", "force": True}),  # extra
    ("diagnose", {"x": "y"}),
])
def test_bad_arguments_refused_like_ubus(service, bus, method, args):
    with pytest.raises(RuntimeError) as e:
        client(bus).call("wgrouter", method, args)
    assert e.value.status == fakebus.STATUS_INVALID_ARGUMENT
    assert "Invalid argument" in str(e.value)
    assert service.handlers.calls == []


def test_unknown_method_and_object(service, bus):
    c = client(bus)
    with pytest.raises(RuntimeError) as e:
        c.call("wgrouter", "restart", {})
    assert e.value.status == fakebus.STATUS_METHOD_NOT_FOUND
    with pytest.raises(RuntimeError, match="not found"):
        c.call("wgrouterd", "status", {})


def test_callback_exception_is_unknown_error_for_caller(bus):
    def broken(handler, data):
        raise KeyError("boom")
    bus.connect()
    bus.add("broken", {"ping": {"method": broken, "signature": {}}})
    with pytest.raises(RuntimeError) as e:
        client(bus).call("broken", "ping", {})
    assert e.value.status == fakebus.STATUS_UNKNOWN_ERROR
    assert isinstance(bus.callback_errors[0], KeyError)


def test_dispatch_never_raises_into_the_binding(service, bus):
    def broken(wan):
        raise RuntimeError("core exploded")
    service.handlers.switch = broken
    [reply] = client(bus).call("wgrouter", "switch", {"wan": "wan"})
    assert "core exploded" in reply["error"]
    assert bus.callback_errors == []


def test_callback_without_reply_is_empty_success(bus):
    bus.connect()
    bus.add("silent", {"ping": {"method": lambda handler, data: None, "signature": {}}})
    assert client(bus).call("silent", "ping", {}) == []


# ------------------------------------------------------------ lifecycle

def test_start_fails_cleanly_without_ubusd():
    bus = fakebus.FakeBus(fakebus.Ubusd())
    bus.ubusd.up = False
    logs = []
    svc = ubusobj.UbusService(Handlers(), backend=bus, log=logs.append)
    assert svc.start() is False
    assert not bus.get_connected()
    assert logs and "cannot register" in logs[0]


def test_start_fails_when_name_taken_and_disconnects():
    bus = fakebus.FakeBus(fakebus.Ubusd(names=["wgrouter"]))
    logs = []
    svc = ubusobj.UbusService(Handlers(), backend=bus, log=logs.append)
    assert svc.start() is False
    assert "Invalid argument" in logs[0]
    assert not bus.get_connected()  # so a later start() can connect again


def test_start_without_binding_installed(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_ubus(name, *args, **kwargs):
        if name == "ubus":
            raise ImportError("No module named 'ubus'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_ubus)
    logs = []
    assert ubusobj.UbusService(Handlers(), log=logs.append).start() is False
    assert "python3-ubus" in logs[0]


def test_fakebus_strictness(bus):
    with pytest.raises(RuntimeError):
        bus.disconnect()  # not connected
    with pytest.raises(TypeError):
        bus.connect(socket_path=None)  # "|s" in the binding
    bus.connect()
    with pytest.raises(RuntimeError):
        bus.connect()  # twice
    with pytest.raises(TypeError):
        bus.loop(0.5)  # ms, an int
    with pytest.raises(TypeError):
        bus.add("x", {"m": {"method": print}})  # no signature
    bus.disconnect()
    assert not bus.get_connected()


def test_served_in_thread_handlers_run_there(service, bus, monkeypatch):
    monkeypatch.setattr(ubusobj, "LOOP_MS", 50)
    thread = service.serve_forever_in_thread()
    c = client(bus)
    [reply] = c.call("wgrouter", "switch", {"wan": "wan"})
    assert reply == {"ok": True, "wan": "wan"}
    assert service.handlers.threads == [thread.ident]
    assert thread.ident != threading.get_ident()
    service.stop()
    assert not thread.is_alive()
    assert not bus.get_connected()
    assert "wgrouter" not in c.objects()


def test_events_sent_with_full_name_and_match_contract(service, bus):
    seen = []
    client(bus).listen(("wgrouter.*", lambda ev, data: seen.append((ev, data))))
    data = {"time": 1.0, "tunnel": "wg0", "peer": "office", "was": "wan", "now": "wanb",
            "because": "handshake timeout", "kind": "failover"}
    service.send_event("transition", data)
    assert seen == [("wgrouter.transition", data)]
    fakebus.check_event("wgrouter.transition", seen[0][1])
    with pytest.raises(ubusobj.UnknownEvent):
        service.send_event("reboot", {})


def test_events_from_main_thread_are_sent_by_serving_thread(service, bus, monkeypatch):
    monkeypatch.setattr(ubusobj, "LOOP_MS", 20)
    sender = []
    real_send = bus.send

    def send(event, data):
        sender.append(threading.get_ident())
        return real_send(event, data)
    monkeypatch.setattr(bus, "send", send)
    thread = service.serve_forever_in_thread()
    service.send_event("wgrouter.transition", {"time": 2.0, "tunnel": "wg0", "peer": None,
                                               "was": "up", "now": "down", "because": "x",
                                               "kind": "state"})
    service.stop()  # flushes what is still queued
    assert [e for e, _ in bus.sent] == ["wgrouter.transition"]
    assert sender and all(ident in (thread.ident, threading.get_ident()) for ident in sender)


def test_send_event_before_start_refused():
    svc = ubusobj.UbusService(Handlers(), backend=fakebus.FakeBus(), log=lambda m: None)
    with pytest.raises(ubusobj.NotStarted):
        svc.send_event("transition", {})


def test_reconnects_after_ubusd_restart(service, bus, monkeypatch):
    monkeypatch.setattr(ubusobj, "LOOP_MS", 50)
    monkeypatch.setattr(ubusobj, "RECONNECT_MIN", 0.01)
    thread = service.serve_forever_in_thread()
    c = client(bus)
    assert c.call("wgrouter", "reapply", {}) == [{"ok": True}]
    bus.lose_connection()  # ubusd restarted: object gone, loop() returns at once
    for _ in range(500):  # a bound on attempts, not a timing assertion
        if "wgrouter" in c.objects():
            break
        threading.Event().wait(0.01)
    assert c.call("wgrouter", "reapply", {}) == [{"ok": True}]
    assert any("connection lost" in line for line in service.logs)
    assert any("registered again" in line for line in service.logs)
    service.stop()
    assert not thread.is_alive()


def test_idle_loop_does_not_reconnect(service, bus, monkeypatch):
    monkeypatch.setattr(ubusobj, "LOOP_MS", 20)
    service.serve_forever_in_thread()
    for _ in range(500):
        if bus.loop_calls >= 3:
            break
        threading.Event().wait(0.01)
    service.stop()
    assert not [line for line in service.logs if "reconnect" in line]


def test_serving_guards_sigchld(service, monkeypatch):
    import signal
    monkeypatch.setattr(ubusobj, "LOOP_MS", 20)
    before = signal.getsignal(signal.SIGCHLD)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        service.serve_forever_in_thread()
        # uloop installs its waitpid(-1) reaper only over SIG_DFL
        assert signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, None)
        service.stop()
    finally:
        signal.signal(signal.SIGCHLD, before)


# ------------------------------------------------------------- helpers

def test_check_reply_rejects_bad_shapes():
    good = dict(STATUS)
    fakebus.check_reply("status", good)
    bad_peer = {"tunnels": {"wg0": {"peers": {"p": dict(
        STATUS["tunnels"]["wg0"]["peers"]["office"], rx="12")}}}}
    for bad in (
        dict(good, version=1),
        {k: v for k, v in good.items() if k != "wans"},
        dict(good, version=None),
        dict(good, wans={"wan": {"up": 1, "healthy": True, "active": True}}),
        dict(good, **bad_peer),
        dict(good, events=[{"time": "now", "text": "x"}]),
    ):
        with pytest.raises(fakebus.ContractError):
            fakebus.check_reply("status", bad)
    fakebus.check_reply("status", dict(good, next_check=3.0))  # more keys are fine
    with pytest.raises(fakebus.ContractError):
        fakebus.check_reply("switch", {"ok": True})
    with pytest.raises(fakebus.ContractError):
        fakebus.check_reply("switch", {"ok": True, "wan": "wan", "more": 1})
    with pytest.raises(fakebus.ContractError):
        fakebus.check_reply("nosuch", {})
    with pytest.raises(fakebus.ContractError):
        fakebus.check_event("wgrouter.transition", {"tunnel": "wg0"})


def test_core_snapshot_is_a_valid_status_reply():
    """What the daemon answers to `status`: the core's snapshot plus version."""
    import wgrouter
    from wgrouter import core, model
    peer = model.Peer("wg0", "office", "A" * 43 + "=", (model.Endpoint("192.0.2.1"),),
                      keepalive=25)
    cfg = model.Config(settings=model.Settings(),
                       wans=(model.Wan("wan", "eth1"), model.Wan("wanb", "wwan0")),
                       tunnels=(model.Tunnel("wg0", (peer,)),))
    snap = core.Engine(cfg, 1000.0).snapshot(1000.0)
    snap.update(version=wgrouter.__version__, pid=1, uptime=0.0)
    fakebus.check_reply("status", snap)
    assert set(snap["wans"]) == {"wan", "wanb"}
    assert len(snap["tunnels"]["wg0"]["peers"]) == 1


# ---------------------------------------------------------------- README

def test_readme_ubus_section_lists_contract_methods():
    try:
        with open(os.path.join(ROOT, "README.md")) as f:
            text = f.read()
    except FileNotFoundError:
        pytest.skip("README.md does not exist yet")
    m = re.search(r"^## ubus API\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    if m is None:
        pytest.skip("README.md has no '## ubus API' section yet")
    section = m.group(1)
    # each method is documented as `ubus call wgrouter METHOD ...`
    documented = set(re.findall(r"ubus call wgrouter (\w+)", section))
    assert documented == set(CONTRACT["methods"]), (
        "README '## ubus API' documents %s, the contract has %s"
        % (sorted(documented), sorted(CONTRACT["methods"])))
