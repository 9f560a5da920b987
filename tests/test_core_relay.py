"""The decision core's last rung: a peer's TCP relay once every direct UDP
path failed, the low-rate tries of direct UDP while on it, and the return."""

import dataclasses

from tests.test_core import KEY, IP1, Rig, make_config, of, probe, resolved, transitions, wan_probe
from wgrouter import core, model

RELAY = model.Endpoint("203.0.113.5", 443)


def relay_config(relays=(RELAY,), **kw):
    cfg = make_config(**kw)
    (peer,) = cfg.tunnels[0].peers
    tunnel = dataclasses.replace(cfg.tunnels[0], peers=(dataclasses.replace(peer, relays=tuple(relays)),))
    return dataclasses.replace(cfg, tunnels=(tunnel,))


def fail_until(rig, done, limit=40):
    """Checks with traffic out and nothing back, every probe failing (a
    second after it went out, whether a check or a ladder step sent it),
    until ``done(decision)``; the decisions of the steps that took a ladder
    step."""
    steps = []
    d = rig.check(tx=5000)
    for _ in range(limit):
        if done(d):
            return steps, d
        if not of(d, model.Probe):
            d = rig.check(tx=5000)
            continue
        answers = [wan_probe(p.wan, True) for p in of(d, model.ProbeWan)]
        d = rig.step(*answers, probe(False), dt=1)
        steps.append(d)
    raise AssertionError("not reached in %d steps" % limit)


def on_relay(d):
    return any(t.now.startswith(core.TRANSPORT_RELAY) for t in transitions(d, "transport"))


def peer_status(rig):
    return rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]


def started(config):
    """A rig on ``config`` after its first step and its first check."""
    rig = Rig(config=config)
    rig.step()
    rig.check()
    return rig


def carrying(rig):
    """A check at which the peer's path carries: traffic both ways, a fresh handshake."""
    return rig.check(rx=500, tx=500, handshake=rig.t)


def carried(rig):
    """The path the peer was moved to carries at the next check: the peer is up there."""
    carrying(rig)
    assert peer_status(rig)["state"] == "up"


def until_try(rig, kind, limit=40):
    """Checks on a carrying path until the core tries a better one (a ``kind``
    transition to "... (trying)"); that check's decision."""
    for _ in range(limit):
        d = carrying(rig)
        if any(t.now.endswith("(trying)") for t in transitions(d, kind)):
            return d
    raise AssertionError("no %s try in %d checks" % (kind, limit))


def to_relay(**kw):
    kw.setdefault("backoff_max", 300.0)  # a WAN left stays suspect meanwhile
    rig = started(relay_config(backoff_base=1.0, check_interval=10.0, **kw))
    steps, d = fail_until(rig, on_relay, limit=80)
    return rig, steps, d


def test_the_relay_comes_only_after_every_candidate_on_every_wan_failed():
    rig, steps, d = to_relay()
    tried = set()
    for s in steps[:-1]:
        assert not on_relay(s)
        tried |= {(a.wan, a.port) for a in of(s, model.ApplyPath)}
    # both candidates (51820, 443) were applied on both WANs before
    assert {("wan", 51820), ("wan", 443), ("wanb", 51820), ("wanb", 443)} <= tried | {("wan", 51820)}
    # each UDP path once (a re-resolve only first), no restart on the way
    names = [t.now.split(" (")[0] for s in steps for t in transitions(s, "recovery")]
    assert names == [core.STEP_RERESOLVE, core.STEP_CANDIDATE, core.STEP_WAN, core.STEP_CANDIDATE,
                     core.STEP_RELAY], names
    assert not [a for s in steps for a in of(s, model.RestartTunnel)]
    (tr,) = transitions(d, "transport")
    assert (tr.was, tr.now) == ("udp", "tcp-relay 203.0.113.5:443")
    assert "every UDP path failed" in tr.because
    for pair in ("wan candidate 0", "wan candidate 1", "wanb candidate 0", "wanb candidate 1"):
        assert pair in tr.because
    (ap,) = of(d, model.ApplyPath)
    assert ap.transport == "tcp-relay" and (ap.address, ap.port) == ("203.0.113.5", 443)
    assert ap.wan == rig.engine.ctx.tunnels["wg0"].wan and 0 < ap.keepalive <= core.RELAY_KEEPALIVE
    st = peer_status(rig)
    assert st["transport"] == "tcp-relay" and st["relay"] == "203.0.113.5:443"
    assert st["endpoint"] == "203.0.113.5:443"


def test_on_the_way_to_the_relay_each_path_is_probed_as_soon_as_it_is_out():
    rig = started(relay_config(backoff_base=1.0, check_interval=10.0, backoff_max=300.0))
    t0 = rig.t
    steps, d = fail_until(rig, on_relay, limit=80)
    moved = [s for s in steps[:-1] if of(s, model.ApplyPath)]
    assert len(moved) >= 3
    for s in moved:  # the probe goes out with the path, not at a later check
        assert of(s, model.Probe), s
    # one check finds the failure; then a second (the probe's answer) per
    # step, not a check interval and a backoff each
    assert rig.t - t0 <= 10.0 + len(steps) * 1.0, rig.t - t0
    assert not of(d, model.Probe)  # the relay is judged by its own traffic


def test_without_a_relay_the_ladder_never_leaves_udp():
    rig = started(make_config(backoff_base=1.0, backoff_max=8.0, check_interval=10.0))
    for _ in range(40):
        d = rig.check(tx=5000)
        answers = [wan_probe(p.wan, True) for p in of(d, model.ProbeWan)]
        d = rig.step(*answers, probe(False), dt=1)
        assert not transitions(d, "transport")
        assert all(a.transport == "udp" for a in of(d, model.ApplyPath))
    assert peer_status(rig)["transport"] == "udp" and peer_status(rig)["relay"] is None


def test_a_wan_change_moves_the_relay_to_the_new_wan():
    rig, _, d = to_relay()
    (ap,) = of(d, model.ApplyPath)
    other = "wanb" if ap.wan == "wan" else "wan"
    rig.up[ap.wan] = False
    d = rig.step(dt=1)
    (moved,) = of(d, model.ApplyPath)
    assert moved.transport == "tcp-relay" and moved.wan == other and (moved.address, moved.port) == (
        "203.0.113.5", 443)
    assert not of(d, model.StopRelay)


def trial_rig():
    # tries from max(hold-down, UDP_TRY_MIN) = 30 s, doubling up to backoff_max
    rig, _, d = to_relay(failback_holddown=30.0, backoff_max=120.0)
    (ap,) = of(d, model.ApplyPath)
    carried(rig)  # the relay carries: the peer is up on it
    return rig, ap


def test_direct_udp_is_tried_at_a_low_rate_and_the_relay_kept_while_it_fails():
    rig, ap = trial_rig()
    started = rig.t
    d = until_try(rig, "transport")
    # not before the hold-down (30 s) and the floor between tries
    assert rig.t - started >= 30.0 - 10.0
    (udp,) = of(d, model.ApplyPath)
    assert udp.transport == "udp" and udp.wan == rig.engine.ctx.tunnels["wg0"].wan
    assert of(d, model.Probe)  # behind the path
    assert d.actions.index(udp) < d.actions.index(of(d, model.Probe)[0])
    assert not of(d, model.StopRelay)
    first = rig.t
    d = rig.step(probe(False), dt=1)
    (back,) = transitions(d, "transport")
    assert back.now == "tcp-relay 203.0.113.5:443" and "next try in" in back.because
    (relay,) = of(d, model.ApplyPath)
    assert relay.transport == "tcp-relay" and not of(d, model.StopRelay)
    assert peer_status(rig)["transport"] == "tcp-relay"
    d = until_try(rig, "transport")
    # a failed try doubles the wait for the next
    assert rig.t - first >= 2 * 30.0 - 10.0


def test_a_direct_handshake_on_a_healthy_wan_ends_the_relay():
    rig, ap = trial_rig()
    d = until_try(rig, "transport")
    (udp,) = of(d, model.ApplyPath)
    rig.stats[("wg0", KEY)] = dataclasses.replace(rig.stats[("wg0", KEY)], endpoint="%s:%d" % (
        udp.address, udp.port))
    d = rig.step(probe(True), dt=1)
    (tr,) = transitions(d, "transport")
    assert tr.now == "udp" and "relay 203.0.113.5:443 stopped" in tr.because
    assert of(d, model.StopRelay) == [model.StopRelay("wg0", KEY)]
    assert not of(d, model.ApplyPath)  # the tried path stays
    st = peer_status(rig)
    assert st["transport"] == "udp" and st["relay"] is None and st["state"] == "up"
    # no flapping: the next failure starts the UDP ladder again, no relay at once
    d = rig.check(tx=5000)
    d = rig.step(*[wan_probe(p.wan, True) for p in of(d, model.ProbeWan)], probe(False), dt=1)
    assert not transitions(d, "transport")
    assert [t.now for t in transitions(d, "recovery")] == [core.STEP_RERESOLVE]


def test_an_answer_that_came_over_the_relay_does_not_end_it():
    rig, ap = trial_rig()
    until_try(rig, "transport")
    # WireGuard roamed back to the relay's local socket: what answered came over it
    rig.stats[("wg0", KEY)] = dataclasses.replace(rig.stats[("wg0", KEY)], endpoint="127.0.0.1:40000")
    d = rig.step(probe(True), dt=1)
    (tr,) = transitions(d, "transport")
    assert tr.now.startswith("tcp-relay") and "not from there" in tr.because
    assert not of(d, model.StopRelay)


def test_no_try_while_the_wan_is_within_its_holddown():
    rig, ap = trial_rig()
    for _ in range(30):
        for track in rig.engine.ctx.wan_tracks.values():
            track.usable_since = rig.t  # just came back, every time
        d = carrying(rig)
        assert not [t for t in transitions(d, "transport") if "(trying)" in t.now]


def test_a_relay_name_is_resolved_like_an_endpoint_name():
    rig = started(relay_config(relays=(model.Endpoint("relay.example.net", 443),), backoff_base=1.0,
                               backoff_max=8.0, check_interval=10.0))

    def relay_resolve(d):
        return [r for r in of(d, model.Resolve) if r.host == "relay.example.net"]

    steps, d = fail_until(rig, on_relay)
    assert not of(d, model.ApplyPath)  # not resolved yet: nothing to apply
    assert relay_resolve(d)
    d = rig.step(resolved("relay.example.net", ["203.0.113.9"]), dt=1)
    (ap,) = of(d, model.ApplyPath)
    assert ap.transport == "tcp-relay" and (ap.address, ap.port) == ("203.0.113.9", 443)
    assert peer_status(rig)["endpoint_source"] == "relay"


def test_a_relay_removed_from_the_configuration_stops_and_stop_stops_it():
    rig, _, _ = to_relay()
    assert [a for a in rig.engine.stop() if isinstance(a, model.StopRelay)] == [model.StopRelay("wg0", KEY)]
    rig, _, _ = to_relay()
    rig.engine.reconfigure(make_config(backoff_base=1.0, backoff_max=8.0, check_interval=10.0), rig.t)
    d = rig.step(dt=1)
    assert of(d, model.StopRelay) == [model.StopRelay("wg0", KEY)]
    assert [a.transport for a in of(d, model.ApplyPath)] == ["udp"]
    assert peer_status(rig)["transport"] == "udp"


def test_relay_is_not_taken_for_an_ip_literal_endpoint_used_by_netifd():
    # the relay step never replaces a working path: a healthy peer stays on UDP
    rig = Rig(config=relay_config(), live=True)
    for _ in range(10):
        d = rig.check()
        assert not transitions(d, "transport")
    assert peer_status(rig)["transport"] == "udp"
    assert IP1 in peer_status(rig)["endpoint"]


def on_the_443_candidate():
    """A peer without a relay that found its way to candidate 1 (port 443) and is up there."""
    rig = started(make_config(backoff_base=1.0, check_interval=10.0, failback_holddown=30.0))
    fail_until(rig, lambda d: [a for a in of(d, model.ApplyPath) if a.port == 443])
    carried(rig)
    assert peer_status(rig)["candidate"] == 1
    return rig


def test_a_peer_on_a_later_candidate_goes_back_to_the_preferred_one_once_it_answers():
    rig = on_the_443_candidate()
    since = rig.t
    d = until_try(rig, "state")
    assert rig.t - since >= 30.0 - 10.0  # the hold-down first
    (udp,) = of(d, model.ApplyPath)
    assert udp.port == 51820 and of(d, model.Probe)
    # it fails: back to 443 at once, the next try later
    d = rig.step(probe(False), dt=1)
    (back,) = [t for t in transitions(d, "state") if "trying" in t.was]
    assert back.now == "udp %s:443" % IP1 and "next try in" in back.because
    assert [a.port for a in of(d, model.ApplyPath)] == [443]
    assert peer_status(rig)["candidate"] == 1
    d = until_try(rig, "state")
    (udp,) = of(d, model.ApplyPath)
    rig.stats[("wg0", KEY)] = dataclasses.replace(rig.stats[("wg0", KEY)], endpoint="%s:51820" % IP1)
    d = rig.step(probe(True), dt=1)
    (done,) = [t for t in transitions(d, "state") if "trying" in t.was]
    assert done.now == "udp %s:51820" % IP1 and "left" in done.because
    assert not of(d, model.ApplyPath) and not of(d, model.StopRelay)
    st = peer_status(rig)
    assert st["candidate"] == 0 and st["state"] == "up" and st["transport"] == "udp"
    # on the preferred candidate: no more tries
    for _ in range(20):
        d = carrying(rig)
        assert not [t for t in transitions(d) if "trying" in t.now]
