"""The engine's quiet steps: a check of unchanged counters is repeated as
only the move of the samples' times.  Two engines take the same generated
history, one with each unchanged part of the observation handed over as the
very object of the step before (as the shell does), one with fresh copies
every step (so it never takes a quiet step): their decisions and their
status must be the same at every step."""

import dataclasses
import random

from hypothesis import HealthCheck, given, settings, strategies as st

from tests.test_core import KEY, KEY2, IP1, Rig, make_config, of, probe, wan_probe
from wgrouter import model

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PEERS = (
    model.Peer(tunnel="wg0", section="office", public_key=KEY, endpoints=(model.Endpoint(IP1),),
               allowed_ips=("10.9.0.0/24",), keepalive=25, probe="10.9.0.1"),
    model.Peer(tunnel="wg0", section="home", public_key=KEY2, endpoints=(model.Endpoint("203.0.113.7"),),
               allowed_ips=("10.8.0.0/24",), keepalive=0, probe=None),
)


class FreshRig(Rig):
    """Hands the engine a copy of every part, every step."""

    def obs(self, events=()):
        o = super().obs(events)
        return dataclasses.replace(o, wans=dict(o.wans), peers=dict(o.peers),
                                   tunnels=None if o.tunnels is None else frozenset(set(o.tunnels)))


OPS = st.sampled_from(["wait"] * 4 + ["keepalive", "traffic", "tx_only", "handshake", "wan_down", "wan_up",
                                      "address", "jump", "break", "heal"])


def drive(rig, ops, seed):
    """Play ``ops`` on ``rig``; the (decision, status) of every step.  The
    probes of a step are answered in the next, as the far end is: answering
    until "break", silent until "heal"."""
    draw = random.Random(seed)
    seen, answers, healthy = [], [], True
    for op in ops:
        keys = [("wg0", k) for k in (KEY, KEY2) if draw.random() < 0.7] or [("wg0", KEY)]
        for key in keys:
            if op == "keepalive":
                rig.traffic(key, rx=32, tx=32)
            elif op == "traffic":
                rig.traffic(key, rx=900, tx=1200)
            elif op == "tx_only":
                rig.traffic(key, tx=1500)
            elif op == "handshake":
                rig.traffic(key, rx=92, tx=148, handshake=int(rig.t))
        if op in ("wan_down", "wan_up"):
            rig.up[draw.choice(("wan", "wanb"))] = op == "wan_up"
        elif op == "address":
            rig.addr["wan"] = "192.0.2.%d" % draw.randrange(2, 200)
        elif op in ("break", "heal"):
            healthy = op == "heal"
        # "wait": the loop's wake-ups at each deadline, up to a minute of them
        for _ in range(draw.randrange(1, 40) if op == "wait" else 1):
            if op == "jump":
                at = rig.t + draw.uniform(20, 200)
            else:
                d = seen[-1][0] if seen else None
                at = d.deadline if d is not None and d.deadline is not None else rig.t + 1.5
            d = rig.step(*answers, at=at)
            answers = [probe(healthy, a.peer) for a in of(d, model.Probe)]
            answers += [wan_probe(a.wan, healthy) for a in of(d, model.ProbeWan)]
            seen.append((d, rig.engine.snapshot(rig.t, wall=rig.t)))
    return seen


def rigs(cls):
    # a handshake timeout shorter than the default: its verdict is reached within a history
    return cls(config=make_config(peers=PEERS, check_interval=1.5, handshake_timeout=40), rng=random.Random(7))


@FUZZ
@given(st.lists(OPS, min_size=5, max_size=80), st.integers(0, 2 ** 32))
def test_a_quiet_step_decides_what_the_full_step_decides(ops, seed):
    shared, fresh = rigs(Rig), rigs(FreshRig)
    for i, (a, b) in enumerate(zip(drive(shared, ops, seed), drive(fresh, ops, seed))):
        assert a[0] == b[0], "step %d (%s): decisions differ" % (i, ops[:i + 1])
        assert a[1] == b[1], "step %d (%s): status differs" % (i, ops[:i + 1])


def test_an_idle_tunnel_is_checked_by_quiet_steps(monkeypatch):
    rig = rigs(Rig)
    rig.traffic(("wg0", KEY), rx=92, tx=148, handshake=int(rig.t))
    rig.traffic(("wg0", KEY2), rx=92, tx=148, handshake=int(rig.t))
    rig.step()
    full = []
    monkeypatch.setattr(rig.engine.health, "check", lambda f=rig.engine.health.check: full.append(1) or f())
    for _ in range(10):  # 15 s of a keepalive of 25 s: nothing comes or goes
        d = rig.step(at=rig.engine.next_check)
        assert not d.actions
    # the first check sees the counters unchanged since the handshake; the
    # rest repeat it
    assert len(full) == 1
    rig.traffic(("wg0", KEY), rx=32, tx=32)
    rig.step(at=rig.engine.next_check)
    assert len(full) == 2  # new counters: a full check


def test_a_quiet_peers_echo_goes_out_when_due_not_at_the_next_check():
    rig = rigs(Rig)
    d = rig.step()
    handshake = int(rig.t) + 1
    rig.traffic(("wg0", KEY), rx=92, tx=148, handshake=handshake)
    rig.traffic(("wg0", KEY2), rx=92, tx=148, handshake=handshake)
    probes = []
    for _ in range(30):  # a step at each deadline, as the loop takes them
        d = rig.step(at=d.deadline)
        probes = of(d, model.Probe)
        if probes:
            break
    # heard from at its handshake, keepalive 25 s: the echo at 25 s, not at
    # the first check after (up to 1.5 s x 1.05 later)
    assert [p.peer for p in probes] == [KEY] and rig.t == handshake + 25
