"""Tunnel health: the monitor's verdict on each peer from its counters and
handshake, the probes that confirm it, and the recovery ladder with its
backoff."""

from __future__ import annotations

import math
import typing

from wgrouter import model
from wgrouter.core import names as wnames
from wgrouter.core import paths as wpaths
from wgrouter.core import state
from wgrouter.core import wan as wwan

# The verdict on a peer heard from by nobody for a keepalive interval: probe
# it through the tunnel.  WireGuard answers a keepalive with nothing (Linux
# drivers/net/wireguard/receive.c: an empty packet returns before
# wg_timers_data_received), so an idle tunnel gives no other evidence until
# its handshake is stale, 150 s on; one echo per keepalive interval bounds a
# silent failure by that interval plus a check and the probes.
QUIET = "quiet"
# A peer whose answers no longer reach it (our upstream dead, its own intact)
# retries its handshake every REKEY_TIMEOUT (5 s) with an initiation of 148 B
# (wireguard-go device/timers.go, Linux drivers/net/wireguard/timers.c): rx
# that such retries explain, without a handshake completing, is no answer.
INITIATION_BYTES = 148
REKEY_TIMEOUT = 5.0


class Health:
    """Monitors and recovers every ``state.PeerState``."""

    def __init__(self, ctx: state.Context, wans: wwan.Wans, names: wnames.Names, paths: wpaths.Paths):
        self.ctx, self.wans, self.names, self.paths = ctx, wans, names, paths

    def evidence(self) -> None:
        """Tunnel traffic received through a WAN is evidence that it works:
        rx growth (or a new handshake) of a peer whose path is on it, seen
        between two observations taken after the path was applied."""
        now = self.ctx.now
        for ps in self.ctx.peers.values():
            st = self.ctx.obs.peers.get(ps.peer.key)
            if st is None:
                continue
            mark, ps.rx_mark = ps.rx_mark, (st.rx, st.latest_handshake, now)
            if mark is None or ps.applied is None or ps.applied_at is None or mark[2] <= ps.applied_at:
                continue
            handshake = st.latest_handshake != mark[1] and st.latest_handshake > ps.applied_at
            grew = st.rx - mark[0]
            if ps.quiet_probe or ps.quiet_failed is not None:
                # a quiet peer in question: its handshake retries are no proof
                grew -= INITIATION_BYTES * (math.ceil(max(0.0, now - mark[2]) / REKEY_TIMEOUT) + 1)
            if grew > 0 or handshake:
                wt = self.ctx.wan_tracks.get(ps.applied.wan)
                if wt is not None:
                    wt.proven[model.family(ps.applied.address)] = now

    def check(self) -> None:
        now = self.ctx.now
        probed: typing.Set[str] = set()
        for ts in self.ctx.tunnels.values():
            for ps in self.ctx.tunnel_peers(ts):
                st = self.ctx.obs.peers.get(ps.peer.key)
                if st is None or ts.wan is None or ps.applied is None or not ts.present or ps.trial is not None:
                    # (a direct UDP try is judged by its own probe)
                    ps.sample = None if st is None else (st.rx, st.tx, now)
                    continue
                heard = self._heard(ps, st)
                verdict, evidence = self._judge(ps, st, heard)
                ps.sample = (st.rx, st.tx, now)
                if verdict == state.UP:
                    self._recovered(ps, evidence)
                elif verdict == state.SUSPECT:
                    self._suspect(ts, ps, evidence, probed)
                elif verdict == QUIET:
                    self._probe_quiet(ts, ps, evidence)
        # A WAN marked unhealthy (or unhealthy for one family) is probed
        # every check (cheap), so that its failback hold-down can start as
        # soon as it answers again.
        for wan in self.ctx.config.wans:
            wt = self.ctx.wan_tracks[wan.name]
            if wt.bad and not wt.mwan3_down and wt.up and self.wans.track_ips(wan):
                self.wans.probe(wan, probed, sorted(wt.bad))
        # A preferred WAN that would take a tunnel back is probed through
        # itself every check of its hold-down: failback needs its answer.
        for ts in self.ctx.tunnels.values():
            if ts.wan is None or not self.ctx.tunnel_peers(ts):
                continue
            for wan in self.ctx.config.wans:
                if wan.name == ts.wan:
                    break
                if self.ctx.wan_tracks[wan.name].up and self.paths.usable_for(ts, wan.name):
                    families = self.paths.proof_families(ts, wan)
                    if families:
                        self.wans.probe(wan, probed, families)

    def _heard(self, ps: state.PeerState, st: model.PeerStats) -> bool:
        """True if the far end answered since the last check: a handshake
        completed, or it sent more than its handshake retries explain.
        Keeps ``heard_at``."""
        since = max(ps.heard_at or 0.0, ps.applied_at or 0.0)
        if st.latest_handshake and st.latest_handshake > since:
            ps.heard_at = st.latest_handshake
            return True
        if ps.sample is None or st.rx < ps.sample[0]:
            return False
        rx0, _, t0 = ps.sample
        retries = INITIATION_BYTES * (math.ceil(max(0.0, self.ctx.now - t0) / REKEY_TIMEOUT) + 1)
        if st.rx - rx0 > retries:
            ps.heard_at = max(ps.heard_at or 0.0, t0)  # received at some moment after t0
            return True
        return False

    def _judge(self, ps: state.PeerState, st: model.PeerStats, heard: bool) -> typing.Tuple[str, str]:
        s = self.ctx.config.settings
        now = self.ctx.now
        age = now - st.latest_handshake if st.latest_handshake else None
        keepalive = ps.applied.keepalive if ps.applied else st.keepalive
        drx = dtx = 0
        elapsed = s.check_interval
        if ps.sample is not None:
            rx0, tx0, t0 = ps.sample
            if st.rx >= rx0 and st.tx >= tx0:  # counters restart with the device
                drx, dtx, elapsed = st.rx - rx0, st.tx - tx0, max(0.0, now - t0)
        # Keepalives sent in the interval, counting one more for the edges.
        allowance = state.KEEPALIVE_BYTES * (math.ceil(elapsed / keepalive) + 1) if keepalive else 0
        waiting = ps.quiet_probe and ps.probe_until is not None
        failed = ps.quiet_failed is not None and ps.applied is not None and ps.quiet_failed[0] == ps.applied.wan
        if drx > 0 and (heard or not (waiting or failed)):
            return state.UP, "received %d B" % drx
        if waiting:
            return "idle", "probe of a quiet peer out"
        if failed:
            return state.SUSPECT, ps.quiet_failed[1]
        if dtx > allowance:
            return state.SUSPECT, "sent %d B in %s, received nothing" % (dtx, state.fmt(elapsed))
        if age is not None and now < st.latest_handshake + s.handshake_timeout:
            quiet = self._quiet_for(ps, keepalive)
            if quiet is not None:
                return QUIET, "nothing received for %s with keepalive %ds" % (state.fmt(quiet), keepalive)
            return state.UP, "handshake %s ago" % state.fmt(age)
        if age is not None and keepalive:
            return state.SUSPECT, "handshake %s old with keepalive %ds" % (state.fmt(age), keepalive)
        if age is None and ps.applied_at is not None and now >= ps.applied_at + s.handshake_timeout:
            return state.SUSPECT, "no handshake %s after the path was applied" % state.fmt(now - ps.applied_at)
        return "idle", "no traffic"

    def _quiet_for(self, ps: state.PeerState, keepalive: int) -> typing.Optional[float]:
        """Seconds a peer with a keepalive and a probe target has not been
        heard from, once that is a keepalive interval and its last probe as
        old: at most one probe per interval.  None if none is due."""
        due, heard = self._quiet_due(ps, keepalive)
        if due is None or self.ctx.now < due:
            return None
        return self.ctx.now - heard

    def _quiet_due(self, ps: state.PeerState, keepalive: int):
        """(when the quiet peer's probe falls due, when it was last heard
        from); (None, None) for a peer that is never probed for quiet."""
        if not keepalive or not ps.peer.probe:
            return None, None
        heard = max([t for t in (ps.heard_at, ps.applied_at) if t is not None] or [self.ctx.now])
        since = max(heard, ps.quiet_probe_at if ps.quiet_probe_at is not None else heard)
        return since + keepalive, heard

    def quiet_until(self) -> typing.Optional[float]:
        """Until when a check of unchanged counters only moves the samples
        on: every peer is up with nothing out or pending (as ``_recovered``
        leaves it), and none reaches a verdict that time alone brings (a
        handshake too old, a quiet peer's echo).  None if that is not so."""
        s = self.ctx.config.settings
        until = math.inf
        for ts in self.ctx.tunnels.values():
            for ps in self.ctx.tunnel_peers(ts):
                if ps.state != state.UP or ps.probe_until is not None or ps.quiet_probe or ps.probe_failed \
                        or ps.quiet_failed is not None or ps.steps_done or ps.ladder or ps.trial is not None \
                        or ps.verify_at is not None or ps.evidence or ps.tried:
                    return None
                st = self.ctx.obs.peers.get(ps.peer.key)
                if st is None or ts.wan is None or ps.applied is None or not ts.present:
                    continue  # not judged: only its sample moves on
                if st.latest_handshake:
                    until = min(until, st.latest_handshake + s.handshake_timeout)
                elif ps.applied_at is not None:
                    until = min(until, ps.applied_at + s.handshake_timeout)
                due = self._echo_due(ts, ps)
                if due is not None:
                    until = min(until, due)
        return until

    def quiet_due(self) -> typing.Optional[float]:
        """The next moment a peer's echo for quiet falls due: the check is
        taken then rather than at its next turn."""
        dues = [self._echo_due(ts, ps) for ts in self.ctx.tunnels.values() for ps in self.ctx.tunnel_peers(ts)]
        return min([d for d in dues if d is not None and d > self.ctx.now], default=None)

    def _echo_due(self, ts: state.TunnelState, ps: state.PeerState) -> typing.Optional[float]:
        """When a check would send the peer its echo for quiet, counters
        unchanged: a peer on a path with a keepalive, a probe target, a
        handshake not too old and nothing out.  None for any other."""
        st = self.ctx.obs.peers.get(ps.peer.key)
        if st is None or not st.latest_handshake or ts.wan is None or not ts.present or ps.applied is None \
                or ps.probe_until is not None or ps.probe_failed or ps.trial is not None \
                or ps.quiet_failed is not None:
            return None
        if self.ctx.now >= st.latest_handshake + self.ctx.config.settings.handshake_timeout:
            return None
        return self._quiet_due(ps, ps.applied.keepalive)[0]

    def refresh(self, checking: bool) -> None:
        """What a step of unchanged counters does: the marks and (in a
        check) the samples move on to now."""
        now = self.ctx.now
        for ps in self.ctx.peers.values():
            st = self.ctx.obs.peers.get(ps.peer.key)
            if st is not None:
                ps.rx_mark = (st.rx, st.latest_handshake, now)
            if checking:
                ps.sample = None if st is None else (st.rx, st.tx, now)

    def _probe_quiet(self, ts: state.TunnelState, ps: state.PeerState, evidence: str) -> None:
        """One echo through the tunnel of a quiet peer; no WAN probe and no
        change of state unless it fails."""
        if ps.probe_until is not None or ps.probe_failed:
            return
        ps.evidence = evidence
        ps.probe_wan = ts.wan
        ps.quiet_probe = True
        ps.quiet_probe_at = self.ctx.now
        self._send_probe(ts, ps)

    def _send_probe(self, ts: state.TunnelState, ps: state.PeerState) -> None:
        s = self.ctx.config.settings
        self.ctx.out.append(model.Probe(tunnel=ps.peer.tunnel, peer=ps.peer.public_key, target=ps.peer.probe,
                                        source=ts.tunnel.source_for(ps.peer.probe), timeout=s.probe_timeout))
        ps.probe_until = self.ctx.now + s.probe_timeout + state.ANSWER_GRACE

    def _quiet_failed(self, ts: state.TunnelState, ps: state.PeerState, why: str) -> None:
        """A quiet peer's probe failed: suspect it (WAN probe, a second echo,
        then the ladder) until it is heard from again."""
        evidence = ps.evidence + why
        ps.quiet_failed = (ts.wan, evidence)
        self._suspect(ts, ps, evidence, set())

    def _suspect(self, ts: state.TunnelState, ps: state.PeerState, evidence: str, probed: typing.Set[str]) -> None:
        if ps.probe_until is not None or ps.probe_failed:
            return  # a verdict is already on its way
        kept = self.names.address(ps)[0]
        ps.state = state.RECOVERING if ps.steps_done else state.SUSPECT
        latest = self.names.address(ps)[0]
        if latest != kept:
            self.ctx.transition(ps.peer.tunnel, ps.peer.label, kept, latest, "%s; a suspect peer follows the "
                             "latest answer of %s" % (evidence, self.names.current_host(ps)), "resolve")
        if self.ctx.now < ps.backoff_until:
            return
        ps.evidence = evidence
        wan = self.ctx.config.wan(ts.wan)
        if self.wans.track_ips(wan):
            self.wans.probe(wan, probed, [self.paths.peer_family(ps)])
        ps.probe_wan = ts.wan
        if ps.peer.probe:
            self._send_probe(ts, ps)
        else:
            ps.evidence += "; no probe target"
            ps.probe_failed = True
            self._verdict(ts, ps)

    def _verdict(self, ts: state.TunnelState, ps: state.PeerState) -> None:
        """The peer's probe failed: take a ladder step unless the WAN probe is still out."""
        if ts.wan is None or ps.probe_wan != ts.wan:
            ps.probe_failed = False
            return
        wt = self.ctx.wan_tracks[ts.wan]
        if wt.probe_until or wt.retry:
            return
        ps.probe_failed = False
        if self.paths.bad_for(ts, ts.wan) and self.paths.other_wan(ts):
            # The WAN itself is dead: skip re-resolving and other candidates;
            # the WAN choice of this step moves every tunnel off it.
            error = wt.bad.get(self.paths.peer_family(ps), wt.probe_error)
            ps.candidate = 0
            self._ladder_done(ps, state.STEP_WAN, ps.evidence + "; wan probe of %s failed%s" % (ts.wan, error))
            ps.ladder = 0  # a fresh path: the ladder starts over on the new WAN
            return
        self.recover(ts, ps)

    def _recovered(self, ps: state.PeerState, evidence: str) -> None:
        ps.probe_failed = False
        ps.probe_until = None
        ps.quiet_probe = False
        ps.quiet_failed = None
        if ps.state in (state.SUSPECT, state.RECOVERING) or ps.steps_done:
            self.ctx.transition(ps.peer.tunnel, ps.peer.label, ps.last_step or ps.state, state.UP, evidence, "recovery")
        ps.state = state.UP
        ps.steps_done = 0
        ps.ladder = 0
        ps.last_step = None
        ps.backoff_until = 0.0
        ps.evidence = ""
        ps.tried.clear()
        ps.verify_at = None

    def _ladder(self, ps: state.PeerState) -> typing.List[str]:
        if self.names.on_relay(ps):
            # the relay's client reconnects by itself; the next relay, another WAN, a restart
            return [state.STEP_RELAY, state.STEP_WAN, state.STEP_RESTART]
        return ([state.STEP_RERESOLVE] + [state.STEP_CANDIDATE] * (len(ps.peer.endpoints) - 1)
                + [state.STEP_WAN, state.STEP_RESTART])

    def untried(self, ts: state.TunnelState, ps: state.PeerState) -> typing.List[str]:
        """The direct UDP paths of the peer not failed yet since its last
        success: "WAN candidate N" of every usable WAN and every candidate
        whose family that WAN carries."""
        out = []
        for wan in self.ctx.config.wans:
            st = self.ctx.obs.wans.get(wan.name)
            if not self.paths.usable_for(ts, wan.name) or st is None:
                continue
            for i in range(len(ps.peer.endpoints)):
                if st.carries(self.names.candidate_family(ps, i)) and (wan.name, i) not in ps.tried:
                    out.append("%s candidate %d" % (wan.name, i))
        return out

    def _next_untried(self, ts: state.TunnelState, ps: state.PeerState) -> typing.Optional[int]:
        """The next candidate after the current one not tried on the tunnel's WAN yet."""
        n = len(ps.peer.endpoints)
        st = self.ctx.obs.wans.get(ts.wan)
        for k in range(1, n):
            i = (ps.candidate + k) % n
            if (ts.wan, i) not in ps.tried and (st is None or st.carries(self.names.candidate_family(ps, i))):
                return i
        return None

    def _to_relay(self, ts: state.TunnelState, ps: state.PeerState) -> bool:
        """The last rung: every direct UDP path failed; the peer goes to a relay."""
        if ps.relay is not None or not ps.peer.relays or ts.wan is None or self.untried(ts, ps):
            return False
        tried = ", ".join("%s candidate %d" % t for t in sorted(ps.tried))
        ps.relay, ps.trial, ps.trial_fails = 0, None, 0
        ps.trial_at = self.ctx.now + self._try_interval(0)
        ps.force = state.STEP_RELAY
        relay = ps.peer.relays[0]
        self.ctx.transition(ps.peer.tunnel, ps.peer.label, state.TRANSPORT_UDP, "%s %s" % (
            state.TRANSPORT_RELAY, relay), "every UDP path failed (%s); relay through %s" % (tried, ts.wan),
            "transport")
        self._ladder_done(ps, "%s (%s via %s)" % (state.STEP_RELAY, relay, ts.wan), ps.evidence)
        ps.last_step = state.STEP_RELAY
        return True

    def recover(self, ts: state.TunnelState, ps: state.PeerState) -> None:
        s = self.ctx.config.settings
        # A peer with a relay tries each UDP path once on its way there: a
        # re-resolve only as the first step, no candidate tried on this WAN
        # already, and no restart before the relay.
        direct = bool(ps.peer.relays) and not self.names.on_relay(ps) and ts.wan is not None
        again = direct and (ps.steps_done > 0 or (ts.wan, ps.candidate) in ps.tried)
        if not self.names.on_relay(ps) and ts.wan is not None:
            ps.tried.add((ts.wan, ps.candidate))
            if self._to_relay(ts, ps):
                ps.ladder = 0
                return
        ladder = self._ladder(ps)
        for _ in range(len(ladder)):
            name = ladder[ps.ladder % len(ladder)]
            ps.ladder = (ps.ladder + 1) % len(ladder)
            if name == state.STEP_RESTART and ts.last_restart is not None \
                    and self.ctx.now - ts.last_restart < s.backoff_max:
                continue  # a restart is heavy: at most one per backoff_max
            if name == state.STEP_WAN and not self.paths.other_wan(ts):
                continue
            if direct and (name == state.STEP_RESTART or (name == state.STEP_RERESOLVE and again) or (
                    name == state.STEP_CANDIDATE and self._next_untried(ts, ps) is None)):
                continue
            break
        detail = name
        if name == state.STEP_RERESOLVE:
            host = self.names.current_host(ps)
            if host is not None:
                self.names.refresh_now(host)
            ps.force = name
        elif name == state.STEP_CANDIDATE and direct and self._next_untried(ts, ps) is not None:
            ps.candidate = self._next_untried(ts, ps)
            ps.force = name
            detail = "%s (candidate %d, %s)" % (name, ps.candidate, ps.peer.endpoints[ps.candidate])
        elif name == state.STEP_CANDIDATE:
            n = len(ps.peer.endpoints)
            st = self.ctx.obs.wans.get(ts.wan) if ts.wan else None
            for _ in range(n):
                ps.candidate = (ps.candidate + 1) % n
                if st is None or st.carries(self.names.candidate_family(ps, ps.candidate)):
                    break
            ps.force = name
            detail = "%s (candidate %d, %s)" % (name, ps.candidate, ps.peer.endpoints[ps.candidate])
        elif name == state.STEP_RELAY:
            ps.relay = (ps.relay + 1) % len(ps.peer.relays)
            ps.force = name
            detail = "%s (%s)" % (name, ps.peer.relays[ps.relay])
        elif name == state.STEP_WAN:
            count = ts.suspect_count.get(ts.wan, 0)
            ts.suspect[ts.wan] = self.ctx.now + min(s.backoff_max * 2 ** min(count, 30), state.SUSPECT_HOLD_MAX)
            ts.suspect_count[ts.wan] = count + 1
            ts.reason = "no reply through tunnel on %s" % ts.wan
            ps.candidate = 0
        elif name == state.STEP_RESTART:
            self.ctx.out.append(model.RestartTunnel(tunnel=ts.tunnel.name))
            ts.last_restart = self.ctx.now
            ts.reapply_at = self.ctx.now + state.RESTART_SETTLE
            for other in self.ctx.tunnel_peers(ts):
                other.applied = None
        self._ladder_done(ps, detail, ps.evidence)
        ps.last_step = name
        if direct and name != state.STEP_RESTART and ps.peer.probe:
            # each direct path is probed once it is out: the relay comes
            # after every one failed, not after a check and a backoff each
            ps.verify_at = self.ctx.now

    def _ladder_done(self, ps: state.PeerState, step: str, evidence: str) -> None:
        delay = self.ctx.backoff(ps.steps_done)
        ps.steps_done += 1
        ps.backoff_until = self.ctx.now + delay
        self.ctx.transition(ps.peer.tunnel, ps.peer.label, ps.last_step or ps.state, step,
                         "%s; next step not before %s" % (evidence.lstrip("; "), state.fmt(delay)), "recovery")
        ps.last_step = step.split(" (")[0]
        ps.state = state.RECOVERING

    # ------------------------------------------------ direct UDP while on a relay

    def _try_interval(self, fails: int) -> float:
        """Seconds to the next direct UDP try after ``fails`` failed ones."""
        s = self.ctx.config.settings
        base = max(s.failback_holddown, state.UDP_TRY_MIN)
        return min(base * 2.0 ** min(fails, 30), max(s.backoff_max, base))

    def verify(self) -> None:
        """The probe behind a ladder step on the way to the relay: sent as
        soon as the step's path is applied (after ``paths.evaluate``)."""
        for ts in self.ctx.tunnels.values():
            for ps in self.ctx.tunnel_peers(ts):
                at = ps.verify_at
                if at is None or ps.applied is None or ps.applied_at is None or ps.applied_at < at:
                    continue
                ps.verify_at = None
                if ts.wan is None or not ts.present or ps.trial is not None or ps.probe_until is not None \
                        or ps.probe_failed or self.names.on_relay(ps):
                    continue
                ps.probe_wan = ts.wan
                ps.evidence = "%s on %s" % (ps.peer.endpoints[ps.candidate], ts.wan)
                self._send_probe(ts, ps)

    def trials(self) -> None:
        """Peers on a relay try a direct UDP candidate now and then, and
        peers on a later candidate their preferred one: its path is applied
        with a probe behind it, the relay (or the candidate) is kept to go
        back to.  Only on a WAN usable for its failback hold-down."""
        now = self.ctx.now
        for ts in self.ctx.tunnels.values():
            if ts.wan is None or not ts.present:
                continue
            for ps in self.ctx.tunnel_peers(ts):
                if ps.trial is not None and (ps.probe_until is None or ps.probe_wan != ts.wan):
                    self._trial_done(ts, ps, False, "the try ended with a change of %s" % ts.wan)
                    continue
                if ps.trial is not None or ps.applied is None or ps.probe_until is not None or ps.probe_failed:
                    continue
                if self.names.on_relay(ps):
                    if ps.applied.transport != state.TRANSPORT_RELAY:
                        continue
                elif ps.candidate == 0 or ps.state != state.UP or ps.steps_done:
                    ps.trial_at = None
                    continue
                elif ps.trial_at is None:
                    # on a later candidate and healthy: its first try of the preferred one
                    ps.trial_fails = 0
                    ps.trial_at = now + self._try_interval(0)
                if ps.trial_at is None or now < ps.trial_at:
                    continue
                start = self.paths.hold_start(ts, ts.wan)
                hold = self.wans.holddown(ts.wan, now)
                if start is None or now - start < hold or not self.paths.usable_for(ts, ts.wan):
                    continue
                self._trial_start(ts, ps, "%s usable for %s (hold-down %s)" % (
                    ts.wan, state.fmt(now - start), state.fmt(hold)))

    def _fallback(self, ps: state.PeerState) -> str:
        """What a try goes back to when it fails: the relay, or the candidate."""
        if ps.relay is not None:
            return "%s %s" % (state.TRANSPORT_RELAY, ps.peer.relays[ps.relay])
        return "%s %s" % (state.TRANSPORT_UDP, ps.peer.endpoints[ps.candidate])

    def _trial_start(self, ts: state.TunnelState, ps: state.PeerState, why: str) -> None:
        s = self.ctx.config.settings
        now = self.ctx.now
        st = self.ctx.obs.wans.get(ts.wan)
        # on a relay: the candidates in turn, one per try; on a later
        # candidate: the preferred one; of a family the WAN carries
        n = len(ps.peer.endpoints) if ps.relay is not None else 1
        index = None
        for k in range(n):
            i = (ps.trial_fails + k) % n
            if st is None or st.carries(self.names.candidate_family(ps, i)):
                index = i
                break
        ps.trial = index
        path = self.paths.desired(ts, ps, self.ctx.config.wan(ts.wan)) if index is not None else None
        if path is None:
            ps.trial = None
            ps.trial_at = now + self._try_interval(ps.trial_fails)
            return
        self.paths.apply(ps, path)
        self.ctx.transition(ps.peer.tunnel, ps.peer.label, self._fallback(ps),
                            "%s %s (trying)" % (state.TRANSPORT_UDP, ps.peer.endpoints[index]),
                            "%s try: %s" % ("direct UDP" if ps.relay is not None else "preferred candidate", why),
                            "transport" if ps.relay is not None else "state")
        ps.probe_wan = ts.wan
        st = self.ctx.obs.peers.get(ps.peer.key)
        ps.trial_mark = (st.latest_handshake if st else 0.0, now)
        if ps.peer.probe:
            self.ctx.out.append(model.Probe(tunnel=ps.peer.tunnel, peer=ps.peer.public_key, target=ps.peer.probe,
                                            source=ts.tunnel.source_for(ps.peer.probe), timeout=s.probe_timeout))
            ps.probe_until = now + s.probe_timeout + state.ANSWER_GRACE
        else:
            # no probe target: a new handshake over UDP is the evidence
            ps.probe_until = now + state.TRIAL_WAIT

    def _trial_done(self, ts: state.TunnelState, ps: state.PeerState, ok: bool, evidence: str) -> None:
        """The try ended: on the tried candidate for good, or back to the relay (or the candidate)."""
        ps.probe_until = None
        index, ps.trial = ps.trial, None
        relay = ps.relay
        st = self.ctx.obs.peers.get(ps.peer.key)
        tried = ps.applied
        if ok and tried is not None and st is not None and st.endpoint != str(model.Endpoint(tried.address, tried.port)):
            # WireGuard took the peer's endpoint back (to the relay's socket):
            # what answered came that way
            ok, evidence = False, "%s, but not from there (endpoint %s)" % (evidence, st.endpoint)
        udp = "%s %s" % (state.TRANSPORT_UDP, ps.peer.endpoints[index])
        kind = "transport" if relay is not None else "state"
        if ok:
            fallback = self._fallback(ps)
            ps.relay, ps.trial_at, ps.trial_fails, ps.candidate = None, None, 0, index
            if relay is not None:
                self.ctx.out.append(model.StopRelay(tunnel=ps.peer.tunnel, peer=ps.peer.public_key))
                self.ctx.transition(ps.peer.tunnel, ps.peer.label, "%s (trying)" % udp, state.TRANSPORT_UDP,
                                    "%s on %s; relay %s stopped" % (evidence, ts.wan, ps.peer.relays[relay]), kind)
            else:
                self.ctx.transition(ps.peer.tunnel, ps.peer.label, "%s (trying)" % udp, udp,
                                    "%s on %s; %s left" % (evidence, ts.wan, fallback), kind)
            self._recovered(ps, evidence)
            return
        ps.trial_fails += 1
        delay = self._try_interval(ps.trial_fails)
        ps.trial_at = self.ctx.now + delay
        ps.force = "back from the try"
        self.ctx.transition(ps.peer.tunnel, ps.peer.label, "%s (trying)" % udp, self._fallback(ps),
                            "%s; next try in %s" % (evidence, state.fmt(delay)), kind)
        self.paths.evaluate(ts)

    def on_probe_result(self, ev: model.ProbeResult) -> None:
        ps = self.ctx.peers.get((ev.tunnel, ev.peer))
        if ps is None or ps.probe_until is None:
            return  # stale: the path changed since the probe was sent
        ps.probe_until = None
        quiet, ps.quiet_probe = ps.quiet_probe, False
        ts = self.ctx.tunnels[ps.peer.tunnel]
        if ps.probe_wan != ts.wan:
            return
        if ps.trial is not None:
            ps.probe_until = self.ctx.now  # _trial_done clears it
            self._trial_done(ts, ps, bool(ev.ok), "probe to %s %s" % (
                ps.peer.probe, "answered" if ev.ok else "failed%s" % state.detail(ev.error)))
            return
        if ev.ok:
            self.ctx.wan_tracks[ts.wan].proven[self.paths.peer_family(ps)] = self.ctx.now
            ps.heard_at = self.ctx.now
            self._recovered(ps, "probe to %s answered" % ps.peer.probe)
        elif quiet:
            self._quiet_failed(ts, ps, "; probe to %s failed%s" % (ps.peer.probe, state.detail(ev.error)))
        else:
            ps.evidence += "; probe to %s failed%s" % (ps.peer.probe, state.detail(ev.error))
            ps.probe_failed = True
            self._verdict(ts, ps)

    def _waiting_on(self, wan: str):
        for ts in self.ctx.tunnels.values():
            if ts.wan != wan:
                continue
            for ps in self.ctx.tunnel_peers(ts):
                if ps.probe_failed:
                    yield ts, ps

    def wan_answered(self, wan: str, ok: bool) -> None:
        """The WAN's probe answered: judge the peers that waited for it."""
        for ts, ps in list(self._waiting_on(wan)):
            if ok:
                ps.evidence += "; wan probe ok"
            self._verdict(ts, ps)

    def wan_unanswered(self, wan: str) -> None:
        """The WAN's probe got no answer in time: judge the waiting peers alone."""
        for ts, ps in list(self._waiting_on(wan)):
            ps.evidence += "; wan probe unanswered"
            self._verdict(ts, ps)

    def expire(self) -> None:
        """A peer probe without an answer in time failed."""
        now = self.ctx.now
        for ps in self.ctx.peers.values():
            if ps.probe_until is not None and now >= ps.probe_until and ps.trial is not None:
                ts = self.ctx.tunnels[ps.peer.tunnel]
                st, mark = self.ctx.obs.peers.get(ps.peer.key), ps.trial_mark
                if ps.peer.probe or st is None or mark is None:
                    self._trial_done(ts, ps, False, "probe to %s unanswered" % ps.peer.probe)
                else:
                    new = bool(st.latest_handshake) and st.latest_handshake != mark[0] and \
                        st.latest_handshake >= mark[1]
                    self._trial_done(ts, ps, new, "a handshake over UDP" if new else
                                     "no handshake within %s" % state.fmt(state.TRIAL_WAIT))
            elif ps.probe_until is not None and now >= ps.probe_until:
                ps.probe_until = None
                quiet, ps.quiet_probe = ps.quiet_probe, False
                ts = self.ctx.tunnels[ps.peer.tunnel]
                if quiet and ps.probe_wan == ts.wan:
                    self._quiet_failed(ts, ps, "; probe to %s unanswered" % ps.peer.probe)
                elif ps.probe_wan == ts.wan:
                    ps.evidence += "; probe to %s unanswered" % ps.peer.probe
                    ps.probe_failed = True
                    self._verdict(ts, ps)

    def deadlines(self) -> typing.Iterator[typing.Optional[float]]:
        """When a peer probe's answer is late, and the next direct UDP try of a peer on a relay."""
        for ps in self.ctx.peers.values():
            yield ps.probe_until
            if ps.trial is None and ps.trial_at is not None and (ps.relay is not None or ps.candidate):
                yield ps.trial_at
