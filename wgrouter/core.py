"""The decision core: which WAN each tunnel uses, when to probe, how to recover.

``Engine`` does no I/O.  The shell hands it an ``Observation`` (kernel WAN
states, ``wg show dump`` rows, and the events since the last call) and the
current time; it answers with a ``Decision``: model actions to execute and
the absolute time to call ``step()`` again.  Randomness (jitter) comes only
from the ``random.Random`` given to the constructor; without one there is no
jitter and the engine is fully deterministic.

``now`` is a monotonic clock in seconds (the daemon uses ``time.monotonic()``),
so that a step of the wall clock (NTP at boot on a router without RTC,
``date -s``) neither stalls the monitor nor cuts a failback hold-down short.
``PeerStats.latest_handshake`` must be on the same clock: the shell converts
the kernel's unix time when it builds the observation.  The engine's clock
means nothing to people: ``snapshot(now, wall)`` shows its absolute times as
unix time, and the daemon stamps events with the wall clock.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import math
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

# Recovery ladder step names, as logged in Transitions and the snapshot.
STEP_RERESOLVE = "re-resolve and re-set endpoint"
STEP_CANDIDATE = "next endpoint candidate"
STEP_WAN = "another WAN"
STEP_RESTART = "restart tunnel"

UP, SUSPECT, RECOVERING, DOWN, STARTING = "up", "suspect", "recovering", "down", "starting"


class BadEvent(wgrouter.Error):
    """malformed event ignored"""


# ------------------------------------------------------------ internal state


@dataclasses.dataclass
class _WanTrack:
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
class _HostState:
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
class _PeerState:
    peer: model.Peer
    state: str = STARTING
    candidate: int = 0  # index into peer.endpoints
    adopted: typing.Optional[str] = None  # kernel endpoint adopted until DNS answers
    applied: typing.Optional[model.ApplyPath] = None  # old_address None
    applied_at: typing.Optional[float] = None
    failed: typing.Optional[model.ApplyPath] = None  # last path the shell failed to apply
    apply_failures: int = 0
    apply_retry_at: float = 0.0
    last_address: typing.Optional[str] = None
    last_table: typing.Optional[int] = None
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


@dataclasses.dataclass
class _TunnelState:
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


def _ip(text: typing.Optional[str]):
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _endpoint_ip(endpoint: typing.Optional[str]) -> typing.Optional[str]:
    """The IP of a ``wg show`` endpoint "1.2.3.4:51820" / "[::1]:51820"."""
    try:
        split = model.split_endpoint(endpoint)
    except ValueError:
        return None
    ip = _ip(split[0]) if split else None
    return str(ip) if ip is not None else None


def bad_address(address: str, allowed_ips: typing.Iterable[str] = ()) -> typing.Optional[str]:
    """Why ``address`` must not be used as an endpoint, or None when it is fine."""
    ip = _ip(address)
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


def _hostkey(host: str) -> str:
    """A host name as the engine keys it: lower case, no trailing dot."""
    return str(host).lower().rstrip(".")


def _why(error: typing.Optional[str]) -> str:
    """": error" of a failed probe's event, or "" when the shell gave none."""
    error = " ".join(str(error or "").split())
    return ": " + error if error else ""


def _fmt(seconds: float) -> str:
    return "%ds" % round(seconds)


# ------------------------------------------------------------ the engine


class Engine:
    """Keeps every managed peer on a working path; see the module docstring."""

    def __init__(self, config: model.Config, now: float, rng: typing.Optional[random.Random] = None):
        self._rng = rng
        self._config = config
        self._wans: typing.Dict[str, _WanTrack] = {}
        self._tunnels: typing.Dict[str, _TunnelState] = {}
        self._peers: typing.Dict[typing.Tuple[str, str], _PeerState] = {}
        self._hosts: typing.Dict[str, _HostState] = {}
        self._ring: typing.Deque[typing.Tuple[float, model.Transition]] = collections.deque(
            maxlen=max(1, config.settings.events)
        )
        self._pinned: typing.Optional[str] = None
        self._removals: typing.List[model.RemovePath] = []
        self._obs = model.Observation(wans={}, peers={})
        self._out: typing.List[model.Action] = []
        self._now = now
        self._next_check = now + self._check_interval()
        self._handlers = {
            model.Hotplug: self._on_hotplug, model.KernelChanged: self._on_link,
            model.ProbeResult: self._on_probe, model.WanProbeResult: self._on_wan_probe,
            model.Resolved: self._on_resolved, model.ResolveFailed: self._on_resolve_failed,
            model.Applied: self._on_applied, model.Switch: self._on_switch,
            model.Reapply: self._on_reapply, model.Malformed: self._on_malformed,
        }
        self._load(config)

    # ------------------------------------------------ public API

    def step(self, obs: model.Observation, now: float) -> model.Decision:
        self._obs, self._now, self._out = obs, now, []
        out = self._out
        out.extend(self._removals)
        self._removals = []
        self._evidence()
        for event in obs.events:
            try:
                self._event(event)
            except (BadEvent, KeyError, TypeError, ValueError) as exc:
                self._transition("wgrouter", None, "event %s" % getattr(event, "name", getattr(event, "kind", "?")), "ignored",
                                 "%s: %s" % (BadEvent.__doc__, exc), "state")
        self._update_wans()
        self._update_peers()
        self._timeouts()
        self._retries()
        if self._managed() and now >= self._next_check:
            self._next_check = now + self._check_interval()
            self._check()
        for ts in self._tunnels.values():
            self._evaluate_tunnel(ts)
        self._resolves()
        return model.Decision(actions=tuple(out), deadline=self._deadline())

    def reconfigure(self, config: model.Config, now: float) -> None:
        """Take a new configuration; peers that still exist keep their state."""
        old_interval = self._config.settings.check_interval
        self._config = config
        self._ring = collections.deque(self._ring, maxlen=max(1, config.settings.events))
        self._load(config)
        if config.settings.check_interval != old_interval:
            self._next_check = min(self._next_check, now + self._check_interval())

    def stop(self) -> typing.Tuple[model.Action, ...]:
        """RemovePath for every host route this engine has added."""
        out: typing.List[model.Action] = list(self._removals)
        self._removals = []
        for ps in self._peers.values():
            out.extend(self._remove_paths(ps))
        return tuple(out)

    def snapshot(self, now: float, wall: typing.Optional[float] = None) -> dict:
        """``status`` as JSON-able data, for ubus, MQTT and the CLI."""
        return model.status_json(self.status(now, wall))

    def status(self, now: float, wall: typing.Optional[float] = None) -> model.Status:
        """The typed status.

        ``wall`` is the unix time at ``now``: absolute times (events, next
        check, backoff, last restart) are shown on it.  Without it they are
        shown on the engine's own clock."""
        settings = self._config.settings
        shift = 0.0 if wall is None else wall - now
        wans = {}
        for i, wan in enumerate(self._config.wans):
            wt = self._wans[wan.name]
            wans[wan.name] = model.WanStatus(
                device=self._device(wan),
                up=wt.up,
                healthy=not wt.unhealthy,
                families=self._families(wan.name),
                usable=wt.usable,
                preferred=i == 0,
                order=i,
                pinned=self._pinned == wan.name,
                usable_for=None if wt.usable_since is None else now - wt.usable_since,
                holddown=self._holddown(wan.name, now),
                flaps=len(wt.changes),
                why=None if wt.usable else wt.why,
                active=any(ts.wan == wan.name for ts in self._tunnels.values()),
                active_for=sorted(ts.tunnel.name for ts in self._tunnels.values() if ts.wan == wan.name),
            )
        tunnels = {}
        for name, ts in self._tunnels.items():
            peers = {}
            for peer in ts.tunnel.peers:
                ps = self._peers.get(peer.key)
                if ps is None:
                    continue
                address, source, endpoint = self._address(ps)
                st = ps.stats
                age = None
                if st is not None and st.latest_handshake:
                    age = max(0.0, now - st.latest_handshake)
                peers[peer.public_key] = model.PeerStatus(
                    label=peer.label,
                    state=ps.state,
                    wan=ts.wan,
                    endpoint=str(model.Endpoint(ps.applied.address, ps.applied.port)) if ps.applied
                    else (st.endpoint if st else None),  # ours, else what the kernel has
                    endpoint_wanted=None if address is None else str(model.Endpoint(address, endpoint.port)),
                    endpoint_source=source,
                    candidate=ps.candidate,
                    keepalive=int(ps.applied.keepalive if ps.applied else (st.keepalive if st else 0)),
                    handshake_age=age,
                    rx=int(st.rx) if st else 0,
                    tx=int(st.tx) if st else 0,
                    last_step=ps.last_step,
                    recovery_steps=ps.steps_done,
                    backoff_until=ps.backoff_until + shift if ps.backoff_until > now else None,
                    evidence=ps.evidence or None,
                )
            tunnels[name] = model.TunnelStatus(
                wan=ts.wan,
                state=DOWN if ts.down or not ts.present else self._tunnel_state(ts),
                suspect_wans={w: until + shift for w, until in ts.suspect.items() if until > now},
                last_restart=None if ts.last_restart is None else ts.last_restart + shift,
                peers=peers,
            )
        return model.Status(
            time=now + shift,
            pinned=self._pinned,
            next_check=self._next_check + shift if self._managed() else None,
            check_interval=settings.check_interval,
            wans=wans,
            tunnels=tunnels,
            events=[
                model.EventStatus(time=t + shift, kind=tr.kind, tunnel=tr.tunnel, peer=tr.peer,
                                  was=tr.was, now=tr.now, because=tr.because, text=str(tr))
                for t, tr in self._ring
            ],
        )

    # ------------------------------------------------ configuration

    def _load(self, config: model.Config) -> None:
        self._wans = {wan.name: self._wans.get(wan.name) or _WanTrack() for wan in config.wans}
        if self._pinned not in self._wans:
            self._pinned = None
        tunnels, peers = {}, {}
        for tunnel in config.tunnels:
            ts = self._tunnels.get(tunnel.name) or _TunnelState(tunnel=tunnel)
            ts.tunnel = tunnel
            if ts.wan is not None and ts.wan not in self._wans:
                ts.wan = None
            tunnels[tunnel.name] = ts
            for peer in tunnel.peers:
                if not peer.endpoints:
                    continue  # nothing to route: a roaming client of this router
                ps = self._peers.get(peer.key) or _PeerState(peer=peer)
                ps.peer = peer
                if ps.candidate >= len(peer.endpoints):
                    ps.candidate = 0
                peers[peer.key] = ps
        for key, ps in self._peers.items():
            if key not in peers:
                self._removals.extend(self._remove_paths(ps))
        self._tunnels, self._peers = tunnels, peers

    def _managed(self) -> bool:
        return bool(self._peers)

    def _tunnel_peers(self, ts: _TunnelState) -> typing.List[_PeerState]:
        return [self._peers[p.key] for p in ts.tunnel.peers if p.key in self._peers]

    # ------------------------------------------------ small utilities

    def _scale(self, value: float, low: float, high: float) -> float:
        if self._rng is None:
            return value
        return value * (1.0 + self._rng.uniform(low, high))

    def _check_interval(self) -> float:
        return self._scale(self._config.settings.check_interval, -CHECK_JITTER, CHECK_JITTER)

    def backoff(self, n: int) -> float:
        """Delay after the n-th (0-based) consecutive failure."""
        s = self._config.settings
        delay = min(s.backoff_base * (2.0 ** min(n, 60)), s.backoff_max)
        return self._scale(delay, -BACKOFF_JITTER, 0.0)

    def _order(self, wan: typing.Optional[str]) -> int:
        for i, w in enumerate(self._config.wans):
            if w.name == wan:
                return i
        return len(self._config.wans)

    def _device(self, wan: model.Wan) -> str:
        st = self._obs.wans.get(wan.name)
        return (st.device if st is not None and st.device else None) or wan.device

    def _transition(self, tunnel, peer, was, now, because, kind="state") -> None:
        tr = model.Transition(tunnel=tunnel, peer=peer, was=str(was), now=str(now), because=because, kind=kind)
        self._out.append(tr)
        self._ring.append((self._now, tr))

    def _holddown(self, wan: str, now: float) -> float:
        """failback_holddown, doubled for each loss of the WAN in the last
        FLAP_WINDOW beyond FLAP_FREE_LOSSES, never above holddown_max (nor
        below failback_holddown itself)."""
        s = self._config.settings
        wt = self._wans[wan]
        while wt.changes and wt.changes[0] <= now - FLAP_WINDOW:
            wt.changes.popleft()
        excess = max(0, len(wt.changes) - FLAP_FREE_LOSSES)
        damped = s.failback_holddown * 2 ** min(excess, 30)
        return max(s.failback_holddown, min(damped, s.holddown_max))

    # ------------------------------------------------ events

    def _event(self, event: model.AnyEvent) -> None:
        handler = self._handlers.get(type(event))
        if handler is None:
            raise BadEvent("not an event: %r" % (event,))
        handler(event)

    def _on_malformed(self, ev: model.Malformed) -> None:
        raise BadEvent(ev.error)

    def _on_link(self, ev: model.KernelChanged) -> None:
        pass  # re-evaluated from the observation on every step

    def _on_reapply(self, ev: model.Reapply) -> None:
        for ts in self._tunnels.values():
            ts.reapply = "reapply requested"
            for ps in self._tunnel_peers(ts):
                ps.force = "reapply requested"

    def _on_switch(self, ev: model.Switch) -> None:
        wan = ev.wan
        if wan is not None and wan not in self._wans:
            raise BadEvent("switch to unknown wan %r" % wan)
        if wan != self._pinned:
            self._transition("wgrouter", None, "pinned to %s" % (self._pinned or "none"),
                             "pinned to %s" % (wan or "none"), "manual switch", "state")
        self._pinned = wan

    def _on_hotplug(self, ev: model.Hotplug) -> None:
        action, iface = ev.action, ev.interface
        if iface in self._wans:
            wt = self._wans[iface]
            if action == "ifdown":
                wt.forced_down = True
                wt.set_why(DOWN, "hotplug ifdown")
            elif action in ("ifup", "ifupdate"):
                wt.forced_down = False
                if action != "ifup":
                    return  # a DHCP renewal: address and gateway are compared anyway
                if wt.unhealthy:
                    wt.healed = "it came up anew (ifup)"
                wt.unhealthy = wt.mwan3_down = False
                wt.bad.clear()
                wt.fails.clear()
                wt.link_at = self._now  # its first probe may find the gateway unresolved
                # The kernel flushes a device's routes when it goes down; a
                # quick bounce may have taken our host routes without us ever
                # observing the WAN down.
                for ts in self._tunnels.values():
                    if ts.wan == iface:
                        for ps in self._tunnel_peers(ts):
                            ps.force = ps.force or "%s %s" % (iface, action)
            elif action == "disconnected":
                # mwan3track's verdict from its own track IPs and thresholds:
                # the user's tuning of when this uplink is dead.  It holds
                # until mwan3 says connected again (or the WAN comes up anew);
                # our own WAN probe does not overrule it.
                wt.mwan3_down = wt.unhealthy = True
                wt.set_why("unhealthy", "mwan3 reports it disconnected")
            elif action == "connected":
                if wt.mwan3_down:
                    wt.mwan3_down = wt.unhealthy = False
                    wt.bad.clear()
                    wt.fails.clear()
                    wt.healed = "mwan3 reports it connected"
                    # mwan3track's own pings through it answered: the same
                    # evidence as our track IPs answering
                    for family in self._probe_families(self._config.wan(iface)):
                        wt.answered[family] = self._now
        elif iface in self._tunnels:
            ts = self._tunnels[iface]
            if action == "ifdown":
                ts.ifdown = True
                for ps in self._tunnel_peers(ts):
                    ps.applied = None
            elif action in ("ifup", "ifupdate"):
                # netifd (re)configured the device from UCI: its endpoints are
                # netifd's again, whatever we had set.
                ts.ifdown = False
                ts.reapply_at = None
                for ps in self._tunnel_peers(ts):
                    ps.force = "tunnel %s" % action

    def _on_probe(self, ev: model.ProbeResult) -> None:
        ps = self._peers.get((ev.tunnel, ev.peer))
        if ps is None or ps.probe_until is None:
            return  # stale: the path changed since the probe was sent
        ps.probe_until = None
        ts = self._tunnels[ps.peer.tunnel]
        if ps.probe_wan != ts.wan:
            return
        if ev.ok:
            self._wans[ts.wan].proven[self._peer_family(ps)] = self._now
            self._recovered(ps, "probe to %s answered" % ps.peer.probe)
        else:
            ps.evidence += "; probe to %s failed%s" % (ps.peer.probe, _why(ev.error))
            ps.probe_failed = True
            self._verdict(ts, ps)

    def _on_wan_probe(self, ev: model.WanProbeResult) -> None:
        wan, ok = ev.wan, bool(ev.ok)
        wt = self._wans.get(wan)
        if wt is None:
            return
        family = ev.family
        if family in (4, 6):
            families = [family]
        else:  # a shell that does not say: the families that were asked
            families = sorted(wt.probe_until) or self._probe_families(self._config.wan(wan)) or [4]
        wt.probe_error = "" if ok else _why(ev.error)
        for f in families:
            self._wan_round(wan, wt, f, ok, _why(ev.error))
        for ts, ps in list(self._waiting_on(wan)):
            if ok:
                ps.evidence += "; wan probe ok"
            self._verdict(ts, ps)

    def _wan_round(self, wan: str, wt: _WanTrack, family: int, ok: bool, error: str) -> None:
        """Take one ProbeWan answer of one address family."""
        now = self._now
        sent = wt.probe_sent.get(family, now)
        wt.probe_until.pop(family, None)
        fam = self._fam_text(wan, family)
        if ok:
            wt.answered[family] = now
            wt.fails[family] = 0
            if family in wt.bad:
                del wt.bad[family]
                wt.healed_at[family] = now
                wt.healed = "%strack ips answer" % fam
                if not wt.unhealthy:
                    self._transition(wan, None, "IPv%d unhealthy" % family, wt.label, wt.healed, "wan")
            self._judge_wan(wan, wt)
            return
        if wt.link_at is not None and sent < wt.link_at + LINK_SETTLE and wt.up:
            # Not evidence yet: right after a link change the gateway's
            # neighbour entry may still be resolving.
            wt.retry[family] = now + WAN_RETRY
            self._transition(wan, None, "probing", "retrying", "%strack ips silent %s after a link change%s; "
                             "retry in %s" % (fam, _fmt(sent - wt.link_at), error, _fmt(WAN_RETRY)), "wan")
            return
        proven = wt.proven.get(family)
        if proven is not None and proven >= sent:
            # A tunnel received through this WAN meanwhile: it carries traffic,
            # only its track IPs are silent (filtered, or down themselves).
            wt.fails[family] = 0
            self._transition(wan, None, "probing", wt.label, "%strack ips silent but a tunnel answered" % fam,
                             "wan")
            return
        wt.fails[family] = wt.fails.get(family, 0) + 1
        fresh = family not in wt.bad
        wt.bad[family] = error
        wt.healed_at.pop(family, None)
        self._judge_wan(wan, wt)
        if fresh and not wt.unhealthy:
            # only this family is lost: tunnels of the other one stay
            self._transition(wan, None, wt.label, "IPv%d unhealthy" % family,
                             "IPv%d track ips do not answer%s" % (family, error), "wan")

    def _judge_wan(self, wan: str, wt: _WanTrack) -> None:
        """The WAN-wide verdict: unhealthy when every family it can probe
        failed (or while mwan3 says disconnected)."""
        if wt.mwan3_down:
            if wt.bad:
                wt.set_why("unhealthy", "mwan3 reports it disconnected; track ips do not answer%s" % wt.probe_error)
            return
        can = self._probe_families(self._config.wan(wan))
        dead = bool(can) and all(f in wt.bad for f in can)
        if dead and not wt.unhealthy:
            wt.unhealthy = True
            wt.set_why("unhealthy", "track ips do not answer%s" % wt.probe_error)
        elif not dead and wt.unhealthy:
            wt.unhealthy = False

    def _waiting_on(self, wan: str):
        for ts in self._tunnels.values():
            if ts.wan != wan:
                continue
            for ps in self._tunnel_peers(ts):
                if ps.probe_failed:
                    yield ts, ps

    def _on_resolved(self, ev: model.Resolved) -> None:
        host = _hostkey(ev.host)
        hs = self._hosts.get(host)
        if hs is None:
            return
        hs.pending_until = None
        users = [ps for ps in self._peers.values() if self._uses(ps, host)]
        chosen = None
        for address in ev.addresses:
            why = None
            for ps in users or [None]:
                why = bad_address(address, ps.peer.allowed_ips if ps else ())
                if why:
                    tunnel, label = (ps.peer.tunnel, ps.peer.label) if ps else ("wgrouter", None)
                    self._transition(tunnel, label, "%s -> %s" % (host, hs.address or "unresolved"),
                                     "rejected %s" % address, "address is %s" % why, "resolve")
                    break
            if not why:
                chosen = str(_ip(address))
                break
        if chosen is None:
            self._resolve_failed(host, hs, "no usable address in %s" % list(ev.addresses))
            return
        s = self._config.settings
        now = self._now
        ttl = min(max(float(ev.ttl or 0), s.dns_ttl_min), s.dns_ttl_max)
        hs.ttl = ttl
        hs.refresh_at = now + self._scale(max(ttl, DNS_REFRESH_MIN), 0.0, DNS_JITTER)
        hs.failures = 0
        mine = [ps for ps in users if self._current_host(ps) == host]
        before = [self._address(ps)[0] for ps in mine]
        while hs.history and hs.history[0][0] <= now - DNS_FLIP_WINDOW:
            hs.history.popleft()
        flipped = False
        if hs.address is None or chosen == hs.address:
            hs.agree += 1
        else:
            hs.agree = 1
            # back to an address it gave up: the name flips, it did not move
            flipped = any(address == chosen for _, address in hs.history)
        hs.history.append((now, chosen))
        if flipped:
            if hs.flipped_at is None or now - hs.flipped_at >= DNS_FLIP_WINDOW:
                for ps, old in zip(mine, before):
                    if ps.state == UP:
                        self._transition(ps.peer.tunnel, ps.peer.label, "%s -> %s" % (host, hs.address),
                                         "keeping %s" % old, "%s flips between %s and %s: a healthy peer keeps "
                                         "the address that works" % (host, hs.address, chosen), "resolve")
            hs.flipped_at = now
        hs.address = chosen
        hs.answers = tuple(a for a in (str(_ip(x)) for x in ev.addresses if _ip(x) is not None)
                           if not any(bad_address(a, ps.peer.allowed_ips) for ps in users))
        waiting = False
        for ps, old in zip(mine, before):
            new = self._address(ps)[0]
            if new != old:
                self._transition(ps.peer.tunnel, ps.peer.label, old or ps.adopted or "unresolved",
                                 new, "%s resolved (ttl %s)%s" % (host, _fmt(ttl), "" if hs.agree == 1 else
                                                                  ", %d answers agree" % hs.agree), "resolve")
            elif new != chosen and hs.agree < DNS_CONFIRM_ANSWERS and not (
                    hs.flipped_at is not None and now - hs.flipped_at < DNS_FLIP_WINDOW):
                waiting = True
        if waiting:
            # a healthy peer waits for the change to be confirmed: ask again
            # a check interval later rather than a TTL later
            soon = now + self._scale(max(s.check_interval, DNS_REFRESH_MIN), 0.0, DNS_JITTER)
            hs.refresh_at = min(hs.refresh_at, soon)

    def _on_resolve_failed(self, ev: model.ResolveFailed) -> None:
        host = _hostkey(ev.host)
        hs = self._hosts.get(host)
        if hs is None:
            return
        hs.pending_until = None
        self._resolve_failed(host, hs, str(ev.error or "lookup failed"))

    def _resolve_failed(self, host: str, hs: _HostState, error: str) -> None:
        s = self._config.settings
        hs.failures += 1
        # Retried soon at first, then no slower than the shortest TTL honoured:
        # a peer waiting for its first address must not wait minutes.
        delay = min(s.backoff_base * (2.0 ** min(hs.failures - 1, 30)), max(s.dns_ttl_min, s.backoff_base))
        hs.refresh_at = self._now + max(self._scale(delay, -BACKOFF_JITTER, 0.0), DNS_REFRESH_MIN)
        if hs.failures == 1:
            for ps in self._peers.values():
                if self._current_host(ps) == host:
                    self._transition(ps.peer.tunnel, ps.peer.label, hs.address or "unresolved",
                                     "keeping %s" % (hs.address or ps.adopted or "netifd's endpoint"),
                                     "%s: %s" % (host, error), "resolve")

    def _on_applied(self, ev: model.Applied) -> None:
        action = ev.action
        note = ev.note
        if not isinstance(action, model.ApplyPath):
            if isinstance(action, model.RemovePath) and (not ev.ok or note):
                # the peer may be gone from the configuration: its key names it
                self._transition(action.tunnel, action.peer[:8], "removing route to %s" % action.address,
                                 "removed" if ev.ok else "not removed",
                                 "; ".join(t for t in (ev.error, note) if t), "state")
            elif isinstance(action, model.RestartTunnel) and not ev.ok:
                self._transition(action.tunnel, None, "restarting", "not restarted", ev.error or "", "state")
            return
        ps = self._peers.get((action.tunnel, action.peer))
        if ps is None:
            return
        path = dataclasses.replace(action, old_address=None)
        applying = "applying %s via %s" % (model.Endpoint(path.address, path.port), path.wan)
        if ev.ok:
            if ps.applied == path:
                ps.apply_failures = 0
            if note:  # the applier gives each note once
                self._transition(action.tunnel, ps.peer.label, applying, "applied", note, "state")
            return
        if ps.applied != path:
            return  # an older path failed; a newer one is already out
        ps.applied = None
        ps.failed = path
        delay = self.backoff(ps.apply_failures)
        ps.apply_failures += 1
        ps.apply_retry_at = self._now + delay
        self._transition(action.tunnel, ps.peer.label, applying, "not applied", "%s; retry in %s%s" % (
            ev.error or "apply failed", _fmt(delay), "; " + note if note else ""), "state")

    # ------------------------------------------------ WAN tracking

    def _update_wans(self) -> None:
        now = self._now
        for wan in self._config.wans:
            wt = self._wans[wan.name]
            st = self._obs.wans.get(wan.name)
            obs_up = bool(st is not None and st.up)
            if not obs_up:
                wt.forced_down = False  # the kernel caught up with the hotplug event
                wt.set_why(DOWN, "not reported" if st is None else "no link, address or default route")
            up = obs_up and not wt.forced_down
            if not up and wt.up:
                # The kernel flushes a device's routes with it: our host
                # routes through this WAN are gone and must be put back.
                for ts in self._tunnels.values():
                    for ps in self._tunnel_peers(ts):
                        if ps.applied is not None and ps.applied.wan == wan.name:
                            ps.applied = None
            if up:
                address = (st.address, st.address6)
                if not wt.up or (wt.address is not None and address != wt.address):
                    wt.link_at = now  # its first probe may find the gateway unresolved
                wt.address = address
            else:
                wt.retry.clear()
            wt.up = up
            usable = up and not wt.unhealthy
            label = UP if usable else ("unhealthy" if up else DOWN)
            if usable != wt.usable:
                wt.usable = usable
                wt.usable_since = now if usable else None
                if not usable:
                    wt.loss_counted = False
            if not wt.usable and not wt.loss_counted and self._confirmed(wt):
                # A flap, for damping: a loss of link, mwan3's verdict, or
                # WAN_CONFIRM_ROUNDS failed probes, not one lost echo.
                wt.changes.append(now)
                wt.loss_counted = True
            if label != wt.label:
                if label == UP:
                    because = "link, address and default route present" + (
                        "; " + wt.healed if wt.label == "unhealthy" and wt.healed else "")
                else:
                    because = wt.cause or wt.why
                self._transition(wan.name, None, wt.label, label, because, "wan")
                wt.label = label

    # ------------------------------------------------ peers: stats, adoption

    def _update_peers(self) -> None:
        for ps in self._peers.values():
            st = self._obs.peers.get(ps.peer.key)
            if st is None:
                continue
            ps.stats = st
            if ps.applied is None and ps.adopted is None and ps.last_address is None:
                first = ps.peer.endpoints[0]
                ip = _endpoint_ip(st.endpoint)
                if _ip(first.host) is None and ip and not bad_address(ip, ps.peer.allowed_ips):
                    ps.adopted = ip
            if ps.state == STARTING and st.latest_handshake and \
                    self._now - st.latest_handshake < self._config.settings.handshake_timeout:
                ps.state = UP

    def _timeouts(self) -> None:
        now = self._now
        for wan, wt in self._wans.items():
            late = [f for f, until in wt.probe_until.items() if now >= until]
            for f in late:
                del wt.probe_until[f]  # no verdict: judge the tunnel alone
            if late and not wt.probe_until:
                for ts, ps in list(self._waiting_on(wan)):
                    ps.evidence += "; wan probe unanswered"
                    self._verdict(ts, ps)
        for ps in self._peers.values():
            if ps.probe_until is not None and now >= ps.probe_until:
                ps.probe_until = None
                ts = self._tunnels[ps.peer.tunnel]
                if ps.probe_wan == ts.wan:
                    ps.evidence += "; probe to %s unanswered" % ps.peer.probe
                    ps.probe_failed = True
                    self._verdict(ts, ps)
        for hs in self._hosts.values():
            if hs.pending_until is not None and now >= hs.pending_until:
                hs.pending_until = None
                host = next((h for h, v in self._hosts.items() if v is hs), "?")
                self._resolve_failed(host, hs, "no answer")

    def _retries(self) -> None:
        """Send the WAN probes that got no answer right after a link change again."""
        probed: typing.Set[typing.Tuple[str, int]] = set()
        for wan in self._config.wans:
            wt = self._wans[wan.name]
            due = sorted(f for f, at in wt.retry.items() if at <= self._now)
            if due:
                for f in due:
                    del wt.retry[f]
                self._probe_wan(wan, probed, due)

    def _evidence(self) -> None:
        """Tunnel traffic received through a WAN is evidence that it works:
        rx growth (or a new handshake) of a peer whose path is on it, seen
        between two observations taken after the path was applied."""
        now = self._now
        for ps in self._peers.values():
            st = self._obs.peers.get(ps.peer.key)
            if st is None:
                continue
            mark, ps.rx_mark = ps.rx_mark, (st.rx, st.latest_handshake, now)
            if mark is None or ps.applied is None or ps.applied_at is None or mark[2] <= ps.applied_at:
                continue
            handshake = st.latest_handshake != mark[1] and st.latest_handshake > ps.applied_at
            if st.rx > mark[0] or handshake:
                wt = self._wans.get(ps.applied.wan)
                if wt is not None:
                    wt.proven[model.family(ps.applied.address)] = now

    # ------------------------------------------------ monitor

    def _check(self) -> None:
        now = self._now
        probed: typing.Set[str] = set()
        for ts in self._tunnels.values():
            for ps in self._tunnel_peers(ts):
                st = self._obs.peers.get(ps.peer.key)
                if st is None or ts.wan is None or ps.applied is None or not ts.present:
                    ps.sample = None if st is None else (st.rx, st.tx, now)
                    continue
                verdict, evidence = self._judge(ps, st)
                ps.sample = (st.rx, st.tx, now)
                if verdict == UP:
                    self._recovered(ps, evidence)
                elif verdict == SUSPECT:
                    self._suspect(ts, ps, evidence, probed)
        # A WAN marked unhealthy (or unhealthy for one family) is probed
        # every check (cheap), so that its failback hold-down can start as
        # soon as it answers again.
        for wan in self._config.wans:
            wt = self._wans[wan.name]
            if wt.bad and not wt.mwan3_down and wt.up and self._track_ips(wan):
                self._probe_wan(wan, probed, sorted(wt.bad))
        # A preferred WAN that would take a tunnel back is probed through
        # itself every check of its hold-down: failback needs its answer.
        for ts in self._tunnels.values():
            if ts.wan is None or not self._tunnel_peers(ts):
                continue
            for wan in self._config.wans:
                if wan.name == ts.wan:
                    break
                if self._wans[wan.name].up and self._usable_for(ts, wan.name):
                    families = self._proof_families(ts, wan)
                    if families:
                        self._probe_wan(wan, probed, families)

    def _judge(self, ps: _PeerState, st: model.PeerStats) -> typing.Tuple[str, str]:
        s = self._config.settings
        now = self._now
        age = now - st.latest_handshake if st.latest_handshake else None
        keepalive = ps.applied.keepalive if ps.applied else st.keepalive
        drx = dtx = 0
        elapsed = s.check_interval
        if ps.sample is not None:
            rx0, tx0, t0 = ps.sample
            if st.rx >= rx0 and st.tx >= tx0:  # counters restart with the device
                drx, dtx, elapsed = st.rx - rx0, st.tx - tx0, max(0.0, now - t0)
        # Keepalives sent in the interval, counting one more for the edges.
        allowance = KEEPALIVE_BYTES * (math.ceil(elapsed / keepalive) + 1) if keepalive else 0
        if drx > 0:
            return UP, "received %d B" % drx
        if dtx > allowance:
            return SUSPECT, "sent %d B in %s, received nothing" % (dtx, _fmt(elapsed))
        if age is not None and age < s.handshake_timeout:
            return UP, "handshake %s ago" % _fmt(age)
        if age is not None and keepalive:
            return SUSPECT, "handshake %s old with keepalive %ds" % (_fmt(age), keepalive)
        if age is None and ps.applied_at is not None and now - ps.applied_at >= s.handshake_timeout:
            return SUSPECT, "no handshake %s after the path was applied" % _fmt(now - ps.applied_at)
        return "idle", "no traffic"

    def _suspect(self, ts: _TunnelState, ps: _PeerState, evidence: str, probed: typing.Set[str]) -> None:
        if ps.probe_until is not None or ps.probe_failed:
            return  # a verdict is already on its way
        kept = self._address(ps)[0]
        ps.state = RECOVERING if ps.steps_done else SUSPECT
        latest = self._address(ps)[0]
        if latest != kept:
            self._transition(ps.peer.tunnel, ps.peer.label, kept, latest, "%s; a suspect peer follows the "
                             "latest answer of %s" % (evidence, self._current_host(ps)), "resolve")
        if self._now < ps.backoff_until:
            return
        s = self._config.settings
        ps.evidence = evidence
        wan = self._config.wan(ts.wan)
        if self._track_ips(wan):
            self._probe_wan(wan, probed, [self._peer_family(ps)])
        ps.probe_wan = ts.wan
        if ps.peer.probe:
            self._out.append(model.Probe(tunnel=ps.peer.tunnel, peer=ps.peer.public_key, target=ps.peer.probe,
                                         source=ts.tunnel.source_for(ps.peer.probe), timeout=s.probe_timeout))
            ps.probe_until = self._now + s.probe_timeout + ANSWER_GRACE
        else:
            ps.evidence += "; no probe target"
            ps.probe_failed = True
            self._verdict(ts, ps)

    def _families(self, wan: str) -> typing.List[str]:
        """["ipv4", "ipv6"]: the address families the WAN carries now."""
        st = self._obs.wans.get(wan)
        if st is None or not st.up:
            return []
        return [name for family, name in ((4, "ipv4"), (6, "ipv6")) if st.carries(family)]

    def _track_ips(self, wan: model.Wan) -> typing.Tuple[str, ...]:
        """The track IPs this WAN can reach now: an IPv4 target says nothing
        about an uplink that carries only IPv6, and the other way round."""
        st = self._obs.wans.get(wan.name)
        if st is None:
            return tuple(wan.track_ips)
        return tuple(ip for ip in wan.track_ips if st.carries(model.family(ip)))

    def _probe_families(self, wan: model.Wan) -> typing.List[int]:
        """The address families (4, 6) the WAN can be probed in now."""
        return sorted({model.family(ip) for ip in self._track_ips(wan)})

    def _fam_text(self, wan: str, family: int) -> str:
        """"IPv6 " where the WAN has track IPs of both families, else ""."""
        families = {model.family(ip) for ip in self._config.wan(wan).track_ips}
        return "IPv%d " % family if len(families) > 1 else ""

    def _probe_wan(self, wan: model.Wan, probed: typing.Set[typing.Tuple[str, int]],
                   families: typing.Optional[typing.Iterable[int]] = None) -> None:
        """One ProbeWan per address family: of ``families`` that the WAN can
        be probed in (all of them when it can be in none of those), unless
        one is out already."""
        s = self._config.settings
        wt = self._wans[wan.name]
        can = self._probe_families(wan)
        wanted = can if families is None else ([f for f in families if f in can] or can)
        for f in wanted:
            if (wan.name, f) in probed or f in wt.probe_until:
                continue
            probed.add((wan.name, f))
            targets = tuple(ip for ip in self._track_ips(wan) if model.family(ip) == f)
            self._out.append(model.ProbeWan(wan=wan.name, device=self._device(wan), targets=targets,
                                            timeout=s.probe_timeout))
            wt.probe_until[f] = self._now + s.probe_timeout + ANSWER_GRACE
            wt.probe_sent[f] = self._now
            wt.retry.pop(f, None)

    def _verdict(self, ts: _TunnelState, ps: _PeerState) -> None:
        """The peer's probe failed: take a ladder step unless the WAN probe is still out."""
        if ts.wan is None or ps.probe_wan != ts.wan:
            ps.probe_failed = False
            return
        wt = self._wans[ts.wan]
        if wt.probe_until or wt.retry:
            return
        ps.probe_failed = False
        if self._bad_for(ts, ts.wan) and self._other_wan(ts):
            # The WAN itself is dead: skip re-resolving and other candidates;
            # the WAN choice of this step moves every tunnel off it.
            error = wt.bad.get(self._peer_family(ps), wt.probe_error)
            ps.candidate = 0
            self._ladder_done(ps, STEP_WAN, ps.evidence + "; wan probe of %s failed%s" % (ts.wan, error))
            ps.ladder = 0  # a fresh path: the ladder starts over on the new WAN
            return
        self._recover(ts, ps)

    def _recovered(self, ps: _PeerState, evidence: str) -> None:
        ps.probe_failed = False
        ps.probe_until = None
        if ps.state in (SUSPECT, RECOVERING) or ps.steps_done:
            self._transition(ps.peer.tunnel, ps.peer.label, ps.last_step or ps.state, UP, evidence, "recovery")
        ps.state = UP
        ps.steps_done = 0
        ps.ladder = 0
        ps.last_step = None
        ps.backoff_until = 0.0
        ps.evidence = ""

    # ------------------------------------------------ recovery ladder

    def _ladder(self, ps: _PeerState) -> typing.List[str]:
        return [STEP_RERESOLVE] + [STEP_CANDIDATE] * (len(ps.peer.endpoints) - 1) + [STEP_WAN, STEP_RESTART]

    def _recover(self, ts: _TunnelState, ps: _PeerState) -> None:
        s = self._config.settings
        ladder = self._ladder(ps)
        for _ in range(len(ladder)):
            name = ladder[ps.ladder % len(ladder)]
            ps.ladder = (ps.ladder + 1) % len(ladder)
            if name == STEP_RESTART and ts.last_restart is not None and self._now - ts.last_restart < s.backoff_max:
                continue  # a restart is heavy: at most one per backoff_max
            if name == STEP_WAN and not self._other_wan(ts):
                continue
            break
        detail = name
        if name == STEP_RERESOLVE:
            host = self._current_host(ps)
            if host is not None:
                hs = self._hosts.setdefault(host, _HostState())
                if hs.pending_until is None:
                    hs.refresh_at = None
            ps.force = name
        elif name == STEP_CANDIDATE:
            n = len(ps.peer.endpoints)
            st = self._obs.wans.get(ts.wan) if ts.wan else None
            for _ in range(n):
                ps.candidate = (ps.candidate + 1) % n
                if st is None or st.carries(self._candidate_family(ps, ps.candidate)):
                    break
            ps.force = name
            detail = "%s (candidate %d, %s)" % (name, ps.candidate, ps.peer.endpoints[ps.candidate])
        elif name == STEP_WAN:
            count = ts.suspect_count.get(ts.wan, 0)
            ts.suspect[ts.wan] = self._now + min(s.backoff_max * 2 ** min(count, 30), SUSPECT_HOLD_MAX)
            ts.suspect_count[ts.wan] = count + 1
            ts.reason = "no reply through tunnel on %s" % ts.wan
            ps.candidate = 0
        elif name == STEP_RESTART:
            self._out.append(model.RestartTunnel(tunnel=ts.tunnel.name))
            ts.last_restart = self._now
            ts.reapply_at = self._now + RESTART_SETTLE
            for other in self._tunnel_peers(ts):
                other.applied = None
        self._ladder_done(ps, detail, ps.evidence)
        ps.last_step = name

    def _ladder_done(self, ps: _PeerState, step: str, evidence: str) -> None:
        delay = self.backoff(ps.steps_done)
        ps.steps_done += 1
        ps.backoff_until = self._now + delay
        self._transition(ps.peer.tunnel, ps.peer.label, ps.last_step or ps.state, step,
                         "%s; next step not before %s" % (evidence.lstrip("; "), _fmt(delay)), "recovery")
        ps.last_step = step.split(" (")[0]
        ps.state = RECOVERING

    def _other_wan(self, ts: _TunnelState) -> bool:
        return any(w.name != ts.wan and self._usable_for(ts, w.name) and ts.suspect.get(w.name, 0.0) <= self._now
                   for w in self._config.wans)

    # ------------------------------------------------ health per address family

    def _peer_family(self, ps: _PeerState) -> int:
        """4 or 6: the family of the peer's path (applied, else its candidate's)."""
        if ps.applied is not None:
            return model.family(ps.applied.address)
        return self._candidate_family(ps, ps.candidate)

    def _tunnel_families(self, ts: _TunnelState) -> typing.Set[int]:
        return {self._candidate_family(ps, ps.candidate) for ps in self._tunnel_peers(ts)}

    def _bad_for(self, ts: _TunnelState, wan: str) -> bool:
        """The WAN failed its probe in a family this tunnel uses (or as a whole)."""
        wt = self._wans[wan]
        return wt.unhealthy or bool(set(wt.bad) & self._tunnel_families(ts))

    def _usable_for(self, ts: _TunnelState, wan: str) -> bool:
        return self._wans[wan].usable and not self._bad_for(ts, wan)

    def _confirmed(self, wt: _WanTrack) -> bool:
        """The WAN's loss is more than one lost echo: a flap, for damping."""
        return not wt.up or wt.mwan3_down or any(wt.fails.get(f, 0) >= WAN_CONFIRM_ROUNDS for f in wt.bad)

    def _proof_families(self, ts: _TunnelState, wan: model.Wan) -> typing.List[int]:
        """The families whose track IPs must answer through ``wan`` before
        ``ts`` fails back onto it: the tunnel's own where the WAN has track
        IPs of them, else any it has; none without track IPs (then link,
        address and default route are all the evidence there is)."""
        can = self._probe_families(wan)
        return [f for f in can if f in self._tunnel_families(ts)] or can

    def _hold_start(self, ts: _TunnelState, wan: str) -> typing.Optional[float]:
        """When the WAN's hold-down started for this tunnel: it became usable,
        or the tunnel's family on it answered again, whichever is later."""
        wt = self._wans[wan]
        if wt.usable_since is None:
            return None
        healed = [wt.healed_at[f] for f in self._tunnel_families(ts) if f in wt.healed_at]
        return max([wt.usable_since] + healed)

    def _failback_ready(self, ts: _TunnelState, wan: str) -> typing.Tuple[bool, str]:
        """(ready, why): the hold-down is over and the WAN's track IPs of the
        tunnel's family answered through it since the hold-down started."""
        now = self._now
        start = self._hold_start(ts, wan)
        if start is None:
            return False, ""
        hold = self._holddown(wan, now)
        if now - start < hold:
            return False, ""
        wt = self._wans[wan]
        families = self._proof_families(ts, self._config.wan(wan))
        if any(wt.answered.get(f, -math.inf) < start for f in families):
            return False, ""
        proof = ""
        if families:
            proof = "; its %strack ips answer" % (self._fam_text(wan, families[0]) if len(families) == 1 else "")
        return True, "%s usable for %s (hold-down %s)%s" % (wan, _fmt(now - start), _fmt(hold), proof)

    # ------------------------------------------------ WAN choice and paths

    def _choose(self, ts: _TunnelState) -> typing.Tuple[typing.Optional[str], str]:
        now = self._now
        wans = [w.name for w in self._config.wans]
        up = [w for w in wans if self._wans[w].up]
        if not up:
            return None, "no wan is up (%s)" % ", ".join("%s %s" % (w, self._wans[w].why) for w in wans) if wans \
                else "no wan configured"
        # A WAN without the address family of any endpoint candidate (an
        # IPv6-only peer on an IPv4-only uplink) cannot carry the tunnel:
        # it is a choice only when no other WAN can.
        up = [w for w in up if self._carries(ts, w)] or up
        if self._pinned in up:
            return self._pinned, "manual switch"
        for w in list(ts.suspect):
            if ts.suspect[w] <= now:
                del ts.suspect[w]
        suspect, shared = self._suspects(ts)
        good = [w for w in up if self._usable_for(ts, w) and w not in suspect] or \
            [w for w in up if self._usable_for(ts, w)] or up
        cur = ts.wan
        if cur is not None and cur in good:
            for best in good:
                if self._order(best) >= self._order(cur):
                    break
                ready, because = self._failback_ready(ts, best)
                if ready:
                    return best, because
            return cur, ""
        choice = good[0]
        if cur is None:
            return choice, "start" if ts.last_wan is None else "%s is up" % choice
        if ts.reason and cur in ts.suspect:
            return choice, ts.reason
        if cur in shared:
            return choice, shared[cur]
        return choice, "%s is %s" % (cur, self._wans[cur].why if not self._wans[cur].usable else "not preferred")

    def _suspects(self, ts: _TunnelState):
        """WANs the tunnel avoids: its own suspects, and those of any tunnel
        with a peer at one of its endpoint addresses.  The kernel has one
        host route (and, with mwan3, one rule) per address, so such tunnels
        must ride the same WAN.  Returns (suspects, {wan: why, for the
        shared ones})."""
        suspect = dict(ts.suspect)
        shared: typing.Dict[str, str] = {}
        mine = {ps.applied.address for ps in self._tunnel_peers(ts) if ps.applied}
        for other in self._tunnels.values():
            if other is ts or not mine:
                continue
            common = mine & {ps.applied.address for ps in self._tunnel_peers(other) if ps.applied}
            for w, until in other.suspect.items():
                if common and until > self._now and w not in suspect:
                    suspect[w] = until
                    shared[w] = "%s left %s, and the endpoint address %s is one route for both" % (
                        other.tunnel.name, w, min(common))
        return suspect, shared

    def _evaluate_tunnel(self, ts: _TunnelState) -> None:
        peers = self._tunnel_peers(ts)
        if not peers:
            return
        now = self._now
        name = ts.tunnel.name
        if self._obs.tunnels is not None:
            ts.in_kernel = name in self._obs.tunnels
        present = not ts.ifdown and ts.in_kernel
        if present and not ts.present:
            self._transition(name, None, DOWN, ts.wan or "none", "tunnel %s is back" % name, "state")
            for ps in peers:
                ps.force = ps.force or "tunnel %s is back" % name
        elif ts.present and not present:
            self._transition(name, None, ts.wan or "none", DOWN,
                             "hotplug ifdown" if ts.ifdown else "device %s is gone" % name, "state")
        ts.present = present
        choice, because = self._choose(ts)
        if choice is None:
            if not ts.down:
                self._transition(ts.tunnel.name, None, ts.wan or "none", DOWN, because, "state")
            ts.down = True
            ts.wan = None
            for ps in peers:
                ps.state = DOWN
                ps.probe_until, ps.probe_failed = None, False
            return
        if choice != ts.wan or ts.reapply:
            prior = ts.last_wan
            if prior is None or choice == prior:
                kind = "state"
            else:
                kind = "failback" if self._order(choice) < self._order(prior) else "failover"
            was = ts.wan or (DOWN if ts.down else "none")
            self._transition(ts.tunnel.name, None, was, choice, ts.reapply or because, kind)
            if choice != ts.wan:
                for ps in peers:
                    ps.probe_until, ps.probe_failed = None, False
                    if ps.state == DOWN:
                        ps.state = STARTING
                    if not ts.reason:
                        ps.ladder = 0  # a new path: recovery starts over (after the
                        # ladder's own "another WAN" it continues with the next step)
            ts.wan, ts.last_wan, ts.down, ts.reapply = choice, choice, False, None
        ts.reason = None
        if not present:
            for ps in peers:
                ps.state = DOWN if ps.state != STARTING else ps.state
            return
        if ts.reapply_at is not None:
            if now < ts.reapply_at:
                return
            ts.reapply_at = None
        wan = self._config.wan(choice)
        st = self._obs.wans.get(choice)
        address = ", ".join(a for a in (st.address, st.address6) if a) if st is not None else None
        if address and ts.wan_address and address != ts.wan_address:
            for ps in peers:
                ps.force = ps.force or "%s address changed %s -> %s" % (choice, ts.wan_address, address)
        ts.wan_address = address or ts.wan_address
        # which peers the kernel has is known whenever its tunnels are
        have_stats = self._obs.tunnels is not None or bool(self._obs.peers)
        for ps in peers:
            if have_stats and ps.peer.key not in self._obs.peers:
                continue  # not configured in the kernel: `wg set` would create it
            desired = self._desired(ts, ps, wan)
            if desired is None:
                continue
            if desired == ps.applied and not ps.force:
                continue
            if desired == ps.failed and now < ps.apply_retry_at and not ps.force:
                continue
            self._apply(ps, desired)

    def _desired(self, ts: _TunnelState, ps: _PeerState, wan: model.Wan) -> typing.Optional[model.ApplyPath]:
        st = self._obs.wans.get(wan.name)
        if st is not None and st.up:
            self._fit_candidate(ps, wan.name, st)
        address, _, endpoint = self._address(ps)
        if address is None:
            return None
        family = model.family(address)
        if st is not None and st.up and not st.carries(family):
            return None  # _fit_candidate found none this WAN carries; said so
        gateway = None if st is None else st.gateway6 if family == 6 else st.gateway
        keepalive = wan.keepalive if wan.keepalive is not None else ps.peer.keepalive
        return model.ApplyPath(
            tunnel=ps.peer.tunnel, peer=ps.peer.public_key, wan=wan.name, device=self._device(wan),
            gateway=gateway, address=address, port=endpoint.port,
            keepalive=keepalive, old_address=None,
            table=wan.table if self._config.settings.mwan3 else None)

    def _candidate_family(self, ps: _PeerState, index: int) -> int:
        """4 or 6: the family candidate ``index`` would use (a name not
        resolved yet counts as IPv4: A records are asked first)."""
        host = ps.peer.endpoints[index].host
        ip = _ip(host)
        if ip is not None:
            return ip.version
        hs = self._hosts.get(_hostkey(host))
        if hs is not None and hs.address is not None:
            return model.family(hs.address)
        if index == 0 and ps.adopted is not None:
            return model.family(ps.adopted)
        return 4

    def _carries(self, ts: _TunnelState, wan: str) -> bool:
        st = self._obs.wans.get(wan)
        if st is None:
            return True  # not observed yet: judged as before
        return any(st.carries(self._candidate_family(ps, i))
                   for ps in self._tunnel_peers(ts) for i in range(len(ps.peer.endpoints)))

    def _fit_candidate(self, ps: _PeerState, wan: str, st: model.WanState) -> None:
        """Move the peer to a candidate whose address family ``wan`` carries."""
        family = self._candidate_family(ps, ps.candidate)
        if st.carries(family):
            ps.no_family = None
            return
        for i in range(len(ps.peer.endpoints)):
            if st.carries(self._candidate_family(ps, i)):
                self._transition(ps.peer.tunnel, ps.peer.label, "candidate %d (%s)" % (
                    ps.candidate, ps.peer.endpoints[ps.candidate]), "candidate %d (%s)" % (
                    i, ps.peer.endpoints[i]), "%s has no IPv%d path" % (wan, family), "state")
                ps.candidate = i
                ps.no_family = None
                return
        if ps.no_family != wan:
            ps.no_family = wan
            self._transition(ps.peer.tunnel, ps.peer.label, ps.state, "not applied",
                             "%s has no IPv%d path and no other endpoint candidate" % (wan, family), "state")

    def _apply(self, ps: _PeerState, path: model.ApplyPath) -> None:
        host = self._current_host(ps)
        ps.pin = (host, path.address) if host is not None else None
        self._out.append(dataclasses.replace(path, old_address=ps.last_address))
        if ps.last_address is not None and ps.last_address != path.address and ps.last_table == path.table:
            ps.routes.discard((ps.last_address, ps.last_table))  # the shell deletes it
        ps.routes.add((path.address, path.table))
        ps.applied, ps.applied_at, ps.failed, ps.force = path, self._now, None, None
        ps.last_address, ps.last_table = path.address, path.table
        if ps.state == DOWN:
            ps.state = STARTING

    def _remove_paths(self, ps: _PeerState) -> typing.List[model.RemovePath]:
        out = [model.RemovePath(tunnel=ps.peer.tunnel, peer=ps.peer.public_key, address=address, table=table)
               for address, table in sorted(ps.routes, key=lambda r: (r[0], r[1] or 0))]
        ps.routes.clear()
        ps.applied = None
        return out

    # ------------------------------------------------ endpoints and DNS

    def _current_host(self, ps: _PeerState) -> typing.Optional[str]:
        """The host name of the peer's current candidate, None for an IP literal."""
        host = ps.peer.endpoints[ps.candidate].host
        return None if _ip(host) is not None else _hostkey(host)

    def _uses(self, ps: _PeerState, host: str) -> bool:
        return any(_hostkey(e.host) == host for e in ps.peer.endpoints)

    def _address(self, ps: _PeerState):
        """(address, source, endpoint) of the peer's current candidate."""
        endpoint = ps.peer.endpoints[ps.candidate]
        source = "config" if ps.candidate == 0 else "candidate %d" % ps.candidate
        ip = _ip(endpoint.host)
        if ip is not None:
            return str(ip), source, endpoint
        host = _hostkey(endpoint.host)
        hs = self._hosts.get(host)
        if hs is not None and hs.address is not None:
            pin = ps.pin
            if pin is not None and pin[0] == host and pin[1] != hs.address and ps.state == UP and (
                    pin[1] in hs.answers or not self._settled(hs)):
                # A healthy peer keeps the address that works until the
                # change is confirmed (or while the name flips).
                return pin[1], "dns" if ps.candidate == 0 else source, endpoint
            return hs.address, "dns" if ps.candidate == 0 else source, endpoint
        if ps.candidate == 0 and ps.adopted is not None:
            return ps.adopted, "kernel", endpoint
        return None, None, endpoint

    def _settled(self, hs: _HostState) -> bool:
        """The name's latest answer is confirmed: DNS_CONFIRM_ANSWERS in a
        row chose it, and the name has not flipped back within DNS_FLIP_WINDOW."""
        flipping = hs.flipped_at is not None and self._now - hs.flipped_at < DNS_FLIP_WINDOW
        return hs.agree >= DNS_CONFIRM_ANSWERS and not flipping

    def _resolves(self) -> None:
        now = self._now
        asked: typing.Set[str] = set()
        up = [w for w in self._config.wans if self._wans[w.name].up]
        for ts in self._tunnels.values():
            if ts.wan is None:
                continue
            for ps in self._tunnel_peers(ts):
                host = self._current_host(ps)
                if host is None or host in asked:
                    continue
                hs = self._hosts.setdefault(host, _HostState())
                if hs.pending_until is not None or (hs.refresh_at is not None and now < hs.refresh_at):
                    continue
                asked.add(host)
                wan = self._config.wan(ts.wan)
                if hs.failures and len(up) > 1:
                    # The active WAN may be silently dead: after a failure ask
                    # through the next WAN, so a peer waiting for its first
                    # address gets one and can be monitored.
                    names = [w.name for w in up]
                    start = names.index(ts.wan) if ts.wan in names else 0
                    wan = up[(start + hs.failures) % len(up)]
                self._out.append(model.Resolve(host=host, wan=wan.name, device=self._device(wan),
                                               servers=tuple(wan.dns_servers)))
                hs.pending_until = now + RESOLVE_ANSWER_TIMEOUT

    # ------------------------------------------------ deadline and state

    def _deadline(self) -> typing.Optional[float]:
        if not self._managed():
            return None
        now = self._now
        times = [self._next_check]
        for wt in self._wans.values():
            times.extend(wt.probe_until.values())
            times.extend(wt.retry.values())
        for ps in self._peers.values():
            times.append(ps.probe_until)
            if ps.failed is not None and ps.applied is None:
                times.append(ps.apply_retry_at)
        for ts in self._tunnels.values():
            if not self._tunnel_peers(ts):
                continue
            times.append(ts.reapply_at)
            times.extend(ts.suspect.values())
            if ts.wan is not None:
                for wan in self._config.wans:
                    if wan.name == ts.wan:
                        break
                    start = self._hold_start(ts, wan.name) if self._usable_for(ts, wan.name) else None
                    if start is not None:
                        times.append(start + self._holddown(wan.name, now))
                        break
            for ps in self._tunnel_peers(ts):
                host = self._current_host(ps)
                hs = self._hosts.get(host) if host else None
                if hs is not None and ts.wan is not None:
                    times.append(hs.pending_until if hs.pending_until is not None else hs.refresh_at)
        future = [t for t in times if t is not None and t > now]
        return min(future) if future else None

    def _tunnel_state(self, ts: _TunnelState) -> str:
        states = {self._peers[p.key].state for p in ts.tunnel.peers if p.key in self._peers}
        for state in (RECOVERING, SUSPECT, DOWN, STARTING, UP):
            if state in states:
                return state
        return STARTING
