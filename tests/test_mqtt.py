"""wgrouter.mqtt: payloads and queue without a broker, behaviour with a real mosquitto."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

import wgrouter.model
import wgrouter.mqtt as mqtt
from tests import mosquitto

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_broker = pytest.mark.skipif(not mosquitto.available(), reason="mosquitto or mosquitto-clients not installed")
needs_openssl = pytest.mark.skipif(not mosquitto.available(tls=True), reason="openssl not installed (test CA)")


def peer(state="up", wan="wan", age=3.0, rx=100, tx=200, **extra):
    p = {
        "state": state,
        "wan": wan,
        "endpoint": "192.0.2.1:51820",
        "endpoint_source": "uci",
        "keepalive": 25,
        "handshake_age": age,
        "rx": rx,
        "tx": tx,
        "last_step": None,
    }
    p.update(extra)
    return p


def snapshot(**tunnels):
    if not tunnels:
        tunnels = {"wg0": {"site": peer()}}
    return {
        "tunnels": {name: {"peers": peers} for name, peers in tunnels.items()},
        "wans": {"wan": {"up": True, "healthy": True, "active": True}, "wanb": {"up": True, "healthy": True, "active": False}},
        "events": [],
        "version": "9.9.9",
    }


def settings(**kw):
    kw.setdefault("enabled", True)
    kw.setdefault("host", "127.0.0.1")
    return wgrouter.model.MqttSettings(**kw)


class Log(list):
    def __call__(self, line):
        self.append(line)

    def has(self, text):
        return any(text in line for line in self)


def telemetry(identity="r1", log=None, clock=None, **kw):
    return mqtt.Telemetry(settings(**kw), identity, log=log if log is not None else Log(), clock=clock or (lambda: 1000.0))


def queued(t):
    return [(m.topic, m.payload, m.retain) for m in t.queued()]


# ------------------------------------------------------------ pure parts


def test_scrub_removes_secret_fields_everywhere():
    value = {
        "private_key": "a",
        "PrivateKey": "b",
        "peers": [{"preshared_key": "c", "public_key": "PUB", "ok": 1}],
        "nested": {"password": "d", "mqtt_password": "e", "psk": "f", "keep": {"secret": "g", "x": 2}},
    }
    out = mqtt.scrub(value)
    assert out == {"peers": [{"public_key": "PUB", "ok": 1}], "nested": {"keep": {"x": 2}}}
    for secret in "abcdefg":
        assert '"%s"' % secret not in mqtt.encode(value).decode()


@pytest.mark.parametrize(
    "peers, connected, wan, age",
    [
        ({"a": peer("up", "wan", 5.4)}, True, "wan", 5),
        ({"a": peer("down", "wan", None)}, False, "wan", None),
        ({"a": peer("down", None, None), "b": peer("up", "wanb", 40.0)}, True, "wanb", 40),
        ({"a": peer("suspect", "wan", 200.0), "b": peer("recovering", "wanb", 7.6)}, False, "wan", 8),
        ({}, False, None, None),
    ],
)
def test_tunnel_state(peers, connected, wan, age):
    state = mqtt.tunnel_state("wg0", {"peers": peers}, 5.0)
    assert (state["connected"], state["wan"], state["handshake_age"]) == (connected, wan, age)
    assert state["tunnel"] == "wg0" and set(state["peers"]) == set(peers)


def test_tunnel_state_from_the_cores_snapshot_shape():
    # Engine.snapshot() keys peers by public key and names them by label.
    tunnel = {
        "wan": "wanb", "state": "recovering", "suspect_wans": {"wan": 1200.0}, "last_restart": None,
        "peers": {
            "PUBKEY1=": dict(peer("up", "wanb", 12.5), label="hq", evidence=None, recovery_steps=0),
            "PUBKEY2=": dict(peer("recovering", "wanb", None), label="dc", evidence="handshake 200 s old",
                             recovery_steps=2),
        },
    }
    state = mqtt.tunnel_state("wg0", tunnel, 1000.0)
    assert set(state["peers"]) == {"hq", "dc"}
    assert state["peers"]["dc"]["public_key"] == "PUBKEY2=" and state["peers"]["dc"]["recovery_steps"] == 2
    assert (state["wan"], state["state"], state["connected"], state["peers_up"]) == ("wanb", "recovering", True, 1)
    assert state["suspect_wans"] == {"wan": 1200.0} and state["handshake_age"] == 12
    # New evidence alone is refreshed by the heartbeat, a new step is a change.
    tunnel["peers"]["PUBKEY2="]["evidence"] = "handshake 210 s old; probe failed"
    assert mqtt.significant(mqtt.tunnel_state("wg0", tunnel, 1010.0)) == mqtt.significant(state)
    tunnel["peers"]["PUBKEY2="]["recovery_steps"] = 3
    assert mqtt.significant(mqtt.tunnel_state("wg0", tunnel, 1010.0)) != mqtt.significant(state)


def test_topics_are_safe_and_follow_the_tree():
    t = mqtt.Topics("fleet/", "my router/+#", "ha")
    assert t.status == "fleet/my_router___/status"
    assert t.state("wg/0") == "fleet/my_router___/tunnel/wg_0/state"
    assert t.event == "fleet/my_router___/event" and t.heartbeat == "fleet/my_router___/heartbeat"
    d = mqtt.Topics("wgrouter", "gw.lan", "homeassistant").discovery("wg0")
    assert d == {
        "connectivity": "homeassistant/binary_sensor/gw_lan_wg0/connectivity/config",
        "handshake_age": "homeassistant/sensor/gw_lan_wg0/handshake_age/config",
        "wan": "homeassistant/sensor/gw_lan_wg0/wan/config",
    }


def test_queue_newest_retained_state_supersedes_queued_one():
    q = mqtt.OutQueue(10)
    q.put(mqtt.Message("s/wg0", b"1", 1, True))
    q.put(mqtt.Message("e", b"ev", 1, False))
    q.put(mqtt.Message("s/wg1", b"x", 1, True))
    q.put(mqtt.Message("s/wg0", b"2", 1, True))
    assert [(m.topic, m.payload) for m in q] == [("e", b"ev"), ("s/wg1", b"x"), ("s/wg0", b"2")]
    assert q.superseded == 1 and q.dropped == 0


def test_queue_full_drops_oldest_events_and_counts():
    q = mqtt.OutQueue(3)
    for i in range(5):
        q.put(mqtt.Message("e", b"%d" % i, 1, False))
    assert [m.payload for m in q] == [b"2", b"3", b"4"] and q.dropped == 2
    q.put(mqtt.Message("s", b"state", 1, True))  # retained makes room by dropping an event
    assert [m.payload for m in q] == [b"3", b"4", b"state"] and q.dropped == 3
    assert q.pop().payload == b"3" and len(q) == 2


def test_queue_never_drops_retained_state_for_an_event():
    q = mqtt.OutQueue(2)
    q.put(mqtt.Message("s/a", b"a", 1, True))
    q.put(mqtt.Message("s/b", b"b", 1, True))
    q.put(mqtt.Message("e", b"ev", 1, False))
    q.put(mqtt.Message("s/c", b"c", 1, True))
    assert [m.topic for m in q] == ["s/a", "s/b", "s/c"] and q.dropped == 1
    q.put(mqtt.Message("s/a", b"a2", 1, True), front=True)
    assert q.pop().payload == b"a2"


def test_publish_state_queues_only_changed_tunnels():
    t = telemetry()
    t.publish_state(snapshot(wg0={"a": peer()}, wg1={"b": peer()}))
    assert [m[0] for m in queued(t)] == ["wgrouter/r1/tunnel/wg0/state", "wgrouter/r1/tunnel/wg1/state"]
    # Counters and ages alone are no state change ...
    t.publish_state(snapshot(wg0={"a": peer(rx=5000, age=9.0)}, wg1={"b": peer()}))
    assert len(t.queued()) == 2
    assert json.loads(queued(t)[0][1])["peers"]["a"]["rx"] == 100
    # ... a peer going down is, and supersedes the queued state of wg1.
    t.publish_state(snapshot(wg0={"a": peer(rx=5000, age=9.0)}, wg1={"b": peer("down", wan="wanb")}))
    got = queued(t)
    assert [m[0] for m in got] == ["wgrouter/r1/tunnel/wg0/state", "wgrouter/r1/tunnel/wg1/state"]
    wg1 = json.loads(got[1][1])
    assert wg1["connected"] is False and wg1["wan"] == "wanb" and all(m[2] for m in got)


def test_heartbeat_refreshes_counters_and_reports_fleet_facts():
    now = [1000.0]
    t = telemetry(clock=lambda: now[0], heartbeat=60.0)
    assert t.heartbeat_due(1000.0) == 1000.0
    t.publish_state(snapshot(wg0={"a": peer(rx=1)}, wg1={"b": peer("down")}))
    now[0] = 1030.0
    t.heartbeat(1030.0, snapshot(wg0={"a": peer(rx=2)}, wg1={"b": peer("down")}))
    assert t.heartbeat_due(1030.0) == 1090.0
    got = {m[0]: json.loads(m[1]) for m in queued(t)}
    assert got["wgrouter/r1/tunnel/wg0/state"]["peers"]["a"]["rx"] == 2
    beat = got["wgrouter/r1/heartbeat"]
    assert beat["uptime"] == 30.0 and beat["time"] == 1030.0
    assert (beat["tunnels"], beat["tunnels_up"], beat["version"], beat["wan"]) == (2, 1, "9.9.9", "wan")


def test_events_are_not_retained_and_never_carry_keys():
    t = telemetry(queue_max=5)
    t.publish_event({"time": 1.0, "tunnel": "wg0", "peer": "a", "was": "up", "now": "down",
                     "because": "handshake 200 s old", "kind": "state", "preshared_key": "PSK=", "private_key": "PK="})
    topic, payload, retain = queued(t)[0]
    assert topic == "wgrouter/r1/event" and retain is False
    event = json.loads(payload)
    assert event["was"] == "up" and "preshared_key" not in event and b"PSK=" not in payload and b"PK=" not in payload
    t.publish_state(snapshot(wg0={"a": peer(private_key="PK=", password="pw")}))
    assert all(b"PK=" not in m[1] and b'"pw"' not in m[1] for m in queued(t))


def test_event_burst_is_bounded_while_disconnected():
    log = Log()
    t = telemetry(queue_max=20, log=log)
    t.publish_state(snapshot())
    for i in range(100):
        t.publish_event({"time": float(i), "tunnel": "wg0", "peer": "a", "was": "up", "now": "down", "because": str(i), "kind": "state"})
    got = queued(t)
    assert len(got) == 20 and t.dropped == 81
    assert [line for line in log if "dropping" in line] == [
        "mqtt: broker 127.0.0.1:1883 out of reach and 20 messages queued: dropping the oldest events"]
    assert got[0][0].endswith("/tunnel/wg0/state")  # the state survived the burst
    assert json.loads(got[-1][1])["because"] == "99"


def test_removed_tunnel_clears_its_retained_topics():
    t = telemetry(ha_discovery=True)
    t.publish_state(snapshot(wg0={"a": peer()}, wg1={"b": peer()}))
    assert len(t.queued()) == 8  # 2 states + 2 x 3 discovery configs
    t.publish_state(snapshot(wg0={"a": peer()}))
    cleared = sorted(m[0] for m in queued(t) if m[1] == b"")
    assert cleared == sorted(["wgrouter/r1/tunnel/wg1/state"] + list(t.topics.discovery("wg1").values()))
    # An empty snapshot (daemon still starting) clears and says nothing yet.
    n = len(t.queued())
    t.publish_state({})
    t.heartbeat(1000.0, {})
    assert len(t.queued()) == n and t.heartbeat_due(1000.0) == 1000.0 + mqtt.EARLY_HEARTBEAT_RETRY


def test_discovery_payloads_share_one_device_and_availability():
    topics = mqtt.Topics("wgrouter", "gw", "homeassistant")
    device = {"identifiers": ["wgrouter_gw"], "name": "wgrouter gw"}
    configs = mqtt.discovery_payloads(topics, "wg0", device)
    assert set(configs) == set(topics.discovery("wg0").values())
    conn = configs["homeassistant/binary_sensor/gw_wg0/connectivity/config"]
    assert conn["device_class"] == "connectivity" and conn["state_topic"] == "wgrouter/gw/tunnel/wg0/state"
    age = configs["homeassistant/sensor/gw_wg0/handshake_age/config"]
    assert age["unit_of_measurement"] == "s" and "handshake_age" in age["value_template"]
    assert len({c["unique_id"] for c in configs.values()}) == 3
    for c in configs.values():
        assert c["device"] is device and c["availability_topic"] == "wgrouter/gw/status"


def test_bad_settings_raise_module_errors(tmp_path):
    with pytest.raises(mqtt.BadProtocol):
        telemetry(protocol="4")
    with pytest.raises(mqtt.TlsSetupFailed) as err:
        telemetry(tls=True, ca_file=str(tmp_path / "missing.crt"))
    assert "cannot set up TLS" in str(err.value)
    assert isinstance(err.value, wgrouter.Error)


def test_refusal_is_logged_once_per_problem():
    log = Log()
    t = telemetry(log=log, port=1999)
    # paho 1.x passes the 3.1.1 CONNACK code as an int, 2.x a ReasonCode.
    t._on_connect(None, None, {}, 5)
    t._on_connect(None, None, {}, 5)
    t._on_connect_fail(None, None)
    assert log == [
        "mqtt: broker 127.0.0.1:1999 refused the connection: not authorised",
        "mqtt: cannot reach broker 127.0.0.1:1999, retrying with backoff",
    ]
    assert not t.connected


class FakeClient:
    """Stands in for paho's client: records publish() calls, hands out mids."""

    class Info:
        def __init__(self, rc, mid):
            self.rc, self.mid = rc, mid

    def __init__(self):
        self.published = []
        self.connected = True
        self.mid = 0

    def publish(self, topic, payload, qos, retain):
        self.mid += 1
        self.published.append((self.mid, topic, payload))
        return self.Info(0 if self.connected else mqtt.ERR_NO_CONN, self.mid)


def fake(**kw):
    t = telemetry(**kw)
    t._client = FakeClient()
    return t, t._client


def disconnect(t):
    t._on_disconnect(None, None, *((None, 7, None) if t._v2 else (7,)))


def test_nothing_reaches_paho_while_disconnected_then_online_comes_first():
    t, client = fake()
    t.publish_state(snapshot())
    t.publish_event({"time": 1.0, "tunnel": "wg0", "peer": "a", "was": "a", "now": "b", "because": "c", "kind": "state"})
    assert client.published == []
    t._on_connect(None, None, {}, 0)
    topics = [p[1] for p in client.published]
    assert topics == ["wgrouter/r1/status", "wgrouter/r1/event", "wgrouter/r1/tunnel/wg0/state"]
    assert client.published[0][2] == b"online"


def test_window_bounds_what_paho_holds():
    t, client = fake(queue_max=100)
    t._on_connect(None, None, {}, 0)
    for i in range(30):
        t.publish_event({"time": float(i), "tunnel": "wg0", "peer": "a", "was": "a", "now": "b", "because": str(i), "kind": "state"})
    assert len(client.published) == mqtt.WINDOW
    t._on_publish(None, None, client.published[0][0])
    t._on_publish(None, None, client.published[1][0])
    assert len(client.published) == mqtt.WINDOW + 2 and t.sent == 2
    assert len(t.queued()) == 30 + 1 - mqtt.WINDOW - 2


def test_after_reconnect_fresh_state_follows_pahos_resends():
    t, client = fake()
    t._on_connect(None, None, {}, 0)
    t._on_publish(None, None, client.published[0][0])  # online acknowledged
    t.publish_state(snapshot(wg0={"a": peer()}))
    old = client.published[-1]
    disconnect(t)  # the "up" state is still unacknowledged inside paho
    t.publish_state(snapshot(wg0={"a": peer("down")}))
    n = len(client.published)
    t._on_connect(None, None, {}, 0)
    # paho resends the old state after on_connect returns: wait for its ack.
    assert len(client.published) == n
    t._on_publish(None, None, old[0])
    fresh = client.published[n:]
    assert [p[1] for p in fresh] == ["wgrouter/r1/status", "wgrouter/r1/tunnel/wg0/state"]
    assert json.loads(fresh[1][2])["connected"] is False


def test_unconfirmed_messages_do_not_hold_the_window_forever(monkeypatch):
    t, client = fake()
    t._on_connect(None, None, {}, 0)
    for i in range(mqtt.WINDOW + 5):
        t.publish_event({"time": float(i), "tunnel": "wg0", "peer": "a", "was": "a", "now": "b", "because": str(i), "kind": "state"})
    assert len(client.published) == mqtt.WINDOW
    monkeypatch.setattr(mqtt, "UNACKED_FORGET", -1.0)
    t.publish_event({"time": 99.0, "tunnel": "wg0", "peer": "a", "was": "a", "now": "b", "because": "x", "kind": "state"})
    assert len(client.published) > mqtt.WINDOW and t.unacked >= mqtt.WINDOW


def test_stop_is_idempotent_and_queues_offline():
    t, client = fake()
    client.disconnect = lambda: client.published.append((0, "disconnect", b""))
    client.loop_stop = lambda: client.published.append((0, "loop_stop", b""))
    t.stop()
    t.stop()
    assert [p[1] for p in client.published] == ["disconnect", "loop_stop"]
    assert [(m.topic, m.payload) for m in t.queued()] == [("wgrouter/r1/status", b"offline")]


# ---------------------------------------------------- with a real broker


@pytest.fixture
def broker():
    b = mosquitto.Broker()
    try:
        yield b.start()
    finally:
        b.close()


@pytest.fixture
def running():
    started = []

    def run(t):
        started.append(t)
        t.start()
        return t

    yield run
    for t in started:
        t.stop()


def wait_connected(t, log, connects=1):
    sub = threading.Event()
    for _ in range(100):
        if t.connected and t.connects >= connects:
            return
        sub.wait(0.1)
    raise AssertionError("not connected: %s" % list(log))


def payloads(sub, topic):
    return [p for _, t, p in sub.messages if t == topic]


@pytest.mark.mqtt
@needs_broker
def test_topics_payloads_and_late_subscriber_sees_retained(broker, running):
    live = mosquitto.Subscriber(broker)
    log = Log()
    t = running(telemetry("gw1", log=log, port=broker.port, clock=None))
    t.publish_state(snapshot(wg0={"a": peer(preshared_key="PSK-SECRET")}))
    t.publish_event({"time": 5.0, "tunnel": "wg0", "peer": "a", "was": "down", "now": "up", "because": "handshake", "kind": "recovery"})
    t.heartbeat(t.clock(), snapshot(wg0={"a": peer()}))
    assert live.wait(lambda ms: len(ms) >= 4), live.messages
    assert payloads(live, "wgrouter/gw1/status") == ["online"]
    state = json.loads(payloads(live, "wgrouter/gw1/tunnel/wg0/state")[0])
    assert state["connected"] is True and state["wan"] == "wan" and state["peers"]["a"]["endpoint"] == "192.0.2.1:51820"
    assert json.loads(payloads(live, "wgrouter/gw1/event")[0])["kind"] == "recovery"
    assert json.loads(payloads(live, "wgrouter/gw1/heartbeat")[0])["tunnels_up"] == 1
    assert not any("PSK-SECRET" in p for _, _, p in live.messages)
    live.close()
    with mosquitto.Subscriber(broker, "wgrouter/gw1/#") as late:
        assert late.wait(lambda ms: len(ms) >= 3)
        got = {topic: (retain, payload) for retain, topic, payload in late.messages}
        assert got["wgrouter/gw1/status"] == (True, "online")
        assert got["wgrouter/gw1/tunnel/wg0/state"][0] is True
        assert "wgrouter/gw1/event" not in got
    t.stop()
    with mosquitto.Subscriber(broker, "wgrouter/gw1/status") as after:
        assert after.wait(lambda ms: ms) == [(True, "wgrouter/gw1/status", "offline")]
    assert log.has("connected to broker 127.0.0.1:%d (MQTT 3.1.1)" % broker.port)


CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import wgrouter.model, wgrouter.mqtt
s = wgrouter.model.MqttSettings(enabled=True, host="127.0.0.1", port=int(sys.argv[2]))
t = wgrouter.mqtt.Telemetry(s, "child", log=lambda line: print(line, flush=True))
t.start()
t.publish_state({"tunnels": {"wg0": {"peers": {"a": {"state": "up", "wan": "wan"}}}}, "wans": {}, "version": "x"})
while True:
    time.sleep(1)
"""


@pytest.mark.mqtt
@needs_broker
def test_last_will_marks_a_killed_router_offline(broker):
    sub = mosquitto.Subscriber(broker, "wgrouter/child/#")
    child = subprocess.Popen([sys.executable, "-c", CHILD, ROOT, str(broker.port)], stdout=subprocess.PIPE)
    try:
        assert sub.wait(lambda ms: ("wgrouter/child/status", "online") in [(t, p) for _, t, p in ms])
        assert sub.wait(lambda ms: any(t.endswith("/tunnel/wg0/state") for _, t, _ in ms))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert sub.wait(lambda ms: ms[-1][1:] == ("wgrouter/child/status", "offline")), sub.messages
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        sub.close()
    with mosquitto.Subscriber(broker, "wgrouter/child/status") as late:
        assert late.wait(lambda ms: ms) == [(True, "wgrouter/child/status", "offline")]


@pytest.mark.mqtt
@needs_broker
def test_broker_restart_republishes_current_state(broker, running):
    log = Log()
    t = running(telemetry("gw2", log=log, port=broker.port, clock=None))
    t.publish_state(snapshot(wg0={"a": peer()}))
    wait_connected(t, log)
    broker.stop()  # no persistence: the broker forgets every retained message
    t.publish_state(snapshot(wg0={"a": peer("down", wan="wanb")}))  # changes while it is away
    t.publish_event({"time": 1.0, "tunnel": "wg0", "peer": "a", "was": "up", "now": "down", "because": "b", "kind": "failover"})
    broker.start()
    wait_connected(t, log, connects=2)
    with mosquitto.Subscriber(broker, "wgrouter/gw2/#") as late:
        assert late.wait(lambda ms: len(ms) >= 2)
        got = {topic: payload for _, topic, payload in late.messages}
        assert got["wgrouter/gw2/status"] == "online"
        state = json.loads(got["wgrouter/gw2/tunnel/wg0/state"])
        assert state["connected"] is False and state["wan"] == "wanb"
    assert log.has("lost the connection to broker")


def count_socket_calls(monkeypatch):
    """Record (thread, method, peer port) of every socket call from now on."""
    calls = []

    def peer_port(sock):
        try:
            return sock.getpeername()[1]
        except (OSError, IndexError, TypeError):
            return None

    for name in ("send", "sendall", "sendto", "connect", "connect_ex", "recv", "recv_into"):
        original = getattr(socket.socket, name)

        def wrapper(self, *args, _original=original, _name=name, **kw):
            calls.append((threading.get_ident(), _name, peer_port(self) if _name != "connect" else args[0][1]))
            return _original(self, *args, **kw)

        monkeypatch.setattr(socket.socket, name, wrapper)
    return calls


@pytest.mark.mqtt
@needs_broker
def test_unreachable_broker_never_touches_the_callers_thread(monkeypatch, running):
    b = mosquitto.Broker()  # port chosen, broker not started yet
    try:
        log = Log()
        t = running(telemetry("gw3", log=log, port=b.port, queue_max=20))
        calls = count_socket_calls(monkeypatch)
        me = threading.get_ident()
        for i in range(50):
            t.publish_state(snapshot(wg0={"a": peer("up" if i % 2 else "down")}))
            t.publish_event({"time": float(i), "tunnel": "wg0", "peer": "a", "was": "x", "now": "y", "because": "z", "kind": "state"})
            t.heartbeat(float(i), snapshot())
        assert [c for c in calls if c[0] == me] == []
        assert not t.connected and len(t.queued()) == t.settings.queue_max
        b.start()  # (the helper's own connect() probes run on this thread)
        wait_connected(t, log)
        mark = len(calls)
        # The counter does see the caller's thread: while connected, handing a
        # message to paho only wakes paho's thread through its local socket
        # pair and never writes to the broker's connection.
        t.publish_event({"time": 99.0, "tunnel": "wg0", "peer": "a", "was": "x", "now": "y", "because": "z", "kind": "state"})
        mine = [c for c in calls[mark:] if c[0] == me]
        assert mine and all(c[1] == "send" and c[2] != b.port for c in mine), mine
        assert any(c[0] != me and c[2] == b.port for c in calls)
        with mosquitto.Subscriber(b, "wgrouter/gw3/#") as late:
            assert late.wait(lambda ms: len(ms) >= 3)
            assert json.loads(late.on("wgrouter/gw3/tunnel/wg0/state")[0][2])["connected"] is True
        assert log.has("cannot reach broker 127.0.0.1:%d, retrying with backoff" % b.port)
        assert t.dropped > 0
    finally:
        b.close()


@pytest.mark.mqtt
@needs_broker
def test_hung_broker_fills_only_our_bounded_queue(broker, monkeypatch, running):
    log = Log()
    t = running(telemetry("gw10", log=log, port=broker.port, queue_max=20))
    t.publish_state(snapshot())
    wait_connected(t, log)
    idle = threading.Event()
    for _ in range(100):
        if not t.queued() and t.sent >= 2:  # online and the state acknowledged
            break
        idle.wait(0.05)
    with mosquitto.Subscriber(broker, "wgrouter/gw10/event") as sub:
        broker.proc.send_signal(signal.SIGSTOP)  # connected, but never answers
        try:
            calls = count_socket_calls(monkeypatch)
            me = threading.get_ident()
            for i in range(200):
                t.publish_event({"time": float(i), "tunnel": "wg0", "peer": "a", "was": "x", "now": "y",
                                 "because": str(i), "kind": "state"})
            mine = [c for c in calls if c[0] == me]
            assert all(c[1] == "send" and c[2] != broker.port for c in mine), mine
            assert len(mine) == mqtt.WINDOW  # one wake-up per message paho may hold
            assert len(t.queued()) == 20 and t.dropped == 200 - 20 - mqtt.WINDOW
        finally:
            broker.proc.send_signal(signal.SIGCONT)
        # Everything not dropped arrives once the broker answers again, newest last.
        assert sub.wait(lambda ms: len(ms) >= 20 + mqtt.WINDOW), len(sub.messages)
        assert json.loads(sub.messages[-1][2])["because"] == "199"


@pytest.mark.mqtt
@needs_broker
def test_auth_failure_is_one_clear_log_line_and_no_busy_loop(running):
    with mosquitto.Broker(users={"router": "right"}) as b:
        log = Log()
        t = running(telemetry("gw4", log=log, port=b.port, username="router", password="wrong"))
        t.publish_state(snapshot())
        seen = threading.Event()
        for _ in range(40):
            if log.has("refused the connection"):
                break
            seen.wait(0.1)
        refused = [line for line in log if "refused" in line]
        assert refused and refused[0].startswith("mqtt: broker 127.0.0.1:%d refused the connection: " % b.port)
        assert refused[0].endswith(("not authorised", "bad user name or password"))
        seen.wait(2.5)
        # Backoff doubles from RECONNECT_MIN: a handful of attempts, one line.
        attempts = b.read_log().count("New connection from")
        assert 1 <= attempts <= 4, attempts
        assert len(refused) == 1 and not t.connected and "right" not in "".join(log)


@pytest.mark.mqtt
@needs_broker
@needs_openssl
@pytest.mark.parametrize("client_cert", [False, True])
def test_tls_with_a_test_ca_and_password(running, client_cert):
    with mosquitto.Broker(users={} if client_cert else {"router": "pw"}, tls=True, require_certificate=client_cert) as b:
        creds = {"cert": True} if client_cert else {"user": "router", "password": "pw"}
        with mosquitto.Subscriber(b, "wgrouter/#", **creds) as sub:
            extra = {"cert_file": b.certs["client.crt"], "key_file": b.certs["client.key"]} if client_cert else {
                "username": "router", "password": "pw"}
            log = Log()
            t = running(telemetry("gw5", log=log, port=b.port, tls=True, ca_file=b.certs["ca.crt"], **extra))
            t.publish_state(snapshot())
            assert sub.wait(lambda ms: any(m[1] == "wgrouter/gw5/tunnel/wg0/state" for m in ms)), log
            assert log.has("(MQTT 3.1.1, TLS)")


@pytest.mark.mqtt
@needs_broker
@needs_openssl
def test_tls_rejects_a_broker_outside_the_ca(running, tmp_path):
    with mosquitto.Broker(tls=True) as b:
        other = mosquitto.make_certs(str(tmp_path))  # a different CA
        log = Log()
        t = running(telemetry("gw6", log=log, port=b.port, tls=True, ca_file=other["ca.crt"]))
        t.publish_state(snapshot())
        wait = threading.Event()
        for _ in range(30):
            if log:
                break
            wait.wait(0.1)
        assert not t.connected and log.has("cannot reach broker")


@pytest.mark.mqtt
@needs_broker
def test_mqtt5(broker, running):
    with mosquitto.Subscriber(broker, "wgrouter/#", protocol="mqttv5") as sub:
        log = Log()
        t = running(telemetry("gw7", log=log, port=broker.port, protocol="5"))
        t.publish_state(snapshot())
        t.publish_event({"time": 1.0, "tunnel": "wg0", "peer": "a", "was": "x", "now": "y", "because": "z", "kind": "state"})
        assert sub.wait(lambda ms: len(ms) >= 3)
        assert log.has("(MQTT 5)")
        assert json.loads(sub.on("wgrouter/gw7/event")[0][2])["now"] == "y"
    assert "(p5," in broker.read_log()


@pytest.mark.mqtt
@needs_broker
def test_mqtt5_auth_failure_logged(running):
    with mosquitto.Broker(users={"router": "right"}) as b:
        log = Log()
        running(telemetry("gw8", log=log, port=b.port, protocol="5", username="router", password="bad"))
        wait = threading.Event()
        for _ in range(40):
            if log:
                break
            wait.wait(0.1)
        assert log and log[0].startswith("mqtt: broker 127.0.0.1:%d refused the connection: " % b.port), log


@pytest.mark.mqtt
@needs_broker
def test_home_assistant_discovery_on_the_broker(broker, running):
    t = running(telemetry("gw9", port=broker.port, ha_discovery=True, ha_prefix="ha"))
    t.publish_state(snapshot())
    # the configs must be on the broker before the subscriber comes, so that
    # it gets them as retained messages (not as live ones)
    settled = threading.Event()
    for _ in range(100):
        if t.connected and not t.queued() and not t._inflight:
            break
        settled.wait(0.05)
    assert t.connected and not t.queued()
    with mosquitto.Subscriber(broker, "ha/#") as sub:
        assert sub.wait(lambda ms: len(ms) >= 3)
        got = {topic: (retain, json.loads(payload)) for retain, topic, payload in sub.messages}
    assert set(got) == {"ha/binary_sensor/gw9_wg0/connectivity/config", "ha/sensor/gw9_wg0/handshake_age/config",
                        "ha/sensor/gw9_wg0/wan/config"}
    for retain, config in got.values():
        assert retain is True
        assert config["availability_topic"] == "wgrouter/gw9/status"
        assert config["device"]["identifiers"] == ["wgrouter_gw9"]
        assert config["state_topic"] == "wgrouter/gw9/tunnel/wg0/state"


@pytest.mark.mqtt
@needs_broker
def test_fleet_bench_small_run_loses_nothing():
    import bench.fleet

    result = bench.fleet.run(routers=5, seconds=1.5)
    assert result["connected"] == 5 and result["published"] > 5 * 3
    assert result["received"] == result["published"] and result["lost"] == 0


@pytest.mark.skipif(not os.environ.get("WGROUTER_EXPECT_PAHO"),
                    reason="only in the run against OpenWrt's paho version (make test-openwrt-versions)")
def test_runs_against_the_paho_version_asked_for():
    # make test runs this file a second time against OpenWrt 24.10's
    # python3-paho-mqtt; this says the venv really holds that version.
    import paho.mqtt
    assert paho.mqtt.__version__ == os.environ["WGROUTER_EXPECT_PAHO"]
