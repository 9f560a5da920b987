"""Paths: which WAN each tunnel uses (failover, proven failback, manual
switch), which endpoint candidate each peer uses, the path it should have
and the one applied."""

from __future__ import annotations

import dataclasses
import math
import typing

from wgrouter import model
from wgrouter.core import names as wnames
from wgrouter.core import state
from wgrouter.core import wan as wwan


class Paths:
    """The WAN of each ``state.TunnelState`` and the path of each ``state.PeerState``."""

    def __init__(self, ctx: state.Context, wans: wwan.Wans, names: wnames.Names):
        self.ctx, self.wans, self.names = ctx, wans, names

    def on_tunnel_hotplug(self, ev: model.Hotplug) -> None:
        """netifd's hotplug event of a managed tunnel."""
        action, iface = ev.action, ev.interface
        ts = self.ctx.tunnels[iface]
        if action == "ifdown":
            ts.ifdown = True
            for ps in self.ctx.tunnel_peers(ts):
                ps.applied = None
        elif action in ("ifup", "ifupdate"):
            # netifd (re)configured the device from UCI: its endpoints are
            # netifd's again, whatever we had set.
            ts.ifdown = False
            ts.reapply_at = None
            for ps in self.ctx.tunnel_peers(ts):
                ps.force = "tunnel %s" % action

    def update_peers(self) -> None:
        for ps in self.ctx.peers.values():
            st = self.ctx.obs.peers.get(ps.peer.key)
            if st is None:
                continue
            ps.stats = st
            if ps.applied is None and ps.adopted is None and ps.last_address is None:
                first = ps.peer.endpoints[0]
                ip = state.endpoint_ip(st.endpoint)
                if state.parse_ip(first.host) is None and ip and not state.bad_address(ip, ps.peer.allowed_ips):
                    ps.adopted = ip
            if ps.state == state.STARTING and st.latest_handshake and \
                    self.ctx.now - st.latest_handshake < self.ctx.config.settings.handshake_timeout:
                ps.state = state.UP

    def on_applied(self, ev: model.Applied) -> None:
        action = ev.action
        note = ev.note
        if not isinstance(action, model.ApplyPath):
            if isinstance(action, model.RemovePath) and (not ev.ok or note):
                # the peer may be gone from the configuration: its key names it
                self.ctx.transition(action.tunnel, action.peer[:8], "removing route to %s" % action.address,
                                 "removed" if ev.ok else "not removed",
                                 "; ".join(t for t in (ev.error, note) if t), "state")
            elif isinstance(action, model.RestartTunnel) and not ev.ok:
                self.ctx.transition(action.tunnel, None, "restarting", "not restarted", ev.error or "", "state")
            return
        ps = self.ctx.peers.get((action.tunnel, action.peer))
        if ps is None:
            return
        path = action
        applying = "applying %s via %s" % (model.Endpoint(path.address, path.port), path.wan)
        if ev.ok:
            if ps.applied == path:
                ps.apply_failures = 0
            if note:  # the applier gives each note once
                self.ctx.transition(action.tunnel, ps.peer.label, applying, "applied", note, "state")
            return
        if ps.applied != path:
            return  # an older path failed; a newer one is already out
        ps.applied = None
        ps.failed = path
        delay = self.ctx.backoff(ps.apply_failures)
        ps.apply_failures += 1
        ps.apply_retry_at = self.ctx.now + delay
        self.ctx.transition(action.tunnel, ps.peer.label, applying, "not applied", "%s; retry in %s%s" % (
            ev.error or "apply failed", state.fmt(delay), "; " + note if note else ""), "state")

    def on_reapply(self, ev: model.Reapply) -> None:
        for ts in self.ctx.tunnels.values():
            ts.reapply = "reapply requested"
            for ps in self.ctx.tunnel_peers(ts):
                ps.force = "reapply requested"

    def on_switch(self, ev: model.Switch) -> None:
        wan = ev.wan
        if wan is not None and wan not in self.ctx.wan_tracks:
            raise state.BadEvent("switch to unknown wan %r" % wan)
        if wan != self.ctx.pinned:
            self.ctx.transition("wgrouter", None, "pinned to %s" % (self.ctx.pinned or "none"),
                             "pinned to %s" % (wan or "none"), "manual switch", "state")
        self.ctx.pinned = wan

    def peer_family(self, ps: state.PeerState) -> int:
        """4 or 6: the family of the peer's path (applied, else its candidate's)."""
        if ps.applied is not None:
            return model.family(ps.applied.address)
        return self.names.path_family(ps)

    def tunnel_families(self, ts: state.TunnelState) -> typing.Set[int]:
        return {self.names.path_family(ps) for ps in self.ctx.tunnel_peers(ts)}

    def bad_for(self, ts: state.TunnelState, wan: str) -> bool:
        """The WAN failed its probe in a family this tunnel uses (or as a whole)."""
        wt = self.ctx.wan_tracks[wan]
        return wt.unhealthy or bool(set(wt.bad) & self.tunnel_families(ts))

    def usable_for(self, ts: state.TunnelState, wan: str) -> bool:
        return self.ctx.wan_tracks[wan].usable and not self.bad_for(ts, wan)

    def other_wan(self, ts: state.TunnelState) -> bool:
        return any(w.name != ts.wan and self.usable_for(ts, w.name) and ts.suspect.get(w.name, 0.0) <= self.ctx.now
                   for w in self.ctx.config.wans)

    def proof_families(self, ts: state.TunnelState, wan: model.Wan) -> typing.List[int]:
        """The families whose track IPs must answer through ``wan`` before
        ``ts`` fails back onto it: the tunnel's own where the WAN has track
        IPs of them, else any it has; none without track IPs (then link,
        address and default route are all the evidence there is)."""
        can = self.wans.probe_families(wan)
        return [f for f in can if f in self.tunnel_families(ts)] or can

    def hold_start(self, ts: state.TunnelState, wan: str) -> typing.Optional[float]:
        """When the WAN's hold-down started for this tunnel: it became usable,
        or the tunnel's family on it answered again, whichever is later."""
        wt = self.ctx.wan_tracks[wan]
        if wt.usable_since is None:
            return None
        healed = [wt.healed_at[f] for f in self.tunnel_families(ts) if f in wt.healed_at]
        return max([wt.usable_since] + healed)

    def _failback_ready(self, ts: state.TunnelState, wan: str) -> typing.Tuple[bool, str]:
        """(ready, why): the hold-down is over and the WAN's track IPs of the
        tunnel's family answered through it since the hold-down started."""
        now = self.ctx.now
        start = self.hold_start(ts, wan)
        if start is None:
            return False, ""
        hold = self.wans.holddown(wan, now)
        if now - start < hold:
            return False, ""
        wt = self.ctx.wan_tracks[wan]
        families = self.proof_families(ts, self.ctx.config.wan(wan))
        if any(wt.answered.get(f, -math.inf) < start for f in families):
            return False, ""
        proof = ""
        if families:
            proof = "; its %strack ips answer" % (self.wans.fam_text(wan, families[0]) if len(families) == 1 else "")
        return True, "%s usable for %s (hold-down %s)%s" % (wan, state.fmt(now - start), state.fmt(hold), proof)

    def _choose(self, ts: state.TunnelState) -> typing.Tuple[typing.Optional[str], str]:
        now = self.ctx.now
        wans = [w.name for w in self.ctx.config.wans]
        up = [w for w in wans if self.ctx.wan_tracks[w].up]
        if not up:
            return None, "no wan is up (%s)" % ", ".join(
                "%s %s" % (w, self.ctx.wan_tracks[w].why) for w in wans) if wans \
                else "no wan configured"
        # A WAN without the address family of any endpoint candidate (an
        # IPv6-only peer on an IPv4-only uplink) cannot carry the tunnel:
        # it is a choice only when no other WAN can.
        up = [w for w in up if self._carries(ts, w)] or up
        if self.ctx.pinned in up:
            return self.ctx.pinned, "manual switch"
        for w in list(ts.suspect):
            if ts.suspect[w] <= now:
                del ts.suspect[w]
        suspect, shared = self._suspects(ts)
        good = [w for w in up if self.usable_for(ts, w) and w not in suspect] or \
            [w for w in up if self.usable_for(ts, w)] or up
        cur = ts.wan
        if cur is not None and cur in good:
            for best in good:
                if self.ctx.order(best) >= self.ctx.order(cur):
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
        track = self.ctx.wan_tracks[cur]
        return choice, "%s is %s" % (cur, track.why if not track.usable else "not preferred")

    def _suspects(self, ts: state.TunnelState):
        """WANs the tunnel avoids: its own suspects, and those of any tunnel
        with a peer at one of its endpoint addresses.  The kernel has one
        host route (and, with mwan3, one rule) per address, so such tunnels
        must ride the same WAN.  Returns (suspects, {wan: why, for the
        shared ones})."""
        suspect = dict(ts.suspect)
        shared: typing.Dict[str, str] = {}
        mine = {ps.applied.address for ps in self.ctx.tunnel_peers(ts) if ps.applied}
        for other in self.ctx.tunnels.values():
            if other is ts or not mine:
                continue
            common = mine & {ps.applied.address for ps in self.ctx.tunnel_peers(other) if ps.applied}
            for w, until in other.suspect.items():
                if common and until > self.ctx.now and w not in suspect:
                    suspect[w] = until
                    shared[w] = "%s left %s, and the endpoint address %s is one route for both" % (
                        other.tunnel.name, w, min(common))
        return suspect, shared

    def evaluate(self, ts: state.TunnelState) -> None:
        peers = self.ctx.tunnel_peers(ts)
        if not peers:
            return
        now = self.ctx.now
        name = ts.tunnel.name
        if self.ctx.obs.tunnels is not None:
            ts.in_kernel = name in self.ctx.obs.tunnels
        present = not ts.ifdown and ts.in_kernel
        if present and not ts.present:
            self.ctx.transition(name, None, state.DOWN, ts.wan or "none", "tunnel %s is back" % name, "state")
            for ps in peers:
                ps.force = ps.force or "tunnel %s is back" % name
        elif ts.present and not present:
            self.ctx.transition(name, None, ts.wan or "none", state.DOWN,
                             "hotplug ifdown" if ts.ifdown else "device %s is gone" % name, "state")
        ts.present = present
        choice, because = self._choose(ts)
        if choice is None:
            if not ts.down:
                self.ctx.transition(ts.tunnel.name, None, ts.wan or "none", state.DOWN, because, "state")
            ts.down = True
            ts.wan = None
            for ps in peers:
                ps.state = state.DOWN
                ps.probe_until, ps.probe_failed = None, False
            return
        if choice != ts.wan or ts.reapply:
            prior = ts.last_wan
            if prior is None or choice == prior:
                kind = "state"
            else:
                kind = "failback" if self.ctx.order(choice) < self.ctx.order(prior) else "failover"
            was = ts.wan or (state.DOWN if ts.down else "none")
            self.ctx.transition(ts.tunnel.name, None, was, choice, ts.reapply or because, kind)
            if choice != ts.wan:
                for ps in peers:
                    ps.probe_until, ps.probe_failed = None, False
                    if ps.peer.relays and ps.relay is None and (choice, ps.candidate) in ps.tried:
                        # on its way to the relay: a candidate not failed on this WAN yet
                        ps.candidate = next((i for i in range(len(ps.peer.endpoints))
                                             if (choice, i) not in ps.tried), ps.candidate)
                    if ps.state == state.DOWN:
                        ps.state = state.STARTING
                    if not ts.reason:
                        ps.ladder = 0  # a new path: recovery starts over (after the
                        # ladder's own "another WAN" it continues with the next step)
            ts.wan, ts.last_wan, ts.down, ts.reapply = choice, choice, False, None
        ts.reason = None
        if not present:
            for ps in peers:
                ps.state = state.DOWN if ps.state != state.STARTING else ps.state
            return
        if ts.reapply_at is not None:
            if now < ts.reapply_at:
                return
            ts.reapply_at = None
        wan = self.ctx.config.wan(choice)
        st = self.ctx.obs.wans.get(choice)
        address = ", ".join(a for a in (st.address, st.address6) if a) if st is not None else None
        if address and ts.wan_address and address != ts.wan_address:
            for ps in peers:
                ps.force = ps.force or "%s address changed %s -> %s" % (choice, ts.wan_address, address)
        ts.wan_address = address or ts.wan_address
        # which peers the kernel has is known whenever its tunnels are
        have_stats = self.ctx.obs.tunnels is not None or bool(self.ctx.obs.peers)
        for ps in peers:
            if have_stats and ps.peer.key not in self.ctx.obs.peers:
                continue  # not configured in the kernel: `wg set` would create it
            desired = self.desired(ts, ps, wan)
            if desired is None:
                continue
            if desired == ps.applied and not ps.force:
                continue
            if desired == ps.failed and now < ps.apply_retry_at and not ps.force:
                continue
            self.apply(ps, desired)

    def desired(self, ts: state.TunnelState, ps: state.PeerState, wan: model.Wan) -> typing.Optional[model.ApplyPath]:
        """The path the peer should have on ``wan``: to its candidate (or
        the candidate tried meanwhile), or to its relay while on one."""
        st = self.ctx.obs.wans.get(wan.name)
        relay = self.names.on_relay(ps)
        if st is not None and st.up and ps.relay is None:
            self._fit_candidate(ps, wan.name, st)
        address, _, endpoint = self.names.address(ps)
        if address is None:
            return None
        family = model.family(address)
        if st is not None and st.up and not st.carries(family):
            return None  # _fit_candidate found none this WAN carries; said so
        gateway = None if st is None else st.gateway6 if family == 6 else st.gateway
        keepalive = wan.keepalive if wan.keepalive is not None else ps.peer.keepalive
        if relay:
            keepalive = min(keepalive or state.RELAY_KEEPALIVE, state.RELAY_KEEPALIVE)
        return model.ApplyPath(
            tunnel=ps.peer.tunnel, peer=ps.peer.public_key, wan=wan.name, device=self.ctx.device(wan),
            gateway=gateway, address=address, port=endpoint.port,
            keepalive=keepalive,
            table=wan.table if self.ctx.config.settings.mwan3 else None,
            transport=state.TRANSPORT_RELAY if relay else state.TRANSPORT_UDP)

    def _carries(self, ts: state.TunnelState, wan: str) -> bool:
        st = self.ctx.obs.wans.get(wan)
        if st is None:
            return True  # not observed yet: judged as before
        return any(st.carries(self.names.candidate_family(ps, i))
                   for ps in self.ctx.tunnel_peers(ts) for i in range(len(ps.peer.endpoints)))

    def _fit_candidate(self, ps: state.PeerState, wan: str, st: model.WanState) -> None:
        """Move the peer to a candidate whose address family ``wan`` carries."""
        family = self.names.candidate_family(ps, ps.candidate)
        if st.carries(family):
            ps.no_family = None
            return
        for i in range(len(ps.peer.endpoints)):
            if st.carries(self.names.candidate_family(ps, i)):
                self.ctx.transition(ps.peer.tunnel, ps.peer.label, "candidate %d (%s)" % (
                    ps.candidate, ps.peer.endpoints[ps.candidate]), "candidate %d (%s)" % (
                    i, ps.peer.endpoints[i]), "%s has no IPv%d path" % (wan, family), "state")
                ps.candidate = i
                ps.no_family = None
                return
        if ps.no_family != wan:
            ps.no_family = wan
            self.ctx.transition(ps.peer.tunnel, ps.peer.label, ps.state, "not applied",
                             "%s has no IPv%d path and no other endpoint candidate" % (wan, family), "state")

    def apply(self, ps: state.PeerState, path: model.ApplyPath) -> None:
        host = self.names.current_host(ps)
        ps.pin = (host, path.address) if host is not None else None
        self.ctx.out.append(path)
        if ps.last_address is not None and ps.last_address != path.address and ps.last_table == path.table:
            ps.routes.discard((ps.last_address, ps.last_table))  # the shell deletes it
        ps.routes.add((path.address, path.table))
        tracks = self.ctx.wan_tracks
        if ps.last_wan is None:  # started: where the last daemon had it is not known
            ps.left = {w for w, wt in tracks.items() if w != path.wan and wt.up}
        elif ps.last_wan != path.wan and tracks[ps.last_wan].up:
            ps.left.add(ps.last_wan)
        ps.left.discard(path.wan)
        ps.last_wan = path.wan
        ps.applied, ps.applied_at, ps.failed, ps.force = path, self.ctx.now, None, None
        ps.last_address, ps.last_table = path.address, path.table
        if ps.state == state.DOWN:
            ps.state = state.STARTING

    def remove_paths(self, ps: state.PeerState) -> typing.List[model.Action]:
        out: typing.List[model.Action] = []
        if ps.relay is not None:
            out.append(model.StopRelay(tunnel=ps.peer.tunnel, peer=ps.peer.public_key))
        out.extend(model.RemovePath(tunnel=ps.peer.tunnel, peer=ps.peer.public_key, address=address, table=table)
                   for address, table in sorted(ps.routes, key=lambda r: (r[0], r[1] or 0)))
        ps.routes.clear()
        ps.applied = None
        return out

    def deadlines(self) -> typing.Iterator[typing.Optional[float]]:
        """Apply retries, restarted tunnels' settle time, suspect marks
        running out, and the end of the hold-down of the WAN a tunnel would
        fail back to."""
        now = self.ctx.now
        for ps in self.ctx.peers.values():
            if ps.failed is not None and ps.applied is None:
                yield ps.apply_retry_at
        for ts in self.ctx.tunnels.values():
            if not self.ctx.tunnel_peers(ts):
                continue
            yield ts.reapply_at
            yield from ts.suspect.values()
            if ts.wan is not None:
                for wan in self.ctx.config.wans:
                    if wan.name == ts.wan:
                        break
                    start = self.hold_start(ts, wan.name) if self.usable_for(ts, wan.name) else None
                    if start is not None:
                        yield start + self.wans.holddown(wan.name, now)
                        break
