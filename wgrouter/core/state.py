"""The core's state: named constants, the records of each WAN, host, peer
and tunnel, and the Context every part of the core shares.

The parts (``wan``, ``names``, ``paths``, ``health``, ``status``) keep no
state of their own: they read and write these records through one
``Context``, which also holds what one step sees (the observation, ``now``)
and collects what it decides (actions, transitions).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import ipaddress
import random
import typing

import wgrouter
from wgrouter import model

# ------------------------------------------------------------ constants

# +-share of check_interval added at random: routers restarted together drift
# apart instead of probing in lockstep, while the cadence stays about the same.
CHECK_JITTER = 0.05
# Share taken off a recovery backoff at random (never added, so backoff_max
# stays a hard ceiling): many routers behind one dead WAN do not retry at once.
BACKOFF_JITTER = 0.2
# Share added to a DNS refresh interval at random: peers sharing one name do
# not all refresh in the same second.
DNS_JITTER = 0.1
# s after a probe's own timeout before a missing answer counts as failed: the
# shell may run probes one after another.
ANSWER_GRACE = 5.0
# s floor on the delay before a name is asked again.  dns_ttl_min may be 0
# and a TTL may be 0: the name would then be asked again in the same step,
# forever.  A fixed second (not check_interval, which may be any small
# value) bounds it to one query per name per second whatever the settings,
# and still follows a moved name within the failover budget.
DNS_REFRESH_MIN = 1.0
# s before a Resolve that got no answer counts as failed (dnspython's lifetime
# through two servers is well below this).
RESOLVE_ANSWER_TIMEOUT = 30.0
# Bytes of one keepalive (an empty data message).  The peer never answers a
# keepalive, so tx growing by only this much per keepalive interval is normal.
KEEPALIVE_BYTES = 32
# s of history used to count a WAN's losses for flap damping: a WAN that has
# not lost usability for this long gets the plain failback_holddown again.
FLAP_WINDOW = 600.0
# Losses in FLAP_WINDOW that cost nothing: one outage is not a flap.  Every
# loss beyond doubles the WAN's failback hold-down, up to holddown_max.
FLAP_FREE_LOSSES = 1
# s after a link change (carrier back, ifup, new address) during which a WAN
# probe that got no answer says nothing yet: the kernel's neighbour entry for
# the gateway may still be resolving (pings 50 ms after a 3 s outage failed
# 10 of 20 times in the lab).  Such a probe is retried instead.
LINK_SETTLE = 2.0
# s before that retry: the kernel's ARP/NDP retransmission time (neigh
# retrans_time_ms defaults to 1000), so the retry finds the entry resolved.
WAN_RETRY = 1.0
# Failed WAN probe rounds in a row that confirm a WAN's loss for flap
# damping: one lost echo may move a tunnel (with its own probe failing too),
# but it does not lengthen the WAN's hold-down.
WAN_CONFIRM_ROUNDS = 2
# Answers in a row that must agree on a changed address before a healthy
# peer is re-pinned to it (a peer that is not up follows the first one).
# They are asked a check interval apart, so a real move is followed within
# dns_ttl_min plus two check intervals (and a little jitter).
DNS_CONFIRM_ANSWERS = 3
# s a name whose answer went back to an address it had given up counts as
# flipping (round-robin served one address at a time, a flapping record):
# meanwhile healthy peers keep the address that works, and a peer that is
# not up still follows the latest answer.
DNS_FLIP_WINDOW = 600.0
# s ceiling on how long a WAN stays marked bad for one tunnel after the
# recovery ladder moved the tunnel off it (the mark doubles from backoff_max).
SUSPECT_HOLD_MAX = 3600.0
# s to let netifd rebuild a restarted tunnel before paths are applied again,
# unless its ifup hotplug event arrives earlier.
RESTART_SETTLE = 10.0

# s, ceiling of a peer's keepalive while it is on a TCP relay: well under the
# relay server's receive timeout (tcp2udp's shipped 130 s), and the relay
# client takes more than two keepalive intervals of silence for a dead one.
RELAY_KEEPALIVE = 25
# s floor between two tries of direct UDP while a peer is on a TCP relay;
# the first comes max(failback_holddown, this) after the relay started, each
# failed one doubles the wait up to backoff_max.  A try moves the peer's
# traffic off the relay for up to one probe, so it is rare.
UDP_TRY_MIN = 10.0
# s a direct UDP try of a peer without a probe target waits for a handshake:
# WireGuard's REKEY_TIMEOUT (5 s) and a second to spare.
TRIAL_WAIT = 6.0

# Recovery ladder step names, as logged in Transitions and the snapshot.
STEP_RERESOLVE = "re-resolve and re-set endpoint"
STEP_CANDIDATE = "next endpoint candidate"
STEP_WAN = "another WAN"
STEP_RESTART = "restart tunnel"
# The last rung, only after every UDP candidate on every usable WAN failed.
STEP_RELAY = "tcp relay"

TRANSPORT_UDP, TRANSPORT_RELAY = "udp", "tcp-relay"

UP, SUSPECT, RECOVERING, DOWN, STARTING = "up", "suspect", "recovering", "down", "starting"


class BadEvent(wgrouter.Error):
    """malformed event ignored"""


# ------------------------------------------------------------ state
# Plain records that every part reads and writes through the Context.


@dataclasses.dataclass
class WanTrack:
    up: bool = False  # obs says up and no hotplug ifdown is pending
    forced_down: bool = False  # hotplug ifdown seen, kernel may not show it yet
    unhealthy: bool = False  # every probed family failed, or mwan3 says disconnected
    mwan3_down: bool = False  # mwan3 reported disconnected; only its connected (or ifup) clears it
    usable: bool = False  # up and not unhealthy
    usable_since: typing.Optional[float] = None
    changes: typing.Deque[float] = dataclasses.field(default_factory=collections.deque)  # losses
    loss_counted: bool = True  # the current loss of usability is in ``changes``
    label: str = "unknown"  # "up" / "down" / "unhealthy", for Transitions
    # why it is not usable: a state ("down", "unhealthy") and its cause
    not_usable: str = "not seen yet"
    cause: str = ""
    healed: str = ""  # what last cleared the unhealthy mark
    # Per address family (4, 6): track IPs of one family say nothing about
    # the other, so each family is probed and judged on its own.
    probe_until: typing.Dict[int, float] = dataclasses.field(default_factory=dict)  # a ProbeWan is out
    probe_sent: typing.Dict[int, float] = dataclasses.field(default_factory=dict)
    answered: typing.Dict[int, float] = dataclasses.field(default_factory=dict)  # its track IPs last answered
    bad: typing.Dict[int, str] = dataclasses.field(default_factory=dict)  # family -> ": why" it failed
    fails: typing.Dict[int, int] = dataclasses.field(default_factory=dict)  # failed rounds in a row
    healed_at: typing.Dict[int, float] = dataclasses.field(default_factory=dict)
    retry: typing.Dict[int, float] = dataclasses.field(default_factory=dict)  # settle-window retry due
    probe_error: str = ""  # ": why" the last ProbeWan failed, as the shell said
    proven: typing.Dict[int, float] = dataclasses.field(default_factory=dict)  # a tunnel last received through it
    link_at: typing.Optional[float] = None  # last link change: came up, ifup, new address
    address: typing.Optional[typing.Tuple[typing.Optional[str], ...]] = None  # (IPv4, IPv6) at the last step

    @property
    def why(self) -> str:
        """Why it is not usable, for people: "down (hotplug ifdown)"."""
        return "%s (%s)" % (self.not_usable, self.cause) if self.cause else self.not_usable

    def set_why(self, state: str, cause: str) -> None:
        self.not_usable, self.cause = state, cause


@dataclasses.dataclass
class HostState:
    address: typing.Optional[str] = None  # last good address
    refresh_at: typing.Optional[float] = None  # None = resolve as soon as possible
    pending_until: typing.Optional[float] = None  # a Resolve is out
    failures: int = 0
    ttl: typing.Optional[float] = None
    answers: typing.Tuple[str, ...] = ()  # usable addresses of the last answer
    agree: int = 0  # answers in a row that chose ``address``
    history: typing.Deque[typing.Tuple[float, str]] = dataclasses.field(default_factory=collections.deque)
    flipped_at: typing.Optional[float] = None  # the answer last went back to an address it gave up


@dataclasses.dataclass
class PeerState:
    peer: model.Peer
    state: str = STARTING
    candidate: int = 0  # index into peer.endpoints
    adopted: typing.Optional[str] = None  # kernel endpoint adopted until DNS answers
    applied: typing.Optional[model.ApplyPath] = None
    applied_at: typing.Optional[float] = None
    failed: typing.Optional[model.ApplyPath] = None  # last path the shell failed to apply
    apply_failures: int = 0
    apply_retry_at: float = 0.0
    last_address: typing.Optional[str] = None
    last_table: typing.Optional[int] = None
    last_wan: typing.Optional[str] = None
    # WANs whose address WireGuard may still send this peer's packets from:
    # left while up (the server may still send there), or unknown at start
    left: typing.Set[str] = dataclasses.field(default_factory=set)
    routes: typing.Set[typing.Tuple[str, typing.Optional[int]]] = dataclasses.field(default_factory=set)
    force: typing.Optional[str] = None  # re-apply even when unchanged, and why
    stats: typing.Optional[model.PeerStats] = None
    sample: typing.Optional[typing.Tuple[int, int, float]] = None  # rx, tx, time at last check
    probe_until: typing.Optional[float] = None
    probe_wan: typing.Optional[str] = None
    probe_failed: bool = False  # failed; waiting for the WAN probe's verdict
    evidence: str = ""
    steps_done: int = 0  # recovery steps since the last success: drives backoff
    ladder: int = 0  # index of the next ladder step
    last_step: typing.Optional[str] = None
    backoff_until: float = 0.0
    no_family: typing.Optional[str] = None  # WAN already said to lack the candidates' family
    pin: typing.Optional[typing.Tuple[str, str]] = None  # (host, address) last applied from DNS
    rx_mark: typing.Optional[typing.Tuple[int, float, float]] = None  # rx, handshake, time at the last step
    # (wan, candidate) whose direct UDP path failed since the last success:
    # all of them on every usable WAN is what sends the peer to its relay
    tried: typing.Set[typing.Tuple[str, int]] = dataclasses.field(default_factory=set)
    # on the way to the relay: the time of the ladder step whose path is
    # probed as soon as it is applied, instead of waiting for a check
    verify_at: typing.Optional[float] = None
    relay: typing.Optional[int] = None  # index into peer.relays while on a TCP relay
    trial: typing.Optional[int] = None  # candidate tried directly meanwhile, while the try is out
    trial_at: typing.Optional[float] = None  # next direct UDP try
    trial_fails: int = 0
    trial_mark: typing.Optional[typing.Tuple[float, float]] = None  # handshake, time when the try began
    heard_at: typing.Optional[float] = None  # latest time the far end was heard from (rx grew, probe answered)
    quiet_probe_at: typing.Optional[float] = None  # when the last probe of a quiet peer went out
    quiet_probe: bool = False  # the probe out is a quiet peer's, not a suspect's
    quiet_failed: typing.Optional[typing.Tuple[str, str]] = None  # (wan, why): suspect until heard again


@dataclasses.dataclass
class TunnelState:
    tunnel: model.Tunnel
    wan: typing.Optional[str] = None  # active WAN, None = none chosen yet / down
    last_wan: typing.Optional[str] = None  # WAN of the last path, kept while down
    down: bool = False
    ifdown: bool = False  # hotplug ifdown of the tunnel itself
    present: bool = True
    in_kernel: bool = True  # `wg show` lists the device (kept while it cannot tell)
    wan_address: typing.Optional[str] = None  # active WAN's address when applied
    suspect: typing.Dict[str, float] = dataclasses.field(default_factory=dict)
    suspect_count: typing.Dict[str, int] = dataclasses.field(default_factory=dict)
    reason: typing.Optional[str] = None  # why the ladder asks for another WAN
    last_restart: typing.Optional[float] = None
    reapply_at: typing.Optional[float] = None
    reapply: typing.Optional[str] = None  # force a Transition + re-apply, and why


# ------------------------------------------------------------ helpers


def parse_ip(text: typing.Optional[str]):
    return _parse_ip(text) if text else None


# Every check asks about the same few addresses (each peer's candidates and
# endpoint, each WAN's): parsing one costs more than the rest of its use, and
# ipaddress objects are immutable, so the answers are kept (bounded: a name
# that resolves to ever new addresses cannot grow it).
@functools.lru_cache(maxsize=256)
def _parse_ip(text: str):
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def endpoint_ip(endpoint: typing.Optional[str]) -> typing.Optional[str]:
    """The IP of a ``wg show`` endpoint "1.2.3.4:51820" / "[::1]:51820"."""
    try:
        split = model.split_endpoint(endpoint)
    except ValueError:
        return None
    ip = parse_ip(split[0]) if split else None
    return str(ip) if ip is not None else None


def bad_address(address: str, allowed_ips: typing.Iterable[str] = ()) -> typing.Optional[str]:
    """Why ``address`` must not be used as an endpoint, or None when it is fine."""
    ip = parse_ip(address)
    if ip is None:
        return "not an IP address"
    for test, why in (
        (ip.is_loopback, "loopback"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_multicast, "multicast"),
        (ip.is_link_local, "link-local"),
    ):
        if test:
            return why
    for prefix in allowed_ips:
        try:
            net = ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            continue
        # A full-tunnel peer's 0.0.0.0/0 covers every address; the host route
        # to the endpoint is what keeps it outside, so only narrower prefixes
        # (which would route the endpoint into its own tunnel) disqualify.
        if net.prefixlen and net.version == ip.version and ip in net:
            return "inside the peer's allowed_ips %s" % prefix
    return None


def hostkey(host: str) -> str:
    """A host name as the engine keys it: lower case, no trailing dot."""
    return str(host).lower().rstrip(".")


def detail(error: typing.Optional[str]) -> str:
    """": error" of a failed probe's event, or "" when the shell gave none."""
    error = " ".join(str(error or "").split())
    return ": " + error if error else ""


def fmt(seconds: float) -> str:
    return "%ds" % round(seconds)


# ------------------------------------------------------------ context


class Context:
    """What every part needs: the configuration, the state records, the
    step's observation and time, and where actions and transitions go."""

    def __init__(self, config: model.Config, now: float, rng: typing.Optional[random.Random] = None):
        self.rng = rng
        self.config = config
        self.wan_tracks: typing.Dict[str, WanTrack] = {}
        self.tunnels: typing.Dict[str, TunnelState] = {}
        self.peers: typing.Dict[typing.Tuple[str, str], PeerState] = {}
        self._peers_of: typing.Optional[dict] = None  # the dict _by_tunnel was built from
        self._by_tunnel: typing.Dict[str, typing.Tuple[PeerState, ...]] = {}
        self.hosts: typing.Dict[str, HostState] = {}
        self.ring: typing.Deque[typing.Tuple[float, model.Transition]] = collections.deque(
            maxlen=max(1, config.settings.events)
        )
        self.pinned: typing.Optional[str] = None  # WAN of a manual switch
        self.obs = model.Observation(wans={}, peers={})
        self.out: typing.List[model.Action] = []
        self.now = now

    def begin(self, obs: model.Observation, now: float) -> None:
        """Start a step: its observation and time, no actions yet."""
        self.obs, self.now, self.out = obs, now, []

    def transition(self, tunnel, peer, was, now, because, kind="state") -> None:
        tr = model.Transition(tunnel=tunnel, peer=peer, was=str(was), now=str(now), because=because, kind=kind)
        self.out.append(tr)
        self.ring.append((self.now, tr))

    def scale(self, value: float, low: float, high: float) -> float:
        if self.rng is None:
            return value
        return value * (1.0 + self.rng.uniform(low, high))

    def backoff(self, n: int) -> float:
        """Delay after the n-th (0-based) consecutive failure."""
        s = self.config.settings
        delay = min(s.backoff_base * (2.0 ** min(n, 60)), s.backoff_max)
        return self.scale(delay, -BACKOFF_JITTER, 0.0)

    def check_interval(self) -> float:
        return self.scale(self.config.settings.check_interval, -CHECK_JITTER, CHECK_JITTER)

    def order(self, wan: typing.Optional[str]) -> int:
        for i, w in enumerate(self.config.wans):
            if w.name == wan:
                return i
        return len(self.config.wans)

    def device(self, wan: model.Wan) -> str:
        st = self.obs.wans.get(wan.name)
        return (st.device if st is not None and st.device else None) or wan.device

    def tunnel_peers(self, ts: TunnelState) -> typing.Tuple[PeerState, ...]:
        # asked many times a step; the answer changes only when reconfigure
        # gives ``peers`` a new dict
        if self._peers_of is not self.peers:
            self._peers_of, self._by_tunnel = self.peers, {}
        found = self._by_tunnel.get(ts.tunnel.name)
        if found is None:
            found = self._by_tunnel[ts.tunnel.name] = tuple(
                self.peers[p.key] for p in ts.tunnel.peers if p.key in self.peers)
        return found

    def managed(self) -> bool:
        return bool(self.peers)


# What ``from wgrouter import core`` offers besides Engine: the named constants,
# the error and the address check (the shell, the CLI and the tests use them).
__all__ = [name for name in list(globals()) if name.isupper()] + ["BadEvent", "bad_address"]
