"""MQTT telemetry: tunnel state, transitions and heartbeats on a broker.

Imported by the daemon only when ``config mqtt 'mqtt'`` has ``enabled 1``;
this is the only module that imports paho-mqtt, and it does so when a
``Telemetry`` is built, so the pure parts below (topics, payloads, the
outgoing queue) work without it.

Threads: paho's own network thread (``loop_start``) does all socket I/O.
The daemon's thread only builds payloads, puts them into a bounded
``OutQueue`` and, while connected, hands a few of them to paho, which only
appends to paho's in-memory queue and wakes paho's thread.  A broker that is
down, slow or restarting therefore never delays the daemon.

Topic tree (``P`` = prefix, ``I`` = identity)::

    P/I/status              retained "online" / "offline" (also the last will)
    P/I/tunnel/TUN/state    retained JSON state of one tunnel
    P/I/event               JSON transition, not retained
    P/I/heartbeat           retained JSON: time, uptime, tunnels, version
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time

import wgrouter
import wgrouter.model

# ---------------------------------------------------------------- errors


class Error(wgrouter.Error):
    """MQTT telemetry error"""


class PahoMissing(Error):
    """paho-mqtt is not installed (python3-paho-mqtt); MQTT telemetry is off"""


class BadProtocol(Error):
    """mqtt protocol must be "3.1.1" or "5\""""


class TlsSetupFailed(Error):
    """cannot set up TLS for the MQTT broker"""


# ------------------------------------------------------------- constants

# Messages handed to paho and not yet acknowledged.  Kept below paho's own
# inflight limit (20) so that paho never queues on its side: our bounded,
# superseding queue is the one that absorbs a slow or absent broker.
WINDOW = 10

# paho's reconnect backoff: first retry after 1 s, doubling up to 2 min, so
# a refused login or a dead broker costs one attempt per 2 min at most.
RECONNECT_MIN = 1
RECONNECT_MAX = 120

# Seconds stop() waits for queued messages and "offline" to reach the
# broker; stop runs at daemon shutdown and procd kills us after 5 s.
STOP_FLUSH = 2.0

# s after which a message handed to paho and still unconfirmed is written
# off: paho resends it on reconnect, and by then the broker answers in well
# under a second; this only unblocks the window if paho lost it.
UNACKED_FORGET = 60.0

EARLY_HEARTBEAT_RETRY = 5.0  # s, when asked for a heartbeat before any snapshot

KEEPALIVE = 60  # s, MQTT keepalive; the broker fires the will after 1.5x

# Fields that change at every poll; a change in only these does not make a
# tunnel's retained state worth republishing (the heartbeat refreshes them).
VOLATILE = frozenset(("handshake_age", "rx", "tx", "time", "evidence"))

# Anything that looks like a secret never leaves the router.
SECRET = re.compile(r"private_?key|preshared_?key|psk|password|passwd|secret", re.I)

# CONNACK return codes of MQTT 3.1.1 and reason codes of MQTT 5 that refuse
# the connection, in the broker's own words; same text with paho 1.x and 2.x.
REFUSED = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
    132: "unsupported protocol version",
    133: "client identifier not valid",
    134: "bad user name or password",
    135: "not authorised",
    136: "server unavailable",
    138: "banned",
}

ERR_NO_CONN = 4  # paho's MQTT_ERR_NO_CONN, the same in 1.x and 2.x

PROTOCOLS = {"3.1": "MQTTv31", "3.1.1": "MQTTv311", "311": "MQTTv311", "5": "MQTTv5", "5.0": "MQTTv5"}

# ------------------------------------------------------- pure: payloads


def scrub(value):
    """Copy of ``value`` without any field named like a key or password."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if not SECRET.search(str(k))}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def encode(value) -> bytes:
    return json.dumps(scrub(value), sort_keys=True, separators=(",", ":")).encode()


def topic_part(name: str) -> str:
    """A name made safe for one topic level (no wildcards, no separator)."""
    return re.sub(r"[+#/\s\x00]", "_", str(name)) or "_"


def node_part(name: str) -> str:
    """A name made safe for a Home Assistant node or object id."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(name)) or "_"


class Topics:
    def __init__(self, prefix: str, identity: str, ha_prefix: str = "homeassistant"):
        self.identity = topic_part(identity)
        self.base = "%s/%s" % (prefix.strip("/"), self.identity)
        self.status = self.base + "/status"
        self.event = self.base + "/event"
        self.heartbeat = self.base + "/heartbeat"
        self.ha_prefix = ha_prefix.strip("/")
        self.node = node_part(identity)

    def state(self, tunnel: str) -> str:
        return "%s/tunnel/%s/state" % (self.base, topic_part(tunnel))

    def discovery(self, tunnel: str) -> dict:
        """Home Assistant discovery topics of one tunnel, by sensor key."""
        node = "%s_%s" % (self.node, node_part(tunnel))
        return {
            "connectivity": "%s/binary_sensor/%s/connectivity/config" % (self.ha_prefix, node),
            "handshake_age": "%s/sensor/%s/handshake_age/config" % (self.ha_prefix, node),
            "wan": "%s/sensor/%s/wan/config" % (self.ha_prefix, node),
        }


def tunnel_state(name: str, tunnel: dict, now: float) -> dict:
    """The retained JSON of one tunnel, from its part of Engine.snapshot().

    The core keys peers by public key and names them by ``label``; here they
    are keyed by label (the UCI section), with the public key kept inside.
    """
    peers = {}
    for key, peer in (tunnel.get("peers") or {}).items():
        peer = dict(peer)
        label = str(peer.get("label") or key)
        if label in peers:
            label = str(key)
        if label != key:
            peer.setdefault("public_key", key)
        peers[label] = peer
    up = [p for p in peers.values() if p.get("state") == "up"]
    if "wan" in tunnel:
        wan = tunnel["wan"]
    else:
        wan = next((p["wan"] for p in up + list(peers.values()) if p.get("wan")), None)
    ages = [p["handshake_age"] for p in peers.values() if p.get("handshake_age") is not None]
    state = {k: v for k, v in tunnel.items() if k != "peers"}
    state.update(
        tunnel=name,
        connected=bool(up),
        wan=wan,
        peers_up=len(up),
        handshake_age=round(min(ages)) if ages else None,
        peers=peers,
        time=round(now, 3),
    )
    return scrub(state)


def significant(state: dict) -> dict:
    """The part of a tunnel state whose change is worth a publish."""
    out = {k: v for k, v in state.items() if k not in VOLATILE}
    out["peers"] = {
        label: {k: v for k, v in peer.items() if k not in VOLATILE}
        for label, peer in (state.get("peers") or {}).items()
    }
    return out


def _untimed(state):
    return None if state is None else {k: v for k, v in state.items() if k != "time"}


def heartbeat_payload(snapshot: dict, now: float, started: float, dropped: int) -> dict:
    tunnels = snapshot.get("tunnels") or {}
    up = sum(1 for t in tunnels.values() if any(p.get("state") == "up" for p in (t.get("peers") or {}).values()))
    active = [name for name, w in (snapshot.get("wans") or {}).items() if w.get("active")]
    return {
        "time": round(now, 3),
        "uptime": round(now - started, 3),
        "tunnels": len(tunnels),
        "tunnels_up": up,
        "wan": active[0] if active else None,
        "version": snapshot.get("version", wgrouter.__version__),
        "dropped": dropped,
    }


def discovery_payloads(topics: Topics, tunnel: str, device: dict) -> dict:
    """Home Assistant MQTT discovery configs of one tunnel, by topic."""
    node = "%s_%s" % (topics.node, node_part(tunnel))
    common = {
        "state_topic": topics.state(tunnel),
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
    }

    def entity(key, label, **fields):
        ident = "wgrouter_%s_%s" % (node, key)
        return dict(common, name="%s %s" % (tunnel, label), unique_id=ident, object_id=ident, **fields)

    configs = {
        "connectivity": entity(
            "connectivity", "connectivity",
            device_class="connectivity",
            value_template="{{ 'ON' if value_json.connected else 'OFF' }}",
            payload_on="ON",
            payload_off="OFF",
        ),
        "handshake_age": entity(
            "handshake_age", "handshake age",
            device_class="duration",
            state_class="measurement",
            unit_of_measurement="s",
            value_template="{{ value_json.handshake_age }}",
        ),
        "wan": entity(
            "wan", "active WAN",
            icon="mdi:wan",
            value_template="{{ value_json.wan }}",
        ),
    }
    where = topics.discovery(tunnel)
    return {where[key]: config for key, config in configs.items()}


# ------------------------------------------------------ pure: the queue


Message = collections.namedtuple("Message", "topic payload qos retain")


class OutQueue:
    """Bounded outgoing queue.

    A retained message supersedes the queued one of the same topic (only the
    newest state matters); retained topics are a small fixed set, one per
    tunnel plus a few, so they are never dropped.  Events are: when the
    queue is full, the oldest queued event goes and ``dropped`` counts it.
    """

    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self._items = collections.OrderedDict()  # key -> Message
        self._seq = 0
        self.dropped = 0
        self.superseded = 0

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        return iter(list(self._items.values()))

    def _make_room(self) -> bool:
        while len(self._items) >= self.limit:
            oldest = next((k for k in self._items if k[0] == "e"), None)
            if oldest is None:
                return False
            del self._items[oldest]
            self.dropped += 1
        return True

    def put(self, msg: Message, front: bool = False) -> None:
        if msg.retain:
            key = ("r", msg.topic)
            if self._items.pop(key, None) is not None:
                self.superseded += 1
            else:
                self._make_room()
        else:
            if not self._make_room():
                self.dropped += 1
                return
            self._seq += 1
            key = ("e", self._seq)
        self._items[key] = msg
        if front:
            self._items.move_to_end(key, last=False)

    def pop(self):
        """The oldest message, or None."""
        if not self._items:
            return None
        return self._items.popitem(last=False)[1]

    def clear(self) -> None:
        self._items.clear()


# ----------------------------------------------------------------- shell


def tls_context(s: wgrouter.model.MqttSettings):
    """Client TLS context: verifies the broker against ca_file (else the
    system's CAs) and its host name; cert_file/key_file log us in."""
    import ssl  # python3-openssl on OpenWrt: only needed with TLS

    try:
        context = ssl.create_default_context(cafile=s.ca_file or None)
        if s.cert_file:
            context.load_cert_chain(s.cert_file, s.key_file or None)
    except (OSError, ValueError, ssl.SSLError) as e:
        raise TlsSetupFailed("cannot set up TLS for the MQTT broker: %s" % e) from None
    return context



def _code(rc) -> int:
    """A paho result (int, ConnackCode, ReasonCode(s)) as a plain int."""
    try:
        return int(getattr(rc, "value", rc))
    except (TypeError, ValueError):
        return -1


def _reason(rc) -> str:
    code = _code(rc)
    if code in REFUSED:
        return REFUSED[code]
    name = getattr(rc, "getName", None)
    return (name() if callable(name) else "code %s" % code).lower()


class Telemetry:
    """Publishes wgrouter's state to an MQTT broker; never blocks the caller."""

    def __init__(self, settings: wgrouter.model.MqttSettings, identity: str, log=print, clock=time.time):
        try:
            import paho.mqtt.client as paho
        except ImportError:
            raise PahoMissing() from None
        self._paho = paho
        self.settings = settings
        self.identity = identity
        self.log = log
        self.clock = clock
        self.topics = Topics(settings.prefix, identity, settings.ha_prefix)
        self.started = clock()
        self.where = "%s:%s" % (settings.host, settings.port)
        self.device = {
            "identifiers": ["wgrouter_%s" % self.topics.node],
            "name": "wgrouter %s" % identity,
            "manufacturer": "wgrouter",
            "model": "WireGuard dual-WAN keeper",
            "sw_version": wgrouter.__version__,
        }
        self._lock = threading.Lock()
        self._flushed = threading.Condition(self._lock)
        self._queue = OutQueue(settings.queue_max)
        self._retained = {}  # topic -> Message: what the broker should hold
        self._last = {}  # tunnel -> significant(state) last queued
        self._full = {}  # tunnel -> state last queued
        self._inflight = {}  # mid -> (qos, monotonic time) handed to paho, not acknowledged
        self._early = set()  # mids acknowledged before publish() returned
        self._resending = False  # paho resends old messages after a reconnect
        self._connected = False
        self._stopping = False
        self._complaint = None  # last connection problem logged
        self._drop_logged = False  # logged the first drop since connecting
        self._drain_lock = threading.Lock()
        self._drain_again = False
        self._next_heartbeat = None
        self.sent = 0  # messages the broker acknowledged
        self.unacked = 0  # messages handed to paho and never confirmed
        self.connects = 0
        self._client = self._make_client()

    # -------------------------------------------------- paho set-up

    def _make_client(self):
        paho = self._paho
        s = self.settings
        proto = PROTOCOLS.get(str(s.protocol).strip())
        if proto is None:
            raise BadProtocol()
        self._protocol = getattr(paho, proto)
        self._v5 = proto == "MQTTv5"
        kwargs = {"client_id": "wgrouter-%s" % self.topics.identity, "protocol": self._protocol}
        if not self._v5:
            kwargs["clean_session"] = True
        # paho 2.x asks which callback signatures we use; 1.x has only one.
        self._v2 = hasattr(paho, "CallbackAPIVersion")
        if self._v2:
            client = paho.Client(paho.CallbackAPIVersion.VERSION2, **kwargs)
        else:
            client = paho.Client(**kwargs)
        if s.username:
            client.username_pw_set(s.username, s.password)
        # A CA or a client certificate without "option tls 1" still means TLS.
        self._tls = bool(s.tls or s.ca_file or s.cert_file)
        if self._tls:
            client.tls_set_context(tls_context(s))
        client.will_set(self.topics.status, "offline", qos=max(1, s.qos), retain=True)
        client.reconnect_delay_set(RECONNECT_MIN, RECONNECT_MAX)
        client.max_inflight_messages_set(2 * WINDOW)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        if hasattr(client, "on_connect_fail"):
            client.on_connect_fail = self._on_connect_fail
        return client

    # ------------------------------------------------------ daemon API

    def start(self) -> None:
        """Connect in paho's own thread; returns at once."""
        self._client.connect_async(self.settings.host, int(self.settings.port), KEEPALIVE)
        self._client.loop_start()

    def publish_state(self, snapshot: dict) -> None:
        """Queue the retained state of each tunnel whose state changed."""
        self._states(snapshot, refresh=False)
        self._drain()

    def publish_event(self, transition: dict) -> None:
        msg = Message(self.topics.event, encode(transition), self.settings.qos, False)
        with self._lock:
            before = self._queue.dropped
            self._queue.put(msg)
            first_drop = self._queue.dropped > before and not self._drop_logged
            self._drop_logged = self._drop_logged or first_drop
        if first_drop:
            self.log("mqtt: broker %s out of reach and %d messages queued: dropping the oldest events"
                     % (self.where, self._queue.limit))
        self._drain()

    def heartbeat_due(self, now: float) -> float:
        return self.started if self._next_heartbeat is None else self._next_heartbeat

    def heartbeat(self, now: float, snapshot: dict) -> None:
        """Refresh every tunnel's state (counters, ages) and send a heartbeat."""
        if "tunnels" not in snapshot:
            # The daemon has no snapshot yet: a heartbeat saying "0 tunnels"
            # would mislead a fleet view, so ask again shortly.
            self._next_heartbeat = now + min(self.settings.heartbeat, EARLY_HEARTBEAT_RETRY)
            return
        self._next_heartbeat = now + self.settings.heartbeat
        self._states(snapshot, refresh=True)
        with self._lock:
            payload = heartbeat_payload(snapshot, now, self.started, self._queue.dropped)
            self._put_retained(Message(self.topics.heartbeat, encode(payload), self.settings.qos, True))
        self._drain()

    def stop(self) -> None:
        """Publish "offline", flush for up to STOP_FLUSH s, disconnect, join."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._put_retained(Message(self.topics.status, b"offline", max(1, self.settings.qos), True))
        self._drain()
        deadline = time.monotonic() + STOP_FLUSH
        with self._lock:
            while self._connected and (len(self._queue) or self._inflight):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._flushed.wait(left)
        self._client.disconnect()
        self._client.loop_stop()

    # ------------------------------------------------------ statistics

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def queued(self) -> list:
        """The messages waiting in the queue (for tests and ubus status)."""
        with self._lock:
            return list(self._queue)

    # -------------------------------------------------------- internals

    def _put_retained(self, msg: Message, front: bool = False) -> None:
        # Caller holds self._lock.
        if msg.payload:
            self._retained[msg.topic] = msg
        else:
            self._retained.pop(msg.topic, None)
        self._queue.put(msg, front=front)

    def _states(self, snapshot: dict, refresh: bool) -> None:
        if "tunnels" not in snapshot:
            return  # no snapshot yet (daemon starting): say nothing, clear nothing
        now = self.clock()
        tunnels = snapshot["tunnels"] or {}
        qos = self.settings.qos
        with self._lock:
            for name, tunnel in tunnels.items():
                state = tunnel_state(name, tunnel, now)
                key = significant(state)
                if refresh:
                    if _untimed(self._full.get(name)) == _untimed(state):
                        continue
                elif self._last.get(name) == key:
                    continue
                if name not in self._last and self.settings.ha_discovery:
                    for topic, config in discovery_payloads(self.topics, name, self.device).items():
                        self._put_retained(Message(topic, encode(config), qos, True))
                self._last[name] = key
                self._full[name] = state
                self._put_retained(Message(self.topics.state(name), encode(state), qos, True))
            for name in [n for n in self._last if n not in tunnels]:
                # The tunnel is gone from the configuration: clear what the
                # broker retains for it, so no ghost tunnel stays "up".
                del self._last[name]
                self._full.pop(name, None)
                self._put_retained(Message(self.topics.state(name), b"", qos, True))
                if self.settings.ha_discovery:
                    for topic in self.topics.discovery(name).values():
                        self._put_retained(Message(topic, b"", qos, True))

    def _drain(self) -> None:
        """Hand queued messages to paho while connected, WINDOW at a time.

        Runs on the daemon's thread and on paho's (acks, connect).  Only one
        thread drains at a time; the other leaves a note and returns, and the
        draining thread looks at the note after it lets go.  paho is never
        called with self._lock held, so paho's locks and ours cannot cross.
        """
        while True:
            self._drain_again = True
            if not self._drain_lock.acquire(blocking=False):
                return
            try:
                self._drain_again = False
                while True:
                    with self._lock:
                        self._forget_stale()
                        if not self._connected or self._resending or len(self._inflight) >= WINDOW:
                            break
                        msg = self._queue.pop()
                        if msg is None:
                            break
                    info = self._client.publish(msg.topic, msg.payload, msg.qos, msg.retain)
                    with self._lock:
                        code = _code(info.rc)
                        # With QoS > 0 paho keeps a message it could not send
                        # yet and sends it after the reconnect: still ours.
                        if code == 0 or (code == ERR_NO_CONN and msg.qos > 0):
                            if info.mid in self._early:
                                # paho's thread acknowledged it already.
                                self._early.discard(info.mid)
                                self.sent += 1
                            else:
                                self._inflight[info.mid] = (msg.qos, time.monotonic())
                        elif not msg.retain:
                            # Lost the connection in between: try again later.
                            self._queue.put(msg, front=True)
                        # A retained message is republished on reconnect.
            finally:
                self._drain_lock.release()
            if not self._drain_again:
                return

    # ------------------------------------------------ paho callbacks

    def _on_connect(self, client, userdata, flags, rc, *rest):
        code = _code(rc)
        if code != 0:
            self._complain("mqtt: broker %s refused the connection: %s" % (self.where, _reason(rc)))
            return
        with self._lock:
            self._connected = True
            self.connects += 1
            self._complaint = None
            self._drop_logged = False
            # paho resends what it still holds after this callback returns;
            # wait for those acks so that no stale retained state lands last.
            self._inflight = {m: v for m, v in self._inflight.items() if v[0] > 0}
            self._resending = bool(self._inflight)
            for topic, msg in self._retained.items():
                if topic != self.topics.status or self._stopping:
                    self._queue.put(msg)
            if not self._stopping:
                self._put_retained(Message(self.topics.status, b"online", max(1, self.settings.qos), True), front=True)
        self.log(
            "mqtt: connected to broker %s (MQTT %s%s)"
            % (self.where, "5" if self._v5 else "3.1.1", ", TLS" if self._tls else "")
        )
        self._drain()

    def _on_disconnect(self, client, userdata, *args):
        # paho 1.x: (rc) or (rc, properties); 2.x: (flags, reason, properties)
        rc = args[1] if self._v2 else args[0]
        with self._lock:
            was = self._connected
            self._connected = False
            # QoS 0 messages in flight are gone with the connection.
            self._inflight = {m: v for m, v in self._inflight.items() if v[0] > 0}
            self._flushed.notify_all()
        if was and _code(rc) != 0 and not self._stopping:
            self._complain("mqtt: lost the connection to broker %s (%s), reconnecting" % (self.where, _reason(rc)))

    def _on_connect_fail(self, client, userdata):
        self._complain("mqtt: cannot reach broker %s, retrying with backoff" % self.where)

    def _on_publish(self, client, userdata, mid, *rest):
        with self._lock:
            if self._inflight.pop(mid, None) is not None:
                self.sent += 1
            else:
                self._early.add(mid)
            if not self._inflight:
                self._resending = False
            self._flushed.notify_all()
        self._drain()

    def _forget_stale(self) -> None:
        # Caller holds self._lock.  A message paho never confirms must not
        # hold the window (or the post-reconnect wait) shut forever.
        limit = time.monotonic() - UNACKED_FORGET
        stale = [mid for mid, (_, since) in self._inflight.items() if since < limit]
        for mid in stale:
            del self._inflight[mid]
            self.unacked += 1
        if not self._inflight:
            self._resending = False

    def _complain(self, line: str) -> None:
        # One line per distinct problem, not one per retry.
        if line != self._complaint:
            self._complaint = line
            self.log(line)
