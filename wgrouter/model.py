"""The shared vocabulary of wgrouter: configuration, observations and actions.

Everything here is plain frozen data. The decision core (``wgrouter.core``)
takes ``Config``, ``Observation`` and ``now`` and returns ``Action`` objects;
the shell (``wgrouter.shell``) turns observations of the kernel into these
types and executes the actions.  Nothing in this module does I/O.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import typing

# ---------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One way to reach a peer: a host name or IP literal, and a UDP port
    (a TCP port for a relay)."""

    host: str
    port: int = 51820

    def __str__(self):
        if ":" in self.host:
            return "[%s]:%d" % (self.host, self.port)
        return "%s:%d" % (self.host, self.port)


@dataclasses.dataclass(frozen=True)
class Peer:
    """A managed WireGuard peer.

    ``endpoints[0]`` is netifd's own endpoint_host/endpoint_port; the rest are
    the extra candidates from /etc/config/wgrouter, in order.
    """

    tunnel: str  # netifd interface name of the tunnel (also its device)
    section: str  # UCI section of the peer in /etc/config/network
    public_key: str
    endpoints: typing.Tuple[Endpoint, ...]
    allowed_ips: typing.Tuple[str, ...] = ()
    keepalive: int = 0  # netifd persistent_keepalive, 0 = off
    probe: typing.Optional[str] = None  # in-tunnel probe target (IP)
    # TCP relays (udp-over-tcp framing, `list relay` of its `config peer`),
    # in order; a host name stays text until it is resolved
    relays: typing.Tuple[Endpoint, ...] = ()

    @property
    def key(self) -> typing.Tuple[str, str]:
        return (self.tunnel, self.public_key)

    @property
    def label(self) -> str:
        """Short name for logs: the UCI section, else the key's start."""
        return self.section or self.public_key[:8]


@dataclasses.dataclass(frozen=True)
class Tunnel:
    name: str  # netifd interface name == device name
    peers: typing.Tuple[Peer, ...]
    addresses: typing.Tuple[str, ...] = ()  # tunnel addresses, CIDR
    listen_port: typing.Optional[int] = None
    probe_source: typing.Optional[str] = None  # tunnel address used for probes

    def source_for(self, target: str) -> typing.Optional[str]:
        """The tunnel address to ping ``target`` from: one of its family
        (probe_source first), None when the tunnel has none (the shell then
        binds the ping to the tunnel device)."""
        for address in (self.probe_source,) + tuple(a.split("/")[0] for a in self.addresses):
            if address and family(address) == family(target):
                return address
        return None


@dataclasses.dataclass(frozen=True)
class Wan:
    """A WAN uplink, in order of preference (first = primary)."""

    name: str  # netifd interface name, e.g. "wan"
    device: str  # kernel device, e.g. "eth1", "pppoe-wan", "wwan0"
    keepalive: typing.Optional[int] = None  # overrides the peer's keepalive
    track_ips: typing.Tuple[str, ...] = ()  # WAN health probe targets
    dns_servers: typing.Tuple[str, ...] = ()  # resolvers asked through this WAN
    table: typing.Optional[int] = None  # mwan3 routing table of this WAN


@dataclasses.dataclass(frozen=True)
class Settings:
    # Named defaults: the init script's validation spec must agree with these
    # (tests/test_openwrt_files.py checks it).
    enabled: bool = True
    # s between monitor checks.  With traffic in the tunnel a silent failure
    # is seen at the second check after it (the first may still count
    # replies from before it), and left once both probes have failed: at
    # most 2 x 1.5 x (1 + CHECK_JITTER) + probe_timeout + the re-pin, under
    # 5 s.  In-process WireGuard reads make a check cheap enough for this
    # rate (idle CPU and wake-ups: README, "Measured figures").
    check_interval: float = 1.5
    handshake_timeout: float = 150.0  # s: older handshake + no rx = suspect
    # s for one in-tunnel or WAN probe: ping's -W counts whole seconds, so 1
    # is the shortest; a reply slower than that is not a healthy path
    probe_timeout: float = 1.0
    failback_holddown: float = 60.0  # s the preferred WAN must be healthy
    # s, cap on the flap-damped hold-down (a failback_holddown above it is
    # used as it is): a few minutes, so that a primary that flapped is not
    # left unused for a quarter of an hour while the backup may be metered
    holddown_max: float = 300.0
    backoff_base: float = 2.0  # s, first recovery retry delay
    backoff_max: float = 300.0  # s, ceiling of recovery backoff
    dns_ttl_min: float = 30.0  # s, floor on re-resolution interval
    dns_ttl_max: float = 3600.0  # s, ceiling on re-resolution interval
    mwan3: bool = False  # mwan3 owns WAN selection
    conntrack_flush: bool = True
    events: int = 64  # size of the in-memory ring of recent events


@dataclasses.dataclass(frozen=True)
class MqttSettings:
    """The optional `config mqtt 'mqtt'` section of /etc/config/wgrouter."""

    enabled: bool = False
    host: str = "localhost"
    port: int = 1883
    protocol: str = "3.1.1"  # or "5"
    username: typing.Optional[str] = None
    password: typing.Optional[str] = None
    tls: bool = False
    ca_file: typing.Optional[str] = None
    cert_file: typing.Optional[str] = None
    key_file: typing.Optional[str] = None
    prefix: str = "wgrouter"
    identity: typing.Optional[str] = None  # default: the router's hostname
    heartbeat: float = 300.0  # s between heartbeats
    qos: int = 1
    ha_discovery: bool = False
    ha_prefix: str = "homeassistant"
    queue_max: int = 100  # bounded outgoing queue


@dataclasses.dataclass(frozen=True)
class Config:
    settings: Settings
    wans: typing.Tuple[Wan, ...]
    tunnels: typing.Tuple[Tunnel, ...]
    mqtt: MqttSettings = MqttSettings()

    def peers(self) -> typing.Iterator[Peer]:
        for tunnel in self.tunnels:
            yield from tunnel.peers

    def wan(self, name: str) -> Wan:
        for wan in self.wans:
            if wan.name == name:
                return wan
        raise KeyError(name)


# ---------------------------------------------------------- observations


@dataclasses.dataclass(frozen=True)
class WanState:
    """What the kernel says about a WAN right now."""

    name: str
    device: str
    up: bool  # link up, has an address and a default route (IPv4 or IPv6)
    gateway: typing.Optional[str] = None  # next hop of its IPv4 default route
    address: typing.Optional[str] = None  # its IPv4 address
    # IPv6: the WAN carries IPv6 endpoints only with a global address and a
    # default route of its own (the gateway is often link-local: fe80::1).
    up6: bool = False
    gateway6: typing.Optional[str] = None
    address6: typing.Optional[str] = None
    up4: typing.Optional[bool] = None  # IPv4 complete; None = same as ``up``

    def carries(self, family: int) -> bool:
        """Whether a path of this address family (4 or 6) can leave here."""
        if family == 6:
            return self.up6
        return self.up if self.up4 is None else self.up4


@dataclasses.dataclass(frozen=True)
class PeerStats:
    """One row of `wg show IF dump` for a peer."""

    endpoint: typing.Optional[str]  # "ip:port" as wg reports it, None = (none)
    latest_handshake: float  # on the engine's clock (the kernel says unix time), 0 = never
    rx: int
    tx: int
    keepalive: int  # 0 = off


# Events: something that happened outside the core, one frozen dataclass per
# kind, dispatched by type.  ``kind`` and ``data`` are the written-down form
# (logs, test tables, ``Event(kind, data)``).


class _Message:
    kind: typing.ClassVar[str] = ""

    @property
    def data(self) -> typing.Dict[str, typing.Any]:
        """The fields by name (None ones left out): the written-down form."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}


@dataclasses.dataclass(frozen=True)
class Hotplug(_Message):
    # netifd's hotplug event of an interface, as the hotplug script spooled it.
    kind: typing.ClassVar[str] = "hotplug"
    action: str  # "ifup", "ifdown", "ifupdate", "connected", "disconnected"
    interface: str
    device: typing.Optional[str] = None


@dataclasses.dataclass(frozen=True)
class KernelChanged(_Message):
    # A kernel link/route/address notification: observe again.
    kind: typing.ClassVar[str] = "link"


@dataclasses.dataclass(frozen=True)
class ProbeResult(_Message):
    # The answer to a Probe.
    kind: typing.ClassVar[str] = "probe"
    tunnel: str
    peer: str  # public key
    ok: bool
    error: str = ""  # why it failed, as the shell said


@dataclasses.dataclass(frozen=True)
class WanProbeResult(_Message):
    # The answer to a ProbeWan.
    kind: typing.ClassVar[str] = "wan_probe"
    wan: str
    ok: bool
    error: str = ""
    family: typing.Optional[int] = None  # 4 or 6: of its targets; None = not said


@dataclasses.dataclass(frozen=True)
class Resolved(_Message):
    # The answer to a Resolve.
    kind: typing.ClassVar[str] = "resolved"
    host: str
    wan: str
    addresses: typing.Sequence[str]
    ttl: float = 0


@dataclasses.dataclass(frozen=True)
class ResolveFailed(_Message):
    kind: typing.ClassVar[str] = "resolve_failed"
    host: str
    wan: str
    error: str = ""


@dataclasses.dataclass(frozen=True)
class Applied(_Message):
    # What became of an action the shell executed.
    kind: typing.ClassVar[str] = "applied"
    action: typing.Any  # the Action
    ok: bool
    error: str = ""
    steps: typing.Sequence[str] = ()  # the steps done, in order
    note: typing.Optional[str] = None  # something to log once, e.g. conntrack missing


@dataclasses.dataclass(frozen=True)
class Switch(_Message):
    # Manual switch request.
    kind: typing.ClassVar[str] = "switch"
    wan: typing.Optional[str] = None  # None = automatic


@dataclasses.dataclass(frozen=True)
class Reapply(_Message):
    # Re-apply every path.
    kind: typing.ClassVar[str] = "reapply"


@dataclasses.dataclass(frozen=True)
class Malformed(_Message):
    # An event written down wrongly: the core logs it and ignores it.
    kind: typing.ClassVar[str] = "malformed"
    name: str  # the kind it was written as
    error: str


AnyEvent = typing.Union[Hotplug, KernelChanged, ProbeResult, WanProbeResult, Resolved, ResolveFailed,
                        Applied, Switch, Reapply, Malformed]
EVENTS = {cls.kind: cls for cls in (Hotplug, KernelChanged, ProbeResult, WanProbeResult, Resolved,
                                    ResolveFailed, Applied, Switch, Reapply)}


def Event(kind: str, data: typing.Optional[typing.Mapping[str, typing.Any]] = None) -> AnyEvent:  # noqa: N802
    """The typed event written down as a kind and its fields (see EVENTS);
    unknown fields are left out, and a wrong one gives Malformed."""
    cls = EVENTS.get(kind)
    if cls is None:
        return Malformed(str(kind), "unknown kind %r" % (kind,))
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in dict(data or {}).items() if k in fields}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        return Malformed(kind, str(exc).split(") ", 1)[-1])


@dataclasses.dataclass(frozen=True)
class Observation:
    wans: typing.Mapping[str, WanState]
    peers: typing.Mapping[typing.Tuple[str, str], PeerStats]  # (tunnel, key)
    # managed tunnel devices `wg show` lists; None = unknown (wg failed)
    tunnels: typing.Optional[typing.FrozenSet[str]] = None
    events: typing.Tuple[AnyEvent, ...] = ()


# --------------------------------------------------------------- actions


@dataclasses.dataclass(frozen=True)
class ApplyPath:
    """Put a peer on a WAN: host route, endpoint, keepalive, conntrack.

    The shell, in this order: `ip route replace ENDPOINT/32 via GATEWAY dev
    DEVICE` (in ``table`` when set), `wg set TUNNEL peer KEY endpoint
    ENDPOINT:PORT persistent-keepalive N` (re-setting the endpoint clears the
    cached source address), deletes conntrack entries of the UDP flow to
    ENDPOINT:PORT that are not on DEVICE, deletes the host route it had
    recorded for the peer's previous address (applied.json), then sends one
    packet through the tunnel so that a handshake starts.
    """

    tunnel: str
    peer: str  # public key
    wan: str
    device: str
    gateway: typing.Optional[str]
    address: str  # endpoint IP
    port: int
    keepalive: int
    table: typing.Optional[int] = None
    # "udp", or "tcp-relay": ``address``:``port`` is then the peer's TCP relay
    # (udp-over-tcp framing), the host route goes to it, the shell runs the
    # relay's connection through DEVICE and the endpoint is its local socket
    # on 127.0.0.1
    transport: str = "udp"


@dataclasses.dataclass(frozen=True)
class StopRelay:
    """Close the peer's TCP relay (its connection and its local socket)."""

    tunnel: str
    peer: str


@dataclasses.dataclass(frozen=True)
class RemovePath:
    """Remove the host route wgrouter added for a peer (on stop)."""

    tunnel: str
    peer: str
    address: str
    table: typing.Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Probe:
    """Ping ``target`` through the tunnel; answer with an Event("probe")."""

    tunnel: str
    peer: str
    target: str
    source: typing.Optional[str]
    timeout: float


@dataclasses.dataclass(frozen=True)
class ProbeWan:
    """Ping the WAN's track IPs bound to its device; Event("wan_probe")."""

    wan: str
    device: str
    targets: typing.Tuple[str, ...]
    timeout: float


@dataclasses.dataclass(frozen=True)
class Resolve:
    """Resolve ``host`` (A records; AAAA when it has none) through ``wan``;
    Event("resolved"/"resolve_failed")."""

    host: str
    wan: str
    device: str
    servers: typing.Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class RestartTunnel:
    """Last resort: restart the tunnel interface through netifd."""

    tunnel: str


@dataclasses.dataclass(frozen=True)
class Transition:
    """A state change to log on one line and publish (ubus event, MQTT).

    Rendered as "TUNNEL peer PEER: was WAS, now NOW, because BECAUSE".
    """

    tunnel: str
    peer: typing.Optional[str]  # peer label, None for tunnel/WAN-wide
    was: str
    now: str
    because: str
    kind: str = "state"  # "failover", "failback", "recovery", "resolve", "wan", "transport", "state"

    def __str__(self):
        who = self.tunnel if self.peer is None else "%s peer %s" % (self.tunnel, self.peer)
        return "%s: was %s, now %s, because %s" % (who, self.was, self.now, self.because)


Action = typing.Union[ApplyPath, RemovePath, StopRelay, Probe, ProbeWan, Resolve, RestartTunnel, Transition]


@dataclasses.dataclass(frozen=True)
class Decision:
    actions: typing.Tuple[Action, ...]
    deadline: typing.Optional[float]  # when to call step() again, None = only on events


# ---------------------------------------------------------------- status
# What the core and the daemon say about themselves: read by the CLI, ubus
# (and so LuCI) and MQTT, whose shape tests/ubus_contract.json writes down.
# Times are unix time (the core's clock shifted by the wall clock), durations
# seconds.  ``status_json`` is the one place it becomes JSON-able data.


@dataclasses.dataclass(frozen=True)
class WanStatus:
    device: str
    up: bool
    healthy: bool
    families: typing.List[str]  # "IPv4", "IPv6": what it can carry now
    usable: bool
    preferred: bool
    order: int
    pinned: bool
    usable_for: typing.Optional[float]
    holddown: float
    flaps: int
    why: typing.Optional[str]  # None while usable
    active: bool
    active_for: typing.List[str]  # tunnels on it


@dataclasses.dataclass(frozen=True)
class PeerStatus:
    label: str
    state: str
    wan: typing.Optional[str]
    endpoint: typing.Optional[str]  # ours, else what the kernel has
    endpoint_wanted: typing.Optional[str]
    endpoint_source: typing.Optional[str]
    candidate: int
    keepalive: int
    handshake_age: typing.Optional[float]
    rx: int
    tx: int
    last_step: typing.Optional[str]
    recovery_steps: int
    backoff_until: typing.Optional[float]
    evidence: typing.Optional[str]
    transport: str = "udp"  # or "tcp-relay"
    relay: typing.Optional[str] = None  # "host:port" as configured, while on a relay


@dataclasses.dataclass(frozen=True)
class TunnelStatus:
    wan: typing.Optional[str]
    state: str
    suspect_wans: typing.Dict[str, float]  # WAN -> until when
    last_restart: typing.Optional[float]
    peers: typing.Dict[str, PeerStatus]  # by public key


@dataclasses.dataclass(frozen=True)
class EventStatus:
    """A Transition in the ring of recent events."""

    time: float
    kind: str
    tunnel: str
    peer: typing.Optional[str]
    was: str
    now: str
    because: str
    text: str


@dataclasses.dataclass(frozen=True)
class Status:
    """The core's snapshot."""

    time: float
    pinned: typing.Optional[str]
    next_check: typing.Optional[float]
    check_interval: float
    wans: typing.Dict[str, WanStatus]
    tunnels: typing.Dict[str, TunnelStatus]
    events: typing.List[EventStatus]


@dataclasses.dataclass(frozen=True)
class DaemonStatus:
    """What the daemon adds to the core's snapshot."""

    version: str
    pid: int
    uptime: float
    wakeups: int
    errors: typing.Optional[typing.List[str]] = None  # observation failures; None = none
    # the running TCP relays as their thread sees them (connection state,
    # bytes, last error): {tunnel: {public key: {...}}}; None = none running
    relays: typing.Optional[typing.Dict[str, typing.Dict[str, typing.Dict[str, typing.Any]]]] = None


def status_json(status: typing.Optional[Status], daemon: typing.Optional[DaemonStatus] = None
                ) -> typing.Dict[str, typing.Any]:
    """The status as JSON-able data, in the order the contract shows it:
    the core's snapshot (nothing before the daemon's first step), then the
    daemon's fields (errors only when there are some)."""
    out: typing.Dict[str, typing.Any] = {}
    if status is not None:
        out.update(dataclasses.asdict(status))
    if daemon is not None:
        out.update((k, v) for k, v in dataclasses.asdict(daemon).items() if v is not None)
    return out


# ------------------------------------------------------------------ text


def family(address: str) -> int:
    """4 or 6: the IP version of an address literal."""
    return 6 if ":" in address else 4


def is_ip(text: str, version: typing.Optional[int] = None) -> bool:
    """True for an IPv4 or IPv6 address literal (a host name is not one);
    with ``version`` (4 or 6) only for one of that version."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version


def split_endpoint(text: typing.Optional[str]) -> typing.Optional[typing.Tuple[str, int]]:
    """'1.2.3.4:51820' or '[2001:db8::1]:51820' -> ('1.2.3.4', 51820).

    The form `wg` reports and takes: the port is always there.  None for no
    endpoint (None, "" or wg's "(none)"); ValueError when the port is not a
    number.  User-written endpoints, where the port is optional, are parsed
    by ``config.parse_endpoint``; ``str(Endpoint(host, port))`` is the inverse.
    """
    if not text or text == "(none)":
        return None
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def age(seconds: typing.Optional[float]) -> str:
    """A duration for people: "42s", "5m07s", "3h20m"; None is "never"."""
    if seconds is None:
        return "never"
    seconds = int(seconds)
    if seconds < 120:
        return "%ds" % seconds
    if seconds < 7200:
        return "%dm%02ds" % divmod(seconds, 60)
    return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)
