"""WAN health: link state from the kernel and hotplug, the WAN probes of each
address family and their verdicts, the hold-down and its flap damping."""

from __future__ import annotations

import math
import typing

from wgrouter import model
from wgrouter.core import state


class Wans:
    """The health of every configured WAN (its ``state.WanTrack``)."""

    def __init__(self, ctx: state.Context):
        self.ctx = ctx

    def on_hotplug(self, ev: model.Hotplug) -> None:
        """netifd's (or mwan3's) hotplug event of a configured WAN."""
        action, iface = ev.action, ev.interface
        wt = self.ctx.wan_tracks[iface]
        if action == "ifdown":
            wt.forced_down = True
            wt.set_why(state.DOWN, "hotplug ifdown")
        elif action in ("ifup", "ifupdate"):
            wt.forced_down = False
            if action != "ifup":
                return  # a DHCP renewal: address and gateway are compared anyway
            if wt.unhealthy:
                wt.healed = "it came up anew (ifup)"
            wt.unhealthy = wt.mwan3_down = False
            wt.bad.clear()
            wt.fails.clear()
            wt.link_at = self.ctx.now  # its first probe may find the gateway unresolved
            # The kernel flushes a device's routes when it goes down; a
            # quick bounce may have taken our host routes without us ever
            # observing the WAN down.
            for ts in self.ctx.tunnels.values():
                if ts.wan == iface:
                    for ps in self.ctx.tunnel_peers(ts):
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
                for family in self.probe_families(self.ctx.config.wan(iface)):
                    wt.answered[family] = self.ctx.now

    def holddown(self, wan: str, now: float) -> float:
        """failback_holddown, doubled for each loss of the WAN in the last
        FLAP_WINDOW beyond FLAP_FREE_LOSSES, never above holddown_max (nor
        below failback_holddown itself)."""
        s = self.ctx.config.settings
        wt = self.ctx.wan_tracks[wan]
        while wt.changes and wt.changes[0] <= now - state.FLAP_WINDOW:
            wt.changes.popleft()
        excess = max(0, len(wt.changes) - state.FLAP_FREE_LOSSES)
        damped = s.failback_holddown * 2 ** min(excess, 30)
        return max(s.failback_holddown, min(damped, s.holddown_max))

    def on_probe_result(self, ev: model.WanProbeResult) -> bool:
        """Take a ProbeWan's answer; False when the WAN is not (any more) configured."""
        wan, ok = ev.wan, bool(ev.ok)
        wt = self.ctx.wan_tracks.get(wan)
        if wt is None:
            return False
        family = ev.family
        if family in (4, 6):
            families = [family]
        else:  # a shell that does not say: the families that were asked
            families = sorted(wt.probe_until) or self.probe_families(self.ctx.config.wan(wan)) or [4]
        wt.probe_error = "" if ok else state.detail(ev.error)
        for f in families:
            self._round(wan, wt, f, ok, state.detail(ev.error))
        return True

    def _round(self, wan: str, wt: state.WanTrack, family: int, ok: bool, error: str) -> None:
        """Take one ProbeWan answer of one address family."""
        now = self.ctx.now
        sent = wt.probe_sent.get(family, now)
        wt.probe_until.pop(family, None)
        fam = self.fam_text(wan, family)
        if ok:
            wt.answered[family] = now
            wt.fails[family] = 0
            if family in wt.bad:
                del wt.bad[family]
                wt.healed_at[family] = now
                wt.healed = "%strack ips answer" % fam
                if not wt.unhealthy:
                    self.ctx.transition(wan, None, "IPv%d unhealthy" % family, wt.label, wt.healed, "wan")
            self._judge(wan, wt)
            return
        if wt.link_at is not None and sent < wt.link_at + state.LINK_SETTLE and wt.up:
            # Not evidence yet: right after a link change the gateway's
            # neighbour entry may still be resolving.
            wt.retry[family] = now + state.WAN_RETRY
            self.ctx.transition(wan, None, "probing", "retrying", "%strack ips silent %s after a link change%s; "
                             "retry in %s" % (fam, state.fmt(sent - wt.link_at), error,
                                              state.fmt(state.WAN_RETRY)), "wan")
            return
        proven = wt.proven.get(family)
        if proven is not None and proven >= sent:
            # A tunnel received through this WAN meanwhile: it carries traffic,
            # only its track IPs are silent (filtered, or down themselves).
            wt.fails[family] = 0
            self.ctx.transition(wan, None, "probing", wt.label, "%strack ips silent but a tunnel answered" % fam,
                             "wan")
            return
        wt.fails[family] = wt.fails.get(family, 0) + 1
        fresh = family not in wt.bad
        wt.bad[family] = error
        wt.healed_at.pop(family, None)
        self._judge(wan, wt)
        if fresh and not wt.unhealthy:
            # only this family is lost: tunnels of the other one stay
            self.ctx.transition(wan, None, wt.label, "IPv%d unhealthy" % family,
                             "IPv%d track ips do not answer%s" % (family, error), "wan")

    def _judge(self, wan: str, wt: state.WanTrack) -> None:
        """The WAN-wide verdict: unhealthy when every family it can probe
        failed (or while mwan3 says disconnected)."""
        if wt.mwan3_down:
            if wt.bad:
                wt.set_why("unhealthy", "mwan3 reports it disconnected; track ips do not answer%s" % wt.probe_error)
            return
        can = self.probe_families(self.ctx.config.wan(wan))
        dead = bool(can) and all(f in wt.bad for f in can)
        if dead and not wt.unhealthy:
            wt.unhealthy = True
            wt.set_why("unhealthy", "track ips do not answer%s" % wt.probe_error)
        elif not dead and wt.unhealthy:
            wt.unhealthy = False

    def update(self) -> None:
        now = self.ctx.now
        for wan in self.ctx.config.wans:
            wt = self.ctx.wan_tracks[wan.name]
            st = self.ctx.obs.wans.get(wan.name)
            obs_up = bool(st is not None and st.up)
            if not obs_up:
                wt.forced_down = False  # the kernel caught up with the hotplug event
                wt.set_why(state.DOWN, "not reported" if st is None else "no link, address or default route")
            up = obs_up and not wt.forced_down
            if not up and wt.up:
                # The kernel flushes a device's routes with it: our host
                # routes through this WAN are gone and must be put back.
                for ts in self.ctx.tunnels.values():
                    for ps in self.ctx.tunnel_peers(ts):
                        if ps.applied is not None and ps.applied.wan == wan.name:
                            ps.applied = None
                self._source_gone(wan.name, "%s went down" % wan.name)
            if up:
                address = (st.address, st.address6)
                changed = wt.up and wt.address is not None and address != wt.address
                if not wt.up or changed:
                    wt.link_at = now  # its first probe may find the gateway unresolved
                if changed:
                    self._source_gone(wan.name, "%s's address changed" % wan.name)
                wt.address = address
            else:
                wt.retry.clear()
            wt.up = up
            usable = up and not wt.unhealthy
            label = state.UP if usable else ("unhealthy" if up else state.DOWN)
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
                if label == state.UP:
                    because = "link, address and default route present" + (
                        "; " + wt.healed if wt.label == "unhealthy" and wt.healed else "")
                else:
                    because = wt.cause or wt.why
                self.ctx.transition(wan.name, None, wt.label, label, because, "wan")
                wt.label = label

    def _source_gone(self, wan: str, why: str) -> None:
        """Peers on other WANs set their endpoint again: a WireGuard peer
        keeps the local address its last packet arrived on as the source of
        what it sends, and a packet from the server may have come in through
        ``wan`` (still sending to our old address there).  The kernel drops
        such a source once the route goes out elsewhere
        (drivers/net/wireguard/socket.c, send4); wireguard-go keeps it and
        the interface it came in on unless sending fails with EINVAL
        (conn/bind_linux.go, send4), so with that address gone every packet
        fails with ENETUNREACH and nothing is counted as sent.  Setting the
        endpoint clears the cached source in both.  Only peers that left
        ``wan`` while it was up (or were started on another) can have it."""
        for ts in self.ctx.tunnels.values():
            for ps in self.ctx.tunnel_peers(ts):
                if wan not in ps.left:
                    continue
                ps.left.discard(wan)
                a = ps.applied
                if a is not None and a.wan != wan and a.transport == state.TRANSPORT_UDP:
                    ps.force = ps.force or "%s: a source address cached on it is gone" % why

    def families(self, wan: str) -> typing.List[str]:
        """["ipv4", "ipv6"]: the address families the WAN carries now."""
        st = self.ctx.obs.wans.get(wan)
        if st is None or not st.up:
            return []
        return [name for family, name in ((4, "ipv4"), (6, "ipv6")) if st.carries(family)]

    def track_ips(self, wan: model.Wan) -> typing.Tuple[str, ...]:
        """The track IPs this WAN can reach now: an IPv4 target says nothing
        about an uplink that carries only IPv6, and the other way round."""
        st = self.ctx.obs.wans.get(wan.name)
        if st is None:
            return tuple(wan.track_ips)
        return tuple(ip for ip in wan.track_ips if st.carries(model.family(ip)))

    def probe_families(self, wan: model.Wan) -> typing.List[int]:
        """The address families (4, 6) the WAN can be probed in now."""
        return sorted({model.family(ip) for ip in self.track_ips(wan)})

    def fam_text(self, wan: str, family: int) -> str:
        """"IPv6 " where the WAN has track IPs of both families, else ""."""
        families = {model.family(ip) for ip in self.ctx.config.wan(wan).track_ips}
        return "IPv%d " % family if len(families) > 1 else ""

    def probe(self, wan: model.Wan, probed: typing.Set[typing.Tuple[str, int]],
                   families: typing.Optional[typing.Iterable[int]] = None) -> None:
        """One ProbeWan per address family: of ``families`` that the WAN can
        be probed in (all of them when it can be in none of those), unless
        one is out already."""
        s = self.ctx.config.settings
        wt = self.ctx.wan_tracks[wan.name]
        can = self.probe_families(wan)
        wanted = can if families is None else ([f for f in families if f in can] or can)
        for f in wanted:
            if (wan.name, f) in probed or f in wt.probe_until:
                continue
            probed.add((wan.name, f))
            targets = tuple(ip for ip in self.track_ips(wan) if model.family(ip) == f)
            self.ctx.out.append(model.ProbeWan(wan=wan.name, device=self.ctx.device(wan), targets=targets,
                                            timeout=s.probe_timeout))
            wt.probe_until[f] = self.ctx.now + s.probe_timeout + state.ANSWER_GRACE
            wt.probe_sent[f] = self.ctx.now
            wt.retry.pop(f, None)

    def _confirmed(self, wt: state.WanTrack) -> bool:
        """The WAN's loss is more than one lost echo: a flap, for damping."""
        return not wt.up or wt.mwan3_down or any(wt.fails.get(f, 0) >= state.WAN_CONFIRM_ROUNDS for f in wt.bad)

    def retries(self) -> None:
        """Send the WAN probes that got no answer right after a link change again."""
        probed: typing.Set[typing.Tuple[str, int]] = set()
        for wan in self.ctx.config.wans:
            wt = self.ctx.wan_tracks[wan.name]
            due = sorted(f for f, at in wt.retry.items() if at <= self.ctx.now)
            if due:
                for f in due:
                    del wt.retry[f]
                self.probe(wan, probed, due)

    def expire(self, unanswered: typing.Callable[[str], None]) -> None:
        """Forget the WAN probes whose answer is late: no verdict, so the
        tunnels waiting on one are judged alone (``unanswered(wan)``, once
        no probe of the WAN is out any more)."""
        now = self.ctx.now
        for wan, wt in self.ctx.wan_tracks.items():
            late = [f for f, until in wt.probe_until.items() if now >= until]
            for f in late:
                del wt.probe_until[f]
            if late and not wt.probe_until:
                unanswered(wan)

    def deadlines(self) -> typing.Iterator[float]:
        """When an answer is late, and when a retry is due."""
        for wt in self.ctx.wan_tracks.values():
            yield from wt.probe_until.values()
            yield from wt.retry.values()

    def quiet_until(self) -> float:
        """Until when no WAN's hold-down shrinks by time alone (a loss leaving the flap window)."""
        ends = [at + state.FLAP_WINDOW for wt in self.ctx.wan_tracks.values() for at in wt.changes]
        return min([e for e in ends if e > self.ctx.now] or [math.inf])
