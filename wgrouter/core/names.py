"""Endpoint names: when each is asked (TTL, failures, confirmation of a
move), through which WAN, and what its answers mean for the peers using it."""

from __future__ import annotations

import math
import typing

from wgrouter import model
from wgrouter.core import state


class Names:
    """The ``state.HostState`` of every endpoint name the peers use."""

    def __init__(self, ctx: state.Context):
        self.ctx = ctx

    @staticmethod
    def on_relay(ps: state.PeerState) -> bool:
        """The peer's path is its TCP relay (not a direct UDP try meanwhile)."""
        return ps.relay is not None and ps.trial is None

    def endpoint(self, ps: state.PeerState) -> model.Endpoint:
        """Where the peer's path goes: its relay, else its current (or tried) candidate."""
        if self.on_relay(ps):
            return ps.peer.relays[ps.relay]
        return ps.peer.endpoints[ps.candidate if ps.trial is None else ps.trial]

    def current_host(self, ps: state.PeerState) -> typing.Optional[str]:
        """The host name of the peer's current candidate (or relay), None for an IP literal."""
        host = self.endpoint(ps).host
        return None if state.parse_ip(host) is not None else state.hostkey(host)

    def uses(self, ps: state.PeerState, host: str) -> bool:
        return any(state.hostkey(e.host) == host for e in ps.peer.endpoints + ps.peer.relays)

    def address(self, ps: state.PeerState):
        """(address, source, endpoint) of the peer's current candidate (or relay)."""
        endpoint = self.endpoint(ps)
        if self.on_relay(ps):
            source = "relay" if ps.relay == 0 else "relay %d" % ps.relay
        else:
            index = ps.candidate if ps.trial is None else ps.trial
            source = "config" if index == 0 else "candidate %d" % index
        ip = state.parse_ip(endpoint.host)
        if ip is not None:
            return str(ip), source, endpoint
        host = state.hostkey(endpoint.host)
        hs = self.ctx.hosts.get(host)
        if hs is not None and hs.address is not None:
            pin = ps.pin
            if pin is not None and pin[0] == host and pin[1] != hs.address and ps.state == state.UP and (
                    pin[1] in hs.answers or not self._settled(hs)):
                # A healthy peer keeps the address that works until the
                # change is confirmed (or while the name flips).
                return pin[1], "dns" if source == "config" else source, endpoint
            return hs.address, "dns" if source == "config" else source, endpoint
        if source == "config" and ps.adopted is not None:
            return ps.adopted, "kernel", endpoint
        return None, None, endpoint

    def _settled(self, hs: state.HostState) -> bool:
        """The name's latest answer is confirmed: DNS_CONFIRM_ANSWERS in a
        row chose it, and the name has not flipped back within DNS_FLIP_WINDOW."""
        flipping = hs.flipped_at is not None and self.ctx.now - hs.flipped_at < state.DNS_FLIP_WINDOW
        return hs.agree >= state.DNS_CONFIRM_ANSWERS and not flipping

    def candidate_family(self, ps: state.PeerState, index: int) -> int:
        """4 or 6: the family candidate ``index`` would use (a name not
        resolved yet counts as IPv4: A records are asked first)."""
        host = ps.peer.endpoints[index].host
        ip = state.parse_ip(host)
        if ip is not None:
            return ip.version
        hs = self.ctx.hosts.get(state.hostkey(host))
        if hs is not None and hs.address is not None:
            return model.family(hs.address)
        if index == 0 and ps.adopted is not None:
            return model.family(ps.adopted)
        return 4

    def path_family(self, ps: state.PeerState) -> int:
        """4 or 6: the family of where the peer's path goes (its relay, else its candidate)."""
        if not self.on_relay(ps):
            return self.candidate_family(ps, ps.candidate if ps.trial is None else ps.trial)
        host = self.endpoint(ps).host
        ip = state.parse_ip(host)
        if ip is not None:
            return ip.version
        hs = self.ctx.hosts.get(state.hostkey(host))
        return model.family(hs.address) if hs is not None and hs.address is not None else 4

    def on_resolved(self, ev: model.Resolved) -> None:
        host = state.hostkey(ev.host)
        hs = self.ctx.hosts.get(host)
        if hs is None:
            return
        hs.pending_until = None
        users = [ps for ps in self.ctx.peers.values() if self.uses(ps, host)]
        chosen = None
        for address in ev.addresses:
            why = None
            for ps in users or [None]:
                why = state.bad_address(address, ps.peer.allowed_ips if ps else ())
                if why:
                    tunnel, label = (ps.peer.tunnel, ps.peer.label) if ps else ("wgrouter", None)
                    self.ctx.transition(tunnel, label, "%s -> %s" % (host, hs.address or "unresolved"),
                                     "rejected %s" % address, "address is %s" % why, "resolve")
                    break
            if not why:
                chosen = str(state.parse_ip(address))
                break
        if chosen is None:
            self._failed(host, hs, "no usable address in %s" % list(ev.addresses))
            return
        s = self.ctx.config.settings
        now = self.ctx.now
        ttl = min(max(float(ev.ttl or 0), s.dns_ttl_min), s.dns_ttl_max)
        hs.ttl = ttl
        hs.refresh_at = now + self.ctx.scale(max(ttl, state.DNS_REFRESH_MIN), 0.0, state.DNS_JITTER)
        hs.failures = 0
        mine = [ps for ps in users if self.current_host(ps) == host]
        before = [self.address(ps)[0] for ps in mine]
        while hs.history and hs.history[0][0] <= now - state.DNS_FLIP_WINDOW:
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
            if hs.flipped_at is None or now - hs.flipped_at >= state.DNS_FLIP_WINDOW:
                for ps, old in zip(mine, before):
                    if ps.state == state.UP:
                        self.ctx.transition(ps.peer.tunnel, ps.peer.label, "%s -> %s" % (host, hs.address),
                                         "keeping %s" % old, "%s flips between %s and %s: a healthy peer keeps "
                                         "the address that works" % (host, hs.address, chosen), "resolve")
            hs.flipped_at = now
        hs.address = chosen
        hs.answers = tuple(a for a in (str(state.parse_ip(x)) for x in ev.addresses if state.parse_ip(x) is not None)
                           if not any(state.bad_address(a, ps.peer.allowed_ips) for ps in users))
        waiting = False
        for ps, old in zip(mine, before):
            new = self.address(ps)[0]
            if new != old:
                self.ctx.transition(ps.peer.tunnel, ps.peer.label, old or ps.adopted or "unresolved",
                                 new, "%s resolved (ttl %s)%s" % (host, state.fmt(ttl), "" if hs.agree == 1 else
                                                                  ", %d answers agree" % hs.agree), "resolve")
            elif new != chosen and hs.agree < state.DNS_CONFIRM_ANSWERS and not (
                    hs.flipped_at is not None and now - hs.flipped_at < state.DNS_FLIP_WINDOW):
                waiting = True
        if waiting:
            # a healthy peer waits for the change to be confirmed: ask again
            # a check interval later rather than a TTL later
            soon = now + self.ctx.scale(max(s.check_interval, state.DNS_REFRESH_MIN), 0.0, state.DNS_JITTER)
            hs.refresh_at = min(hs.refresh_at, soon)

    def on_resolve_failed(self, ev: model.ResolveFailed) -> None:
        host = state.hostkey(ev.host)
        hs = self.ctx.hosts.get(host)
        if hs is None:
            return
        hs.pending_until = None
        self._failed(host, hs, str(ev.error or "lookup failed"))

    def _failed(self, host: str, hs: state.HostState, error: str) -> None:
        s = self.ctx.config.settings
        hs.failures += 1
        # Retried soon at first, then no slower than the shortest TTL honoured:
        # a peer waiting for its first address must not wait minutes.
        delay = min(s.backoff_base * (2.0 ** min(hs.failures - 1, 30)), max(s.dns_ttl_min, s.backoff_base))
        hs.refresh_at = self.ctx.now + max(self.ctx.scale(delay, -state.BACKOFF_JITTER, 0.0), state.DNS_REFRESH_MIN)
        if hs.failures == 1:
            for ps in self.ctx.peers.values():
                if self.current_host(ps) == host:
                    self.ctx.transition(ps.peer.tunnel, ps.peer.label, hs.address or "unresolved",
                                     "keeping %s" % (hs.address or ps.adopted or "netifd's endpoint"),
                                     "%s: %s" % (host, error), "resolve")

    def resolves(self) -> None:
        now = self.ctx.now
        asked: typing.Set[str] = set()
        up = [w for w in self.ctx.config.wans if self.ctx.wan_tracks[w.name].up]
        for ts in self.ctx.tunnels.values():
            if ts.wan is None:
                continue
            for ps in self.ctx.tunnel_peers(ts):
                host = self.current_host(ps)
                if host is None or host in asked:
                    continue
                hs = self.ctx.hosts.setdefault(host, state.HostState())
                if hs.pending_until is not None or (hs.refresh_at is not None and now < hs.refresh_at):
                    continue
                asked.add(host)
                wan = self.ctx.config.wan(ts.wan)
                if hs.failures and len(up) > 1:
                    # The active WAN may be silently dead: after a failure ask
                    # through the next WAN, so a peer waiting for its first
                    # address gets one and can be monitored.
                    names = [w.name for w in up]
                    start = names.index(ts.wan) if ts.wan in names else 0
                    wan = up[(start + hs.failures) % len(up)]
                self.ctx.out.append(model.Resolve(host=host, wan=wan.name, device=self.ctx.device(wan),
                                               servers=tuple(wan.dns_servers)))
                hs.pending_until = now + state.RESOLVE_ANSWER_TIMEOUT

    def refresh_now(self, host: str) -> None:
        """Ask ``host`` again in this step (unless a question is out)."""
        hs = self.ctx.hosts.setdefault(host, state.HostState())
        if hs.pending_until is None:
            hs.refresh_at = None

    def expire(self) -> None:
        """A question without an answer in time failed."""
        now = self.ctx.now
        for hs in self.ctx.hosts.values():
            if hs.pending_until is not None and now >= hs.pending_until:
                hs.pending_until = None
                host = next((h for h, v in self.ctx.hosts.items() if v is hs), "?")
                self._failed(host, hs, "no answer")

    def deadlines(self) -> typing.Iterator[typing.Optional[float]]:
        """When a question is late or a name is due, for the names of
        peers on a WAN."""
        for ts in self.ctx.tunnels.values():
            if ts.wan is None:
                continue
            for ps in self.ctx.tunnel_peers(ts):
                host = self.current_host(ps)
                hs = self.ctx.hosts.get(host) if host else None
                if hs is not None:
                    yield hs.pending_until if hs.pending_until is not None else hs.refresh_at

    def quiet_until(self) -> float:
        """Until when no name's answer settles by time alone (the end of a flip window)."""
        ends = [hs.flipped_at + state.DNS_FLIP_WINDOW for hs in self.ctx.hosts.values() if hs.flipped_at is not None]
        return min([e for e in ends if e > self.ctx.now] or [math.inf])
