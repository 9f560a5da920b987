"""The decision core's entry point: which WAN each tunnel uses, when to probe, how to recover.

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

The parts, each one topic, depend on each other in one direction only:
``state`` (constants, records, the shared Context) <- ``wan`` (WAN health)
<- ``names`` (endpoint names) <- ``paths`` (WAN choice, candidates, applied
paths) <- ``health`` (monitor, probes, recovery ladder); ``status`` reads
them all, and ``Engine`` here wires them into one step.
"""

from __future__ import annotations

import collections
import random
import typing

from wgrouter import model
from wgrouter.core import health as whealth
from wgrouter.core import names as wnames
from wgrouter.core import paths as wpaths
from wgrouter.core import state
from wgrouter.core import status as wstatus
from wgrouter.core import wan as wwan


class Quiet(typing.NamedTuple):
    """The observation of a check that decided nothing, and until when its
    repeat decides nothing either."""
    wans: typing.Any
    peers: typing.Any
    tunnels: typing.Any
    until: float
    deadline: typing.Optional[float]  # the parts' earliest deadline, None if they have none
    due: typing.Optional[float]  # health.quiet_due() of that check


class Engine:
    """Keeps every managed peer on a working path; see the module docstring."""

    def __init__(self, config: model.Config, now: float, rng: typing.Optional[random.Random] = None):
        self.ctx = state.Context(config, now, rng)
        self.wans = wwan.Wans(self.ctx)
        self.names = wnames.Names(self.ctx)
        self.paths = wpaths.Paths(self.ctx, self.wans, self.names)
        self.health = whealth.Health(self.ctx, self.wans, self.names, self.paths)
        self._removals: typing.List[model.Action] = []
        self._next_check = now + self.ctx.check_interval()
        self._quiet: typing.Optional[Quiet] = None
        self._handlers = {
            model.Hotplug: self._on_hotplug, model.KernelChanged: self._on_link,
            model.ProbeResult: self.health.on_probe_result, model.WanProbeResult: self._on_wan_probe,
            model.Resolved: self.names.on_resolved, model.ResolveFailed: self.names.on_resolve_failed,
            model.Applied: self.paths.on_applied, model.Switch: self.paths.on_switch,
            model.Reapply: self.paths.on_reapply, model.Malformed: self._on_malformed,
        }
        self._load(config)

    # ------------------------------------------------ public API

    def step(self, obs: model.Observation, now: float) -> model.Decision:
        quiet, self._quiet = self._quiet, None
        if quiet is not None and not obs.events and now < quiet.until and obs.wans is quiet.wans \
                and obs.peers is quiet.peers and obs.tunnels is quiet.tunnels:
            return self._repeat(quiet, obs, now)
        self.ctx.begin(obs, now)
        out = self.ctx.out
        out.extend(self._removals)
        self._removals = []
        self.health.evidence()
        for event in obs.events:
            try:
                self._event(event)
            except (state.BadEvent, KeyError, TypeError, ValueError) as exc:
                name = getattr(event, "name", getattr(event, "kind", "?"))
                self.ctx.transition("wgrouter", None, "event %s" % name, "ignored",
                                    "%s: %s" % (state.BadEvent.__doc__, exc), "state")
        self.wans.update()
        self.paths.update_peers()
        self.wans.expire(self.health.wan_unanswered)
        self.health.expire()
        self.names.expire()
        self.wans.retries()
        checked = self.ctx.managed() and now >= self._next_check
        if checked:
            self._next_check = now + self.ctx.check_interval()
            self.health.check()
        for ts in self.ctx.tunnels.values():
            self.paths.evaluate(ts)
        self.health.verify()
        self.health.trials()
        self.names.resolves()
        due = self.health.quiet_due()
        if due is not None and due < self._next_check:
            self._next_check = due  # a quiet peer's echo on time, not up to a check late
        parts = self._part_deadlines()
        if checked and not out and not obs.events:
            self._quiet = self._quiet_after(obs, parts, due)
        return model.Decision(actions=tuple(out), deadline=self._deadline(parts))

    def reconfigure(self, config: model.Config, now: float) -> None:
        """Take a new configuration; peers that still exist keep their state."""
        old_interval = self.ctx.config.settings.check_interval
        self._quiet = None
        self.ctx.config = config
        self.ctx.ring = collections.deque(self.ctx.ring, maxlen=max(1, config.settings.events))
        self._load(config)
        if config.settings.check_interval != old_interval:
            self._next_check = min(self._next_check, now + self.ctx.check_interval())

    def stop(self) -> typing.Tuple[model.Action, ...]:
        """RemovePath for every host route this engine has added."""
        self._quiet = None
        out: typing.List[model.Action] = list(self._removals)
        self._removals = []
        for ps in self.ctx.peers.values():
            out.extend(self.paths.remove_paths(ps))
        return tuple(out)

    def snapshot(self, now: float, wall: typing.Optional[float] = None) -> dict:
        """``status`` as JSON-able data, for ubus, MQTT and the CLI."""
        return model.status_json(self.status(now, wall))

    def status(self, now: float, wall: typing.Optional[float] = None) -> model.Status:
        """The typed status; ``wall`` is the unix time at ``now``."""
        return wstatus.build(self.ctx, self.wans, self.names, self._next_check, now, wall)

    def backoff(self, n: int) -> float:
        """Delay after the n-th (0-based) consecutive failure."""
        return self.ctx.backoff(n)

    @property
    def next_check(self) -> float:
        """When the monitor checks next (the engine's clock)."""
        return self._next_check

    # ------------------------------------------------ test hooks
    # Named ways in for tests that set up a state no short run of steps
    # reaches; the product never calls them.

    def recent(self) -> typing.Tuple[typing.Tuple[float, model.Transition], ...]:
        """The ring of recent transitions, on the engine's clock."""
        return tuple(self.ctx.ring)

    def probe_wan_now(self, wan: str, families: typing.Optional[typing.Iterable[int]] = None
                      ) -> typing.Tuple[model.Action, ...]:
        """The ProbeWan actions of ``wan`` (of ``families``) sent now, outside a step."""
        self._quiet = None
        self.ctx.out = []
        self.wans.probe(self.ctx.config.wan(wan), set(), families)
        return tuple(self.ctx.out)

    def track_ips(self, wan: str) -> typing.Tuple[str, ...]:
        """The track IPs ``wan`` can reach now."""
        return self.wans.track_ips(self.ctx.config.wan(wan))

    def ladder_step(self, tunnel: str, key: str, ladder: int) -> None:
        """Take recovery ladder step number ``ladder`` for a peer now."""
        ts, ps = self.ctx.tunnels[tunnel], self.ctx.peers[(tunnel, key)]
        self._quiet = None
        ps.ladder = ladder
        self.health.recover(ts, ps)

    def applied(self) -> typing.Dict[typing.Tuple[str, str], typing.Optional[model.ApplyPath]]:
        """The path applied to each peer, by (tunnel, key)."""
        return {key: ps.applied for key, ps in self.ctx.peers.items()}

    def proven(self, wan: str) -> typing.Dict[int, float]:
        """When a tunnel last received through ``wan``, by address family."""
        return dict(self.ctx.wan_tracks[wan].proven)

    # ------------------------------------------------ configuration

    def _load(self, config: model.Config) -> None:
        self.ctx.wan_tracks = {wan.name: self.ctx.wan_tracks.get(wan.name) or state.WanTrack() for wan in config.wans}
        if self.ctx.pinned not in self.ctx.wan_tracks:
            self.ctx.pinned = None
        tunnels, peers = {}, {}
        for tunnel in config.tunnels:
            ts = self.ctx.tunnels.get(tunnel.name) or state.TunnelState(tunnel=tunnel)
            ts.tunnel = tunnel
            if ts.wan is not None and ts.wan not in self.ctx.wan_tracks:
                ts.wan = None
            tunnels[tunnel.name] = ts
            for peer in tunnel.peers:
                if not peer.endpoints:
                    continue  # nothing to route: a roaming client of this router
                ps = self.ctx.peers.get(peer.key) or state.PeerState(peer=peer)
                ps.peer = peer
                if ps.candidate >= len(peer.endpoints):
                    ps.candidate = 0
                if ps.trial is not None and ps.trial >= len(peer.endpoints):
                    ps.trial = None
                if ps.relay is not None and ps.relay >= len(peer.relays):
                    # its relay is gone from the configuration: back to UDP
                    self._removals.append(model.StopRelay(tunnel=peer.tunnel, peer=peer.public_key))
                    self.ctx.transition(peer.tunnel, peer.label, state.TRANSPORT_RELAY, state.TRANSPORT_UDP,
                                        "its relay was removed from the configuration", "transport")
                    ps.relay = ps.trial = ps.trial_at = None
                    ps.force = "relay removed"
                peers[peer.key] = ps
        for key, ps in self.ctx.peers.items():
            if key not in peers:
                self._removals.extend(self.paths.remove_paths(ps))
        self.ctx.tunnels, self.ctx.peers = tunnels, peers

    # ------------------------------------------------ events

    def _event(self, event: model.AnyEvent) -> None:
        handler = self._handlers.get(type(event))
        if handler is None:
            raise state.BadEvent("not an event: %r" % (event,))
        handler(event)

    def _on_malformed(self, ev: model.Malformed) -> None:
        raise state.BadEvent(ev.error)

    def _on_link(self, ev: model.KernelChanged) -> None:
        pass  # re-evaluated from the observation on every step

    def _on_hotplug(self, ev: model.Hotplug) -> None:
        if ev.interface in self.ctx.wan_tracks:
            self.wans.on_hotplug(ev)
        elif ev.interface in self.ctx.tunnels:
            self.paths.on_tunnel_hotplug(ev)

    def _on_wan_probe(self, ev: model.WanProbeResult) -> None:
        if self.wans.on_probe_result(ev):
            self.health.wan_answered(ev.wan, bool(ev.ok))

    # ------------------------------------------------ deadline

    def _part_deadlines(self) -> typing.List[float]:
        times = list(self.wans.deadlines())
        times.extend(self.health.deadlines())
        times.extend(self.paths.deadlines())
        times.extend(self.names.deadlines())
        return [t for t in times if t is not None]

    def _deadline(self, parts: typing.List[float]) -> typing.Optional[float]:
        if not self.ctx.managed():
            return None
        future = [t for t in parts + [self._next_check] if t > self.ctx.now]
        return min(future) if future else None

    # ------------------------------------------------ quiet steps
    # An idle tunnel's check finds the same counters as the last one: the
    # shell then hands over the very same objects (wg's read cache).  A
    # check that decided nothing and changed no state but the samples' times
    # is then repeated as only that, until the next deadline of any part or
    # a verdict that time alone brings (``Quiet.until``).  It does what the
    # full step would, at a fraction of its cost: tests/test_core_quiet.py
    # runs both side by side.

    def _quiet_after(self, obs: model.Observation, parts: typing.List[float],
                     due: typing.Optional[float]) -> typing.Optional[Quiet]:
        """The Quiet after a check that decided nothing, or None when the
        next step with the same observation might decide something."""
        if any(t <= self.ctx.now for t in parts):
            return None  # something waits on a condition checked each step
        until = self.health.quiet_until()
        if until is None:
            return None
        until = min([until, self.wans.quiet_until(), self.names.quiet_until()] + parts)
        return Quiet(wans=obs.wans, peers=obs.peers, tunnels=obs.tunnels, until=until,
                     deadline=min(parts, default=None), due=due)

    def _repeat(self, quiet: Quiet, obs: model.Observation, now: float) -> model.Decision:
        self.ctx.begin(obs, now)
        checking = now >= self._next_check
        if checking:
            self._next_check = now + self.ctx.check_interval()
        if quiet.due is not None and now < quiet.due < self._next_check:
            self._next_check = quiet.due
        self.health.refresh(checking)
        self._quiet = quiet
        deadline = self._next_check if quiet.deadline is None else min(self._next_check, quiet.deadline)
        return model.Decision(actions=(), deadline=deadline)

