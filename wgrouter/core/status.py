"""The core's status: one typed snapshot (model.Status) of every WAN,
tunnel and peer, and the recent transitions."""

from __future__ import annotations

import typing

from wgrouter import model
from wgrouter.core import names as wnames
from wgrouter.core import state
from wgrouter.core import wan as wwan


def build(ctx: state.Context, wans: wwan.Wans, names: wnames.Names, next_check: float,
          now: float, wall: typing.Optional[float] = None) -> model.Status:
    """The status at ``now``.  ``wall`` is the unix time at ``now``: absolute
    times (events, next check, backoff, last restart) are shown on it.
    Without it they are shown on the engine's own clock."""
    settings = ctx.config.settings
    shift = 0.0 if wall is None else wall - now
    by_wan = {}
    for i, wan in enumerate(ctx.config.wans):
        wt = ctx.wan_tracks[wan.name]
        by_wan[wan.name] = model.WanStatus(
            device=ctx.device(wan),
            up=wt.up,
            healthy=not wt.unhealthy,
            families=wans.families(wan.name),
            usable=wt.usable,
            preferred=i == 0,
            order=i,
            pinned=ctx.pinned == wan.name,
            usable_for=None if wt.usable_since is None else now - wt.usable_since,
            holddown=wans.holddown(wan.name, now),
            flaps=len(wt.changes),
            why=None if wt.usable else wt.why,
            active=any(ts.wan == wan.name for ts in ctx.tunnels.values()),
            active_for=sorted(ts.tunnel.name for ts in ctx.tunnels.values() if ts.wan == wan.name),
        )
    tunnels = {}
    for name, ts in ctx.tunnels.items():
        peers = {}
        for peer in ts.tunnel.peers:
            ps = ctx.peers.get(peer.key)
            if ps is None:
                continue
            address, source, endpoint = names.address(ps)
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
                transport=state.TRANSPORT_RELAY if names.on_relay(ps) else state.TRANSPORT_UDP,
                relay=str(peer.relays[ps.relay]) if names.on_relay(ps) else None,
            )
        tunnels[name] = model.TunnelStatus(
            wan=ts.wan,
            state=state.DOWN if ts.down or not ts.present else tunnel_state(ctx, ts),
            suspect_wans={w: until + shift for w, until in ts.suspect.items() if until > now},
            last_restart=None if ts.last_restart is None else ts.last_restart + shift,
            peers=peers,
        )
    return model.Status(
        time=now + shift,
        pinned=ctx.pinned,
        next_check=next_check + shift if ctx.managed() else None,
        check_interval=settings.check_interval,
        wans=by_wan,
        tunnels=tunnels,
        events=[
            model.EventStatus(time=t + shift, kind=tr.kind, tunnel=tr.tunnel, peer=tr.peer,
                              was=tr.was, now=tr.now, because=tr.because, text=str(tr))
            for t, tr in ctx.ring
        ],
    )


def tunnel_state(ctx: state.Context, ts: state.TunnelState) -> str:
    """The worst state of the tunnel's peers."""
    states = {ctx.peers[p.key].state for p in ts.tunnel.peers if p.key in ctx.peers}
    for worst in (state.RECOVERING, state.SUSPECT, state.DOWN, state.STARTING, state.UP):
        if worst in states:
            return worst
    return state.STARTING
