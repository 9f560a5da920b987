"""Table-driven tests of the pure decision core: no root, no sockets, no clock."""

import dataclasses
import json
import random

import pytest

from wgrouter import core, model

T0 = 1_700_000_000.0  # unix time: handshake ages are computed against it
KEY = "PEER1KEYaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa="
KEY2 = "PEER2KEYbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb="
IP1 = "198.51.100.10"
GW = {"wan": "192.0.2.1", "wanb": "100.64.0.1"}
ADDR = {"wan": "192.0.2.2", "wanb": "100.64.0.2"}
DEV = {"wan": "eth1", "wanb": "wwan0"}
GW6 = {"wan": "fe80::1", "wanb": "fe80::a"}
ADDR6 = {"wan": "2001:db8:1::2", "wanb": "2001:db8:2::2"}
IP6 = "2001:db8:100::10"


def make_config(endpoints=(model.Endpoint(IP1), model.Endpoint(IP1, 443)), probe="10.9.0.1", peers=None,
                wans=None, **settings):
    if peers is None:
        peers = (model.Peer(tunnel="wg0", section="office", public_key=KEY, endpoints=tuple(endpoints),
                            allowed_ips=("10.9.0.0/24",), keepalive=0, probe=probe),)
    if wans is None:
        wans = (
            model.Wan("wan", "eth1", track_ips=("192.0.2.254", "192.0.2.253"), dns_servers=("192.0.2.53",),
                      table=1),
            model.Wan("wanb", "wwan0", keepalive=25, track_ips=("100.64.0.254",), dns_servers=("100.64.0.53",),
                      table=2),
        )
    return model.Config(settings=model.Settings(**settings), wans=wans,
                        tunnels=(model.Tunnel("wg0", peers=peers, probe_source="10.9.0.2"),) if peers else ())


class Rig:
    """Drives an Engine the way the shell does, with a hand-made kernel."""

    def __init__(self, config=None, rng=None, stats=None, live=False, **kw):
        self.live = live  # every peer handshakes and gets replies on every step
        self.strict = True
        self.config = config or make_config(**kw)
        self.t = T0
        self.up = {w.name: True for w in self.config.wans}
        self.v6 = set()  # WANs that also carry IPv6
        self.no4 = set()  # WANs without IPv4
        self.addr = dict(ADDR)
        self.tunnels = frozenset(t.name for t in self.config.tunnels)  # devices wg show lists; None = wg failed
        self.stats = stats if stats is not None else {
            p.key: model.PeerStats(endpoint=None, latest_handshake=0, rx=0, tx=0, keepalive=0)
            for p in self.config.peers()}
        self.engine = core.Engine(self.config, self.t, rng=rng)
        # {wan: ok}: the WAN probes of one step are answered so in the next
        # (as the shell would); None = tests answer them by hand
        self.wan_ok = None
        self._answers = []
        self._last = None

    def obs(self, events=()):
        wans = {}
        for w in self.config.wans:
            up4 = self.up[w.name] and w.name not in self.no4
            up6 = self.up[w.name] and w.name in self.v6
            wans[w.name] = model.WanState(
                w.name, DEV.get(w.name, w.device), up4 or up6,
                gateway=GW.get(w.name) if up4 else None, address=self.addr.get(w.name) if up4 else None,
                up6=up6, gateway6=GW6.get(w.name) if up6 else None,
                address6=ADDR6.get(w.name) if up6 else None,
                up4=None if up4 == (up4 or up6) else up4)
        # Unchanged parts are the very objects of the last observation, as
        # the shell hands them over (wg's read cache, netlink dumped only on
        # a change): the engine's quiet steps see them as unchanged.
        if self._last is not None and wans == self._last.wans:
            wans = self._last.wans
        peers = dict(self.stats)
        if self._last is not None and peers == self._last.peers:
            peers = self._last.peers
        self._last = model.Observation(wans=wans, peers=peers, tunnels=self.tunnels, events=tuple(events))
        return self._last

    def step(self, *events, at=None, dt=0.0):
        self.t = at if at is not None else self.t + dt
        if self.live:
            for key in self.stats:
                self.traffic(key, rx=100, tx=100, handshake=int(self.t))
        answers, self._answers = self._answers, []
        d = self.engine.step(self.obs(tuple(answers) + events), self.t)
        if self.wan_ok is not None:
            self._answers = [model.Event("wan_probe", {"wan": a.wan, "ok": self.wan_ok.get(a.wan, True),
                                                       "family": model.family(a.targets[0])})
                             for a in of(d, model.ProbeWan)]
        if self.strict:  # an exception inside the engine must not hide as an ignored event
            assert not [t for t in transitions(d) if t.now == "ignored"], d
        return d

    def traffic(self, key=("wg0", KEY), rx=0, tx=0, handshake=None):
        st = self.stats[key]
        self.stats[key] = dataclasses.replace(
            st, rx=st.rx + rx, tx=st.tx + tx,
            latest_handshake=st.latest_handshake if handshake is None else handshake)

    def check(self, **traffic):
        """Advance to the next monitor check, with some traffic first."""
        if traffic:
            self.traffic(**traffic)
        return self.step(at=self.engine.next_check)


def of(decision, kind):
    return [a for a in decision.actions if isinstance(a, kind)]


def transitions(decision, kind=None):
    return [a for a in of(decision, model.Transition) if kind is None or a.kind == kind]


def hotplug(action, iface):
    return model.Event("hotplug", {"action": action, "interface": iface})


def probe(ok, key=KEY):
    return model.Event("probe", {"tunnel": "wg0", "peer": key, "ok": ok})


def wan_probe(wan, ok):
    return model.Event("wan_probe", {"wan": wan, "ok": ok})


def resolved(host, addresses, ttl=300, wan="wan"):
    return model.Event("resolved", {"host": host, "wan": wan, "addresses": list(addresses), "ttl": ttl})


# ------------------------------------------------------------ WAN choice


def test_start_on_primary():
    rig = Rig()
    d = rig.step()
    (ap,) = of(d, model.ApplyPath)
    assert (ap.tunnel, ap.peer, ap.wan, ap.device, ap.gateway) == ("wg0", KEY, "wan", "eth1", GW["wan"])
    assert (ap.address, ap.port, ap.keepalive, ap.table) == (IP1, 51820, 0, None)
    (tr,) = transitions(d, "state")
    assert str(tr) == "wg0: was none, now wan, because start"
    assert not transitions(d, "failover")


@pytest.mark.parametrize("how, evidence", [
    ("carrier", "no link, address or default route"),
    ("hotplug", "hotplug ifdown"),
])
def test_primary_loss_fails_over_in_the_same_step(how, evidence):
    rig = Rig()
    rig.step()
    if how == "carrier":
        rig.up["wan"] = False
        d = rig.step(model.Event("link"), dt=1)
    else:  # netifd's event arrives while the kernel still shows wan up
        d = rig.step(hotplug("ifdown", "wan"), dt=1)
    (ap,) = of(d, model.ApplyPath)
    assert (ap.wan, ap.device, ap.gateway, ap.keepalive) == ("wanb", "wwan0", GW["wanb"], 25)
    (tr,) = transitions(d, "failover")
    assert (tr.was, tr.now) == ("wan", "wanb")
    assert "wan is down" in tr.because and evidence in tr.because


def test_hotplug_ifdown_holds_until_ifup():
    rig = Rig()
    rig.step()
    rig.step(hotplug("ifdown", "wan"), dt=1)
    assert not of(rig.step(dt=1), model.ApplyPath)  # kernel still says up: ignored
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["wan"] == "wanb"
    rig.step(hotplug("ifup", "wan"), dt=1)
    assert rig.engine.snapshot(rig.t)["wans"]["wan"]["usable"]



# ------------------------------------------------------------ IPv6 endpoints


def test_ipv6_endpoint_uses_the_ipv6_gateway_on_each_wan():
    rig = Rig(endpoints=(model.Endpoint(IP6),))
    rig.v6 = {"wan", "wanb"}
    (ap,) = of(rig.step(), model.ApplyPath)
    assert (ap.wan, ap.address, ap.gateway, ap.device) == ("wan", IP6, GW6["wan"], "eth1")
    rig.up["wan"] = False
    (ap,) = of(rig.step(dt=1), model.ApplyPath)
    assert (ap.wan, ap.address, ap.gateway) == ("wanb", IP6, GW6["wanb"])


def test_ipv4_only_backup_takes_the_ipv4_candidate():
    rig = Rig(endpoints=(model.Endpoint(IP6), model.Endpoint(IP1)))
    rig.v6 = {"wan"}
    (ap,) = of(rig.step(), model.ApplyPath)
    assert (ap.wan, ap.address) == ("wan", IP6)
    rig.up["wan"] = False
    d = rig.step(dt=1)
    (ap,) = of(d, model.ApplyPath)
    assert (ap.wan, ap.address, ap.gateway, ap.port) == ("wanb", IP1, GW["wanb"], 51820)
    assert any("wanb has no IPv6 path" in t.because for t in transitions(d)), transitions(d)
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]["candidate"] == 1


def test_ipv6_only_wan_carries_the_ipv6_candidate():
    rig = Rig(endpoints=(model.Endpoint(IP1), model.Endpoint(IP6)))
    rig.v6 = {"wanb"}
    rig.no4 = {"wanb"}  # an LTE bearer with IPv6 only
    (ap,) = of(rig.step(), model.ApplyPath)
    assert (ap.wan, ap.address) == ("wan", IP1)
    rig.up["wan"] = False
    (ap,) = of(rig.step(dt=1), model.ApplyPath)
    assert (ap.wan, ap.address, ap.gateway) == ("wanb", IP6, GW6["wanb"])


def test_wan_without_the_peers_family_is_not_chosen_while_another_can_carry():
    rig = Rig(endpoints=(model.Endpoint(IP6),), failback_holddown=5.0)
    rig.v6 = {"wanb"}  # the primary has no IPv6
    d = rig.step()
    (ap,) = of(d, model.ApplyPath)
    assert (ap.wan, ap.gateway) == ("wanb", GW6["wanb"])
    for _ in range(5):  # and it never fails "back" to a WAN that cannot carry it
        assert not of(rig.step(dt=5), model.ApplyPath)


def test_no_wan_carries_the_family_applies_nothing_and_says_why_once():
    rig = Rig(endpoints=(model.Endpoint(IP6),))
    d = rig.step()
    assert not of(d, model.ApplyPath)
    why = [t for t in transitions(d) if "no IPv6 path" in t.because]
    assert len(why) == 1 and why[0].now == "not applied", transitions(d)
    d = rig.step(dt=1)
    assert not of(d, model.ApplyPath) and not [t for t in transitions(d) if "IPv6" in t.because]
    rig.v6 = {"wan"}  # IPv6 arrives (router advertisement): applied at once
    (ap,) = of(rig.step(dt=1), model.ApplyPath)
    assert (ap.wan, ap.address, ap.gateway) == ("wan", IP6, GW6["wan"])


def test_wan_probe_asks_only_the_track_ips_of_families_the_wan_carries():
    wans = (model.Wan("wan", "eth1", track_ips=("192.0.2.254",)),
            model.Wan("wanb", "wwan0", track_ips=("100.64.0.254", "2001:db8:ffff::1"), table=2))
    rig = Rig(config=make_config(endpoints=(model.Endpoint(IP1), model.Endpoint(IP6)), wans=wans))
    rig.v6 = {"wanb"}
    rig.no4 = {"wanb"}  # IPv6 only: its IPv4 track IP cannot answer
    rig.step()
    rig.up["wan"] = False
    rig.step(dt=1)  # on wanb now, over IPv6
    engine = rig.engine
    (pw,) = [a for a in engine.probe_wan_now("wanb") if isinstance(a, model.ProbeWan)]
    assert pw.targets == ("2001:db8:ffff::1",)
    rig.v6 = set()
    rig.no4 = set()
    rig.step(dt=1)
    assert engine.track_ips("wanb") == ("100.64.0.254",)


def test_snapshot_says_which_families_each_wan_carries():
    rig = Rig()
    rig.v6 = {"wan", "wanb"}
    rig.no4 = {"wanb"}
    rig.step()
    wans = rig.engine.snapshot(rig.t)["wans"]
    assert (wans["wan"]["families"], wans["wanb"]["families"]) == (["ipv4", "ipv6"], ["ipv6"])
    rig.up["wan"] = False
    rig.step(dt=1)
    assert rig.engine.snapshot(rig.t)["wans"]["wan"]["families"] == []


def test_candidate_step_skips_candidates_the_wan_cannot_carry():
    ip3 = "198.51.100.30"
    rig = Rig(endpoints=(model.Endpoint(IP1), model.Endpoint(IP6), model.Endpoint(ip3)))
    rig.step()
    engine = rig.engine
    engine.ladder_step("wg0", KEY, 1)  # ladder step 1 is "next endpoint candidate"
    # IPv6 candidate 1 skipped: wan has no IPv6
    assert engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]["candidate"] == 2


# ------------------------------------------------------------ mwan3 verdicts


def test_mwan3_disconnected_fails_over_in_the_same_step():
    rig = Rig()
    rig.step()
    d = rig.step(hotplug("disconnected", "wan"), dt=1)  # link, address, route all still there
    (ap,) = of(d, model.ApplyPath)
    assert ap.wan == "wanb"
    (tr,) = transitions(d, "failover")
    assert "mwan3 reports it disconnected" in tr.because, tr
    (wtr,) = transitions(d, "wan")
    assert (wtr.tunnel, wtr.was, wtr.now) == ("wan", "up", "unhealthy"), wtr
    snap = rig.engine.snapshot(rig.t)["wans"]["wan"]
    assert (snap["up"], snap["healthy"], snap["usable"]) == (True, False, False)


def test_mwan3_verdict_is_not_overruled_by_our_wan_probe():
    rig = Rig(failback_holddown=5.0)
    rig.step()
    rig.step(hotplug("disconnected", "wan"), dt=1)
    rig.step(wan_probe("wan", True), dt=1)
    for _ in range(5):
        assert not [a for a in of(rig.check(), model.ApplyPath) if a.wan == "wan"]
        # and it is not probed again while mwan3 holds it down
        assert not [a for a in of(rig.step(dt=1), model.ProbeWan) if a.wan == "wan"]
    assert not rig.engine.snapshot(rig.t)["wans"]["wan"]["usable"]


@pytest.mark.parametrize("clear", ["connected", "ifup"])
def test_mwan3_connected_or_ifup_ends_the_verdict_and_failback_follows(clear):
    rig = Rig(failback_holddown=20.0)
    rig.wan_ok = {}  # our own probes answer too
    rig.step()
    rig.step(hotplug("disconnected", "wan"), dt=1)
    d = rig.step(hotplug(clear, "wan"), dt=1)
    assert not of(d, model.ApplyPath)  # hold-down first
    (wtr,) = transitions(d, "wan")
    assert (wtr.was, wtr.now) == ("unhealthy", "up"), wtr
    # the reason names what cleared the verdict, not what cleared an earlier one
    said = {"connected": "mwan3 reports it connected", "ifup": "it came up anew (ifup)"}
    assert wtr.because.endswith("; " + said[clear]), wtr
    assert not of(rig.step(dt=10), model.ApplyPath)  # a check: our probe goes out through wan
    (ap,) = of(rig.step(dt=10), model.ApplyPath)
    assert ap.wan == "wan"


def test_mwan3_connected_without_disconnected_changes_nothing():
    rig = Rig()
    rig.step()
    d = rig.step(hotplug("connected", "wan"), hotplug("connected", "wanb"), dt=1)
    assert not of(d, model.ApplyPath) and not transitions(d)
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["wan"] == "wan"


def test_mwan3_both_disconnected_keeps_the_tunnel_on_a_wan():
    rig = Rig()
    rig.step()
    rig.step(hotplug("disconnected", "wan"), dt=1)
    rig.step(hotplug("disconnected", "wanb"), dt=1)
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["wan"] in ("wan", "wanb")


def test_failback_only_after_holddown():
    rig = Rig(failback_holddown=60.0)
    rig.wan_ok = {}  # every track IP answers
    rig.step()
    rig.up["wan"] = False
    rig.step(dt=1)
    rig.up["wan"] = True
    back = rig.t + 5
    d = rig.step(at=back)
    assert not of(d, model.ApplyPath)
    assert d.deadline <= back + 60
    for t in (back + 20, back + 59):
        assert not of(rig.step(at=t), model.ApplyPath), t
    d = rig.step(at=back + 60)
    (ap,) = of(d, model.ApplyPath)
    assert (ap.wan, ap.keepalive) == ("wan", 0)
    (tr,) = transitions(d, "failback")
    assert (tr.was, tr.now) == ("wanb", "wan")


def test_flapping_primary_is_damped_and_ends_stable():
    rig = Rig(failback_holddown=30.0, live=True)
    rig.wan_ok = {}  # every track IP answers
    rig.step()
    applies = []
    for i in range(40):  # wan toggles every 4 s for 160 s
        rig.up["wan"] = i % 2 == 1
        applies += of(rig.step(dt=4), model.ApplyPath)
    snap = rig.engine.snapshot(rig.t)
    assert snap["wans"]["wan"]["holddown"] > 30.0  # lengthened by the flaps
    rig.up["wan"] = True
    for _ in range(200):  # then stays up for 1000 s
        applies += of(rig.step(dt=5), model.ApplyPath)
    assert len(applies) <= 3, applies  # away once, back once (plus slack for one more)
    assert [a.wan for a in applies][-1] == "wan"
    last = [a.wan for a in of(rig.step(dt=5), model.ApplyPath)]
    assert last == []  # stable: nothing more to do
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["wan"] == "wan"


def test_flapping_primary_while_on_backup_never_fails_back():
    rig = Rig(failback_holddown=30.0, live=True)
    rig.step()
    rig.up["wan"] = False
    rig.step(dt=1)
    count = 0
    for i in range(60):  # up 20 s, down 5 s: never 30 s in a row
        rig.up["wan"] = (i % 5) != 4
        count += len(of(rig.step(dt=5), model.ApplyPath))
    assert count == 0


def test_both_down_then_backup_returns():
    rig = Rig()
    rig.step()
    rig.up["wan"] = False
    rig.step(dt=1)
    rig.up["wanb"] = False
    d = rig.step(dt=1)
    assert not of(d, model.ApplyPath) and not of(d, model.RemovePath)
    (tr,) = [t for t in transitions(d) if t.tunnel == "wg0"]
    assert tr.now == "down" and "no wan is up" in tr.because
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["state"] == "down"
    assert not of(rig.step(dt=1), model.ApplyPath)
    rig.up["wanb"] = True
    d = rig.step(dt=1)
    (ap,) = of(d, model.ApplyPath)
    assert ap.wan == "wanb"
    assert [t.was for t in transitions(d) if t.tunnel == "wg0"] == ["down"]


def test_manual_switch_pins_until_cleared():
    rig = Rig()
    rig.wan_ok = {}  # every track IP answers
    rig.step()
    d = rig.step(model.Event("switch", {"wan": "wanb"}), dt=100)
    assert [a.wan for a in of(d, model.ApplyPath)] == ["wanb"]
    assert not of(rig.step(dt=100), model.ApplyPath)
    d = rig.step(model.Event("switch", {"wan": None}), dt=1)
    assert [a.wan for a in of(d, model.ApplyPath)] == ["wan"]


def test_switch_to_unknown_wan_is_ignored_and_logged():
    rig = Rig()
    rig.step()
    rig.strict = False
    d = rig.step(model.Event("switch", {"wan": "nope"}), dt=1)
    assert not of(d, model.ApplyPath)
    assert any("ignored" == t.now for t in transitions(d))


def test_mwan3_uses_the_wan_table():
    rig = Rig(mwan3=True)
    assert [a.table for a in of(rig.step(), model.ApplyPath)] == [1]
    rig.up["wan"] = False
    assert [a.table for a in of(rig.step(dt=1), model.ApplyPath)] == [2]


def test_wan_address_change_reapplies_same_path():
    rig = Rig()
    rig.step()
    assert not of(rig.step(dt=1), model.ApplyPath)
    rig.addr["wan"] = "192.0.2.77"
    (ap,) = of(rig.step(dt=1), model.ApplyPath)
    assert ap.wan == "wan" and ap.address == IP1


@pytest.mark.parametrize("change", ["down", "address"])
def test_other_wan_losing_its_address_resets_the_cached_source(change):
    # The peer is on wan; a packet of its server that came in through wanb
    # left wanb's address as the source WireGuard sends from.  When that
    # address goes, the endpoint is set again (same path): the only way to
    # clear that source in wireguard-go, which otherwise fails every send.
    rig = Rig()
    (first,) = of(rig.step(), model.ApplyPath)
    assert first.wan == "wan"
    assert not of(rig.step(dt=1), model.ApplyPath)
    if change == "down":
        rig.up["wanb"] = False
    else:
        rig.addr["wanb"] = "100.64.0.77"
    (ap,) = of(rig.step(dt=1), model.ApplyPath)
    assert ap == first
    assert not of(rig.step(dt=1), model.ApplyPath)  # once per change
    if change == "down":
        rig.up["wanb"] = True
        assert not of(rig.step(dt=1), model.ApplyPath)  # a WAN coming up takes no source away
        rig.up["wanb"] = False
        assert not of(rig.step(dt=1), model.ApplyPath)  # never used since: nothing cached there


def test_a_failback_leaves_the_backup_as_a_possible_source_a_failover_does_not():
    rig = Rig(failback_holddown=5.0, live=True)
    rig.wan_ok = {}
    rig.step()
    rig.up["wan"] = False  # failover: wan's address is gone with it
    assert [a.wan for a in of(rig.step(dt=1), model.ApplyPath)] == ["wanb"]
    rig.up["wan"] = True
    back = []
    for _ in range(12):
        back += of(rig.step(dt=1), model.ApplyPath)
    assert [a.wan for a in back] == ["wan"]  # failed back while wanb stayed up
    rig.up["wanb"] = False
    (ap,) = of(rig.step(dt=1), model.ApplyPath)
    assert ap == back[0]


def test_tunnel_ifup_reapplies():
    rig = Rig()
    rig.step()
    assert of(rig.step(hotplug("ifup", "wg0"), dt=1), model.ApplyPath)
    assert not of(rig.step(dt=1), model.ApplyPath)


# ------------------------------------------------------------ apply by difference


def test_apply_by_difference():
    rig = Rig()
    assert of(rig.step(), model.ApplyPath)
    assert not of(rig.step(dt=1), model.ApplyPath)
    assert not of(rig.step(model.Event("link"), dt=1), model.ApplyPath)


def test_reapply_event_forces_apply():
    rig = Rig()
    rig.step()
    d = rig.step(model.Event("reapply"), dt=1)
    assert len(of(d, model.ApplyPath)) == 1
    assert any(t.because == "reapply requested" for t in transitions(d))


def test_restart_safety_apply_once_no_failover():
    stats = {("wg0", KEY): model.PeerStats(endpoint=IP1 + ":51820", latest_handshake=int(T0) - 10,
                                           rx=5000, tx=5000, keepalive=0)}
    rig = Rig(stats=stats)
    d = rig.step()
    assert len(of(d, model.ApplyPath)) == 1
    assert not transitions(d, "failover") and not transitions(d, "failback")
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]["state"] == "up"


def test_failed_apply_is_retried_with_backoff():
    rig = Rig(backoff_base=4.0)
    (ap,) = of(rig.step(), model.ApplyPath)
    d = rig.step(model.Event("applied", {"action": ap, "ok": False, "error": "RTNETLINK busy"}), dt=1)
    assert not of(d, model.ApplyPath)
    assert any("RTNETLINK busy" in t.because for t in transitions(d))
    assert d.deadline == pytest.approx(rig.t + 4.0)
    assert not of(rig.step(dt=2), model.ApplyPath)
    assert [a.address for a in of(rig.step(dt=2), model.ApplyPath)] == [IP1]


def test_applied_ok_does_not_reapply():
    rig = Rig()
    (ap,) = of(rig.step(), model.ApplyPath)
    assert not of(rig.step(model.Event("applied", {"action": ap, "ok": True, "error": ""}), dt=1),
                  model.ApplyPath)


def test_peer_missing_in_kernel_is_not_created():
    rig = Rig(stats={("wg0", "OTHER"): model.PeerStats(None, 0, 0, 0, 0)})
    assert not of(rig.step(), model.ApplyPath)


# ------------------------------------------------------------ monitor


def test_silent_failure_probes_tunnel_and_wan():
    rig = Rig()
    rig.step()
    assert not of(rig.check(rx=100, tx=100), model.Probe)  # first sample
    d = rig.check(tx=5000)
    (p,) = of(d, model.Probe)
    assert (p.tunnel, p.peer, p.target, p.source, p.timeout) == ("wg0", KEY, "10.9.0.1", "10.9.0.2",
                                                                   model.Settings().probe_timeout)
    (pw,) = of(d, model.ProbeWan)
    assert (pw.wan, pw.device, pw.targets, pw.timeout) == ("wan", "eth1", ("192.0.2.254", "192.0.2.253"),
                                                           model.Settings().probe_timeout)
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]["state"] == "suspect"


@pytest.mark.parametrize("rx, tx, handshake_age, keepalive_peer, probes", [
    (500, 500, None, 0, False),  # rx grew: healthy
    (0, 0, None, 0, False),  # idle, no handshake ever, path fresh
    (0, 64, 30, 25, False),  # only keepalives went out (at most two in 10 s)
    (0, 200, 30, 25, True),  # more than keepalives explain
    (0, 5000, 30, 0, True),  # sent a lot, nothing back
    (0, 0, 200, 25, True),  # handshake stale while keepalive is on
    (0, 0, 200, 0, False),  # stale handshake, keepalive off, no traffic: idle
])
def test_monitor_verdicts(rx, tx, handshake_age, keepalive_peer, probes):
    peers = (model.Peer("wg0", "office", KEY, (model.Endpoint(IP1),), ("10.9.0.0/24",), keepalive_peer,
                        "10.9.0.1"),)
    rig = Rig(peers=peers)
    rig.step()
    rig.check()
    hs = int(rig.engine.next_check - handshake_age) if handshake_age else 0
    d = rig.check(rx=rx, tx=tx, handshake=hs)
    assert bool(of(d, model.Probe)) is probes


def test_no_handshake_after_apply_is_suspect():
    rig = Rig(handshake_timeout=25.0, check_interval=10.0)
    rig.step()
    assert not of(rig.check(), model.Probe)  # 10 s after the path was applied
    assert not of(rig.check(), model.Probe)  # 20 s
    d = rig.check()  # 30 s > handshake_timeout
    assert of(d, model.Probe) and of(d, model.ProbeWan)


def test_probe_ok_returns_to_healthy():
    rig = Rig()
    rig.step()
    rig.check()
    rig.check(tx=5000)
    d = rig.step(probe(True), wan_probe("wan", True), dt=1)
    assert not of(d, model.ApplyPath)
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]["state"] == "up"


@pytest.mark.parametrize("wan_first", [False, True])
def test_wan_probe_failure_fails_over_at_once(wan_first):
    rig = Rig(check_interval=10.0)  # probe answers come 1 s apart, within one check
    rig.step()
    rig.check()
    rig.check(tx=5000)
    if wan_first:
        d = rig.step(wan_probe("wan", False), probe(False), dt=1)
    else:
        d = rig.step(probe(False), dt=1)
        assert not of(d, model.ApplyPath)  # waits for the WAN's verdict
        d = rig.step(wan_probe("wan", False), dt=1)
    (ap,) = of(d, model.ApplyPath)
    assert (ap.wan, ap.keepalive) == ("wanb", 25)
    (tr,) = transitions(d, "failover")
    assert "wan is unhealthy" in tr.because
    (rec,) = transitions(d, "recovery")
    assert rec.now == core.STEP_WAN and "wan probe of wan failed" in rec.because
    # the dead WAN keeps being probed every check, cheaply
    d = rig.check(rx=100, tx=100)
    assert [p.wan for p in of(d, model.ProbeWan)] == ["wan"]
    assert not of(d, model.Probe)
    # it answers again: failback after the hold-down
    (wtr,) = transitions(rig.step(wan_probe("wan", True), dt=1), "wan")
    assert (wtr.was, wtr.now) == ("unhealthy", "up"), wtr
    assert wtr.because.endswith("; track ips answer"), wtr
    ok_since = rig.t
    assert not of(rig.step(at=ok_since + 30), model.ApplyPath)
    d = rig.step(at=ok_since + 60)
    assert [a.wan for a in of(d, model.ApplyPath)] == ["wan"]


def test_recovery_ladder_steps():
    rig = Rig(backoff_base=2.0, check_interval=10.0)  # 20 checks span backoff_max
    rig.step()
    rig.check()
    names = []
    actions = []
    for _ in range(20):
        d = rig.check(tx=5000)
        if not of(d, model.Probe):
            continue  # backing off, or the restarted tunnel is not re-applied yet
        answers = [wan_probe(p.wan, True) for p in of(d, model.ProbeWan)]
        d = rig.step(*answers, probe(False), dt=1)
        names += [t.now for t in transitions(d, "recovery")]
        actions.append(d)
        if len(names) == 5:
            break
    assert names[0] == core.STEP_RERESOLVE
    assert names[1].startswith(core.STEP_CANDIDATE) and "443" in names[1]
    assert names[2] == core.STEP_WAN
    assert names[3] == core.STEP_RESTART
    assert names[4] == core.STEP_RERESOLVE  # restart at most once per backoff_max: the ladder starts over
    # step 1: the same path again (the shell re-sets the endpoint)
    assert [(a.wan, a.port) for a in of(actions[0], model.ApplyPath)] == [("wan", 51820)]
    # step 2: the next candidate, port 443
    assert [(a.wan, a.port) for a in of(actions[1], model.ApplyPath)] == [("wan", 443)]
    # step 3: another WAN, back to the first candidate
    (ap,) = of(actions[2], model.ApplyPath)
    assert (ap.wan, ap.port) == ("wanb", 51820)
    (fo,) = transitions(actions[2], "failover")
    assert fo.because == "no reply through tunnel on wan"
    # step 4: restart the tunnel
    assert of(actions[3], model.RestartTunnel) == [model.RestartTunnel("wg0")]


def test_no_probe_target_counts_as_failed():
    rig = Rig(probe=None)
    rig.step()
    rig.check()
    d = rig.check(tx=5000)
    assert not of(d, model.Probe)
    assert of(d, model.ProbeWan)
    d = rig.step(wan_probe("wan", True), dt=1)
    assert [t.now for t in transitions(d, "recovery")] == [core.STEP_RERESOLVE]


def test_backoff_between_steps():
    rig = Rig(backoff_base=30.0, check_interval=10.0)
    rig.step()
    rig.check()
    rig.check(tx=5000)
    rig.step(wan_probe("wan", True), probe(False), dt=1)
    # backoff 30 s from T0+21: the checks at 30, 40 and 50 see the failure but take no step
    for _ in range(3):
        d = rig.check(tx=5000)
        assert not of(d, model.Probe) and not transitions(d, "recovery")
    d = rig.check(tx=5000)
    assert of(d, model.Probe)
    snap = rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]
    assert snap["state"] == "recovering" and snap["last_step"] == core.STEP_RERESOLVE


@pytest.mark.parametrize("base, cap, expected", [
    (2.0, 300.0, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]),
    (5.0, 20.0, [5, 10, 20, 20, 20, 20, 20, 20, 20, 20, 20]),
])
def test_backoff_grows_and_is_capped(base, cap, expected):
    engine = core.Engine(make_config(backoff_base=base, backoff_max=cap), T0)
    assert [engine.backoff(n) for n in range(11)] == expected
    jittered = core.Engine(make_config(backoff_base=base, backoff_max=cap), T0, rng=random.Random(7))
    for n, plain in enumerate(expected):
        value = jittered.backoff(n)
        assert plain * (1 - core.BACKOFF_JITTER) <= value <= plain <= cap


# ------------------------------------------------------------ DNS


HOST = "vpn.example.net"


def dns_rig(**kw):
    return Rig(endpoints=(model.Endpoint(HOST), model.Endpoint(HOST, 443)), **kw)


def test_hostname_is_resolved_before_apply():
    rig = dns_rig()
    d = rig.step()
    assert not of(d, model.ApplyPath)
    (r,) = of(d, model.Resolve)
    assert (r.host, r.wan, r.device, r.servers) == (HOST, "wan", "eth1", ("192.0.2.53",))
    assert not of(rig.step(dt=1), model.Resolve)  # one question at a time
    d = rig.step(resolved(HOST, ["203.0.113.5"]), dt=1)
    (ap,) = of(d, model.ApplyPath)
    assert (ap.address, ap.port) == ("203.0.113.5", 51820)
    snap = rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]
    assert snap["endpoint"] == "203.0.113.5:51820" and snap["endpoint_source"] == "dns"


@pytest.mark.parametrize("ttl, expected", [(5, 30.0), (300, 300.0), (86400, 3600.0)])
def test_ttl_is_clamped(ttl, expected):
    rig = dns_rig(check_interval=10000.0)
    rig.step()
    d = rig.step(resolved(HOST, ["203.0.113.5"], ttl=ttl), dt=1)
    assert d.deadline == pytest.approx(rig.t + expected)
    assert not of(rig.step(at=rig.t + expected - 1), model.Resolve)
    assert [r.host for r in of(rig.step(at=d.deadline), model.Resolve)] == [HOST]


def test_ttl_jitter_is_small_and_positive():
    rig = dns_rig(check_interval=10000.0, rng=random.Random(3))
    rig.step()
    d = rig.step(resolved(HOST, ["203.0.113.5"], ttl=300), dt=1)
    assert rig.t + 300 <= d.deadline <= rig.t + 300 * (1 + core.DNS_JITTER)


@pytest.mark.parametrize("bad, why", [
    ("127.0.0.1", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("224.0.0.5", "multicast"),
    ("169.254.1.1", "link-local"),
    ("10.9.0.5", "allowed_ips"),
])
def test_bad_addresses_are_rejected(bad, why):
    rig = dns_rig()
    rig.step()
    d = rig.step(resolved(HOST, [bad]), dt=1)
    assert not of(d, model.ApplyPath)
    (tr,) = transitions(d, "resolve")[:1]
    assert bad in tr.now and why in tr.because
    d = rig.step(resolved(HOST, [bad, "203.0.113.9"]), dt=1)
    assert [a.address for a in of(d, model.ApplyPath)] == ["203.0.113.9"]


@pytest.mark.parametrize("address, allowed, rejected", [
    ("203.0.113.1", ("0.0.0.0/0",), False),  # full tunnel: the host route keeps it outside
    ("203.0.113.1", ("203.0.113.0/24",), True),
    ("203.0.113.1", ("bogus",), False),
    ("::1", (), True),
    ("fe80::1", (), True),
    ("2001:db8::1", ("10.0.0.0/8",), False),
    ("not-an-ip", (), True),
])
def test_bad_address_table(address, allowed, rejected):
    assert bool(core.bad_address(address, allowed)) is rejected


def test_new_address_is_applied():
    rig = dns_rig()
    rig.step()
    rig.step(resolved(HOST, ["203.0.113.5"], ttl=30), dt=1)
    d = rig.step(at=rig.t + 30)
    assert of(d, model.Resolve)
    d = rig.step(resolved(HOST, ["203.0.113.5"], ttl=30), dt=1)
    assert not of(d, model.ApplyPath)  # same address: nothing to do
    rig.step(at=rig.t + 30)
    d = rig.step(resolved(HOST, ["203.0.113.6"], ttl=30), dt=1)
    (ap,) = of(d, model.ApplyPath)
    assert ap.address == "203.0.113.6"
    assert [t.now for t in transitions(d, "resolve")] == ["203.0.113.6"]


def test_resolve_failed_keeps_last_good_and_backs_off():
    rig = dns_rig(backoff_base=2.0, dns_ttl_min=30.0)
    rig.step()
    rig.step(resolved(HOST, ["203.0.113.5"], ttl=30), dt=1)
    rig.step(at=rig.t + 30)
    gaps = []
    for _ in range(6):
        d = rig.step(model.Event("resolve_failed", {"host": HOST, "wan": "wan", "error": "SERVFAIL"}), dt=0.5)
        assert not of(d, model.ApplyPath)
        start = rig.t
        t = start
        while True:  # find when the Resolve is asked again
            t += 0.5
            if of(rig.step(at=t), model.Resolve):
                break
        gaps.append(t - start)
    assert gaps[0] == pytest.approx(2.0) and gaps[1] == pytest.approx(4.0)
    assert max(gaps) == pytest.approx(30.0)  # bounded
    peer = rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]
    assert peer["endpoint"] == "203.0.113.5:51820"


def test_kernel_endpoint_adopted_until_resolved():
    stats = {("wg0", KEY): model.PeerStats(endpoint="203.0.113.7:51820", latest_handshake=0, rx=0, tx=0,
                                           keepalive=0)}
    rig = dns_rig(stats=stats)
    d = rig.step()
    assert [a.address for a in of(d, model.ApplyPath)] == ["203.0.113.7"]
    assert of(d, model.Resolve)
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]["endpoint_source"] == "kernel"
    d = rig.step(resolved(HOST, ["203.0.113.7"]), dt=1)
    assert not of(d, model.ApplyPath)


def test_recovery_step1_re_resolves():
    rig = dns_rig()
    rig.step()
    rig.step(resolved(HOST, ["203.0.113.5"], ttl=3600), dt=1)
    rig.check()
    rig.check(tx=5000)
    d = rig.step(wan_probe("wan", True), probe(False), dt=1)
    assert [r.host for r in of(d, model.Resolve)] == [HOST]
    assert [a.address for a in of(d, model.ApplyPath)] == ["203.0.113.5"]


# ------------------------------------------------------------ lifecycle


def test_reconfigure_keeps_healthy_peer():
    rig = Rig()
    rig.step()
    rig.check()
    rig.check(rx=100, tx=100)
    rig.engine.reconfigure(make_config(check_interval=20.0), rig.t)
    d = rig.step(dt=1)
    assert not of(d, model.ApplyPath) and not of(d, model.RemovePath)
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]["state"] == "up"


def test_reconfigure_changed_and_removed_peers():
    two = (model.Peer("wg0", "a", KEY, (model.Endpoint(IP1),)),
           model.Peer("wg0", "b", KEY2, (model.Endpoint("198.51.100.20"),)))
    rig = Rig(peers=two)
    assert len(of(rig.step(), model.ApplyPath)) == 2
    changed = (model.Peer("wg0", "a", KEY, (model.Endpoint(IP1),), keepalive=15),)
    rig.engine.reconfigure(make_config(peers=changed), rig.t)
    d = rig.step(dt=1)
    assert [(a.peer, a.keepalive) for a in of(d, model.ApplyPath)] == [(KEY, 15)]
    assert [(r.peer, r.address) for r in of(d, model.RemovePath)] == [(KEY2, "198.51.100.20")]


def test_stop_removes_every_route_added():
    rig = Rig(mwan3=True)
    rig.step()
    rig.up["wan"] = False
    rig.step(dt=1)
    removes = rig.engine.stop()
    assert all(isinstance(a, model.RemovePath) for a in removes)
    assert sorted((r.address, r.table) for r in removes) == [(IP1, 1), (IP1, 2)]
    assert rig.engine.stop() == ()


def test_deadline_none_without_peers():
    rig = Rig(peers=())
    d = rig.step()
    assert d.deadline is None and d.actions == () or not of(d, model.ApplyPath)
    assert d.deadline is None


def test_deadline_is_next_check():
    rig = Rig(check_interval=10.0)
    assert rig.step().deadline == T0 + 10.0
    assert rig.step(dt=3).deadline == T0 + 10.0
    assert rig.step(at=T0 + 10.0).deadline == T0 + 20.0


def test_check_jitter_is_small():
    rig = Rig(check_interval=10.0, rng=random.Random(1), live=True)
    deadlines = set()
    for _ in range(20):
        d = rig.step(at=rig.engine.next_check)
        gap = d.deadline - rig.t
        assert 10.0 * (1 - core.CHECK_JITTER) <= gap <= 10.0 * (1 + core.CHECK_JITTER)
        deadlines.add(round(gap, 6))
    assert len(deadlines) > 1


def test_snapshot_is_json_and_complete():
    rig = Rig(events=4)
    rig.step()
    for i in range(6):
        rig.up["wan"] = i % 2 == 1
        rig.step(dt=1)
    snap = json.loads(json.dumps(rig.engine.snapshot(rig.t)))
    assert set(snap["wans"]) == {"wan", "wanb"}
    assert snap["wans"]["wan"]["preferred"] and not snap["wans"]["wanb"]["preferred"]
    peer = snap["tunnels"]["wg0"]["peers"][KEY]
    for field in ("state", "wan", "endpoint", "endpoint_source", "keepalive", "handshake_age", "rx", "tx",
                  "last_step", "backoff_until"):
        assert field in peer
    assert isinstance(peer["keepalive"], int) and isinstance(peer["rx"], int) and isinstance(peer["tx"], int)
    assert [w for w, v in snap["wans"].items() if v["active"]] == [snap["tunnels"]["wg0"]["wan"]]
    assert len(snap["events"]) == 4  # the ring is bounded
    assert all(e["text"] and e["time"] for e in snap["events"])


def test_malformed_event_does_not_crash():
    rig = Rig()
    rig.step()
    rig.strict = False
    d = rig.step(model.Event("hotplug", {}), model.Event("nonsense"), dt=1)
    assert len([t for t in transitions(d) if t.now == "ignored"]) == 2


def test_wan_probe_failure_without_other_wan_climbs_ladder():
    rig = Rig()
    rig.step()
    rig.up["wanb"] = False
    rig.check()
    rig.check(tx=5000)
    d = rig.step(probe(False), wan_probe("wan", False), dt=1)
    assert [t.now for t in transitions(d, "recovery")] == [core.STEP_RERESOLVE]
    assert [a.wan for a in of(d, model.ApplyPath)] == ["wan"]  # unhealthy but the only one up: kept
    assert not [t for t in transitions(d) if t.now == "down"]


def test_track_ips_silent_but_tunnel_answers_keeps_wan():
    rig = Rig()
    rig.step()
    rig.check()
    rig.check(tx=5000)
    d = rig.step(probe(True), dt=1)
    d = rig.step(wan_probe("wan", False), dt=1)
    assert not of(d, model.ApplyPath)
    assert rig.engine.snapshot(rig.t)["wans"]["wan"]["healthy"]


def test_failed_resolve_asks_through_the_next_wan():
    rig = dns_rig()
    (r,) = of(rig.step(), model.Resolve)
    assert r.wan == "wan"
    rig.step(model.Event("resolve_failed", {"host": HOST, "wan": "wan", "error": "timeout"}), dt=1)
    (r,) = of(rig.step(dt=5), model.Resolve)
    assert (r.wan, r.device, r.servers) == ("wanb", "wwan0", ("100.64.0.53",))


def test_unanswered_resolve_counts_as_failed():
    rig = dns_rig()
    rig.step()
    d = rig.step(dt=core.RESOLVE_ANSWER_TIMEOUT)
    assert [t.kind for t in transitions(d)] == ["resolve"]
    assert of(rig.step(dt=5), model.Resolve)


def test_wan_ifupdate_does_not_reapply_but_ifup_does():
    rig = Rig()
    rig.step()
    assert not of(rig.step(hotplug("ifupdate", "wan"), dt=1), model.ApplyPath)
    assert of(rig.step(hotplug("ifup", "wan"), dt=1), model.ApplyPath)


def test_unanswered_probe_counts_as_failed():
    rig = Rig()
    rig.step()
    rig.check()
    rig.check(tx=5000)
    d = rig.step(wan_probe("wan", True), dt=1)
    assert not transitions(d, "recovery")
    d = rig.step(dt=2.0 + core.ANSWER_GRACE)
    assert [t.now for t in transitions(d, "recovery")] == [core.STEP_RERESOLVE]


def test_stale_probe_answer_after_failover_is_ignored():
    rig = Rig()
    rig.step()
    rig.check()
    rig.check(tx=5000)
    rig.up["wan"] = False
    rig.step(dt=1)
    d = rig.step(probe(False), wan_probe("wan", False), dt=1)
    assert not transitions(d, "recovery") and not of(d, model.ApplyPath)


class World:
    """A simulated kernel and network answering the engine's actions one second later."""

    def __init__(self, rig):
        self.rig = rig
        self.dead = set()  # WANs whose upstream silently drops everything
        self.path = {}  # peer key -> wan of the applied path
        self.pending = []
        self.applies = []

    def run(self, seconds):
        end = self.rig.t + seconds
        while self.rig.t < end:
            for key in self.rig.stats:
                if self.path.get(key) and self.path[key] not in self.dead:
                    self.rig.traffic(key, rx=300, tx=300, handshake=int(self.rig.t))
                else:
                    self.rig.traffic(key, tx=500)
            events, self.pending = self.pending, []
            d = self.rig.step(*events, dt=1)
            for a in d.actions:
                if isinstance(a, model.ApplyPath):
                    self.path[(a.tunnel, a.peer)] = a.wan
                    self.applies.append((self.rig.t, a.wan))
                elif isinstance(a, model.Probe):
                    ok = self.path.get((a.tunnel, a.peer)) not in self.dead
                    self.pending.append(probe(ok, a.peer))
                elif isinstance(a, model.ProbeWan):
                    self.pending.append(wan_probe(a.wan, a.wan not in self.dead))


def test_simulated_silent_wan_failure_recovers_within_two_checks_and_fails_back():
    rig = Rig(check_interval=10.0, failback_holddown=60.0)
    world = World(rig)
    world.run(60)
    assert world.applies == [(T0 + 1, "wan")]
    world.dead.add("wan")
    died = rig.t
    world.run(40)
    moved = [t for t, wan in world.applies if wan == "wanb"]
    assert moved and moved[0] - died <= 2 * 10.0 + 2
    world.dead.clear()
    healed = rig.t
    world.run(200)
    back = [t for t, wan in world.applies if wan == "wan" and t > healed]
    assert back and 60.0 <= back[0] - healed <= 60.0 + 2 * 10.0 + 2
    assert len(world.applies) == 3
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]["state"] == "up"


def test_one_resolve_per_host_and_names_are_normalised():
    peers = (model.Peer("wg0", "a", KEY, (model.Endpoint("VPN.Example.NET."),), ("10.9.0.0/24",)),
             model.Peer("wg0", "b", KEY2, (model.Endpoint("vpn.example.net", 51821),), ("10.8.0.0/24",)))
    rig = Rig(peers=peers)
    assert [r.host for r in of(rig.step(), model.Resolve)] == [HOST]
    d = rig.step(resolved(HOST, ["203.0.113.5"]), dt=1)
    assert sorted((a.peer, a.port) for a in of(d, model.ApplyPath)) == [(KEY, 51820), (KEY2, 51821)]


def test_restart_reapplies_when_tunnel_is_back():
    rig = Rig(peers=(model.Peer("wg0", "a", KEY, (model.Endpoint(IP1),), probe="10.9.0.1"),),
              wans=(model.Wan("wan", "eth1"),))
    rig.step()
    rig.check()
    steps = []
    for _ in range(10):
        d = rig.check(tx=5000)
        if of(d, model.Probe):
            d = rig.step(probe(False), dt=1)
        steps += [t.now for t in transitions(d, "recovery")]
        if of(d, model.RestartTunnel):
            break
    assert steps == [core.STEP_RERESOLVE, core.STEP_RESTART]  # one WAN, one candidate
    assert not of(rig.step(hotplug("ifdown", "wg0"), dt=1), model.ApplyPath)
    assert not of(rig.step(dt=1), model.ApplyPath)
    (ap,) = of(rig.step(hotplug("ifup", "wg0"), dt=1), model.ApplyPath)
    assert ap.wan == "wan" and ap.address == IP1


# ------------------------------------------------------------ review fixes


def test_engine_times_are_shown_on_the_wall_clock():
    """The engine runs on a monotonic clock (seconds since boot); what people
    see (status, events) is unix time, given by the daemon."""
    boot = 250.0  # time.monotonic() shortly after boot
    wall = 1_700_000_000.0
    rig = Rig(config=make_config(backoff_base=30.0))
    rig.engine = core.Engine(rig.config, boot)
    rig.t = boot
    rig.step()
    rig.check()
    rig.check(tx=5000)
    rig.step(probe(False), wan_probe("wan", True), dt=1)  # a ladder step: backoff
    snap = rig.engine.snapshot(rig.t, wall=wall)
    assert snap["time"] == wall
    assert snap["next_check"] == wall + (rig.engine.next_check - rig.t)
    assert [e["time"] for e in snap["events"]] == [wall - (rig.t - t) for t, _ in rig.engine.recent()]
    assert all(e["time"] > wall - 3600 for e in snap["events"])
    backoff = snap["tunnels"]["wg0"]["peers"][KEY]["backoff_until"]
    assert wall < backoff <= wall + 30.0
    assert rig.engine.snapshot(rig.t)["time"] == rig.t  # without wall: the engine's clock


def test_missing_tunnel_device_is_reported_down_and_reapplied_when_back():
    rig = Rig()
    rig.step()
    rig.tunnels = frozenset()  # `ip link del wg0`: wg show lists no managed tunnel at all
    d = rig.step(model.Event("reapply"), dt=1)
    assert not of(d, model.ApplyPath)
    assert any(t.now == "down" and "device wg0 is gone" in t.because for t in transitions(d)), transitions(d)
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["state"] == "down"
    rig.tunnels = None  # wg show failed: unknown, the last word holds
    assert not of(rig.step(dt=1), model.ApplyPath)
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["state"] == "down"
    rig.tunnels = frozenset({"wg0"})
    d = rig.step(dt=1)
    assert [a.wan for a in of(d, model.ApplyPath)] == ["wan"]
    assert any("tunnel wg0 is back" in t.because for t in transitions(d))


def test_peer_missing_from_a_present_tunnel_is_not_created():
    rig = Rig()
    rig.stats = {}  # wg show lists wg0 without its peer (netifd still configuring)
    assert not of(rig.step(), model.ApplyPath)


def test_probe_errors_reach_the_log():
    rig = Rig()
    rig.step()
    rig.check(rx=100, tx=100)
    rig.check(tx=5000)
    err = "ping: sendto: Network unreachable"
    d = rig.step(model.Event("probe", {"tunnel": "wg0", "peer": KEY, "ok": False, "error": "ping: bind: x\n"}),
                 model.Event("wan_probe", {"wan": "wan", "ok": False, "error": err}), dt=1)
    (wan,) = transitions(d, "wan")
    assert wan.because == "track ips do not answer: " + err, wan
    (rec,) = transitions(d, "recovery")
    assert "probe to 10.9.0.1 failed: ping: bind: x;" in rec.because, rec
    assert "wan probe of wan failed: " + err in rec.because, rec


def test_applier_note_and_failed_removal_are_logged():
    rig = Rig()
    (ap,) = of(rig.step(), model.ApplyPath)
    note = "conntrack not installed: stale flows are not flushed"
    d = rig.step(model.Event("applied", {"action": ap, "ok": True, "error": "", "steps": [], "note": note}))
    (tr,) = transitions(d)
    assert (tr.tunnel, tr.peer, tr.now, tr.because) == ("wg0", "office", "applied", note)
    assert not transitions(rig.step(model.Event("applied", {"action": ap, "ok": True, "error": ""})))
    rm = model.RemovePath("wg0", KEY, IP1)
    d = rig.step(model.Event("applied", {"action": rm, "ok": False, "error": "ip route del: rc 2: busy"}))
    (tr,) = transitions(d)
    assert tr.now == "not removed" and "busy" in tr.because and IP1 in tr.was


def test_ttl_zero_does_not_requery_in_the_same_step():
    rig = dns_rig(dns_ttl_min=0.0)
    rig.step()
    n = 0
    for _ in range(5):
        n += len(of(rig.step(resolved(HOST, ["203.0.113.5"], ttl=0)), model.Resolve))  # no time passes
    assert n == 0
    assert of(rig.step(dt=core.DNS_REFRESH_MIN), model.Resolve)


def test_resolve_failure_with_tiny_backoff_does_not_requery_in_the_same_step():
    rig = dns_rig(dns_ttl_min=0.0, backoff_base=0.001)
    rig.step()
    failed = model.Event("resolve_failed", {"host": HOST, "wan": "wan", "error": "SERVFAIL"})
    assert not of(rig.step(failed), model.Resolve)
    assert not of(rig.step(dt=0.5), model.Resolve)


@pytest.mark.parametrize("target, addresses, source", [
    ("fd99::1", ("10.9.0.2/24", "fd99::2/64"), "fd99::2"),
    ("10.9.0.1", ("10.9.0.2/24", "fd99::2/64"), "10.9.0.2"),
    ("fd99::1", ("10.9.0.2/24",), None),  # no IPv6 address: the shell binds the device
])
def test_probe_source_has_the_targets_family(target, addresses, source):
    peers = (model.Peer("wg0", "office", KEY, (model.Endpoint(IP1),), ("10.9.0.0/24", "fd99::/64"), 0, target),)
    base = make_config(peers=peers)
    tunnel = model.Tunnel("wg0", peers, addresses=addresses, probe_source="10.9.0.2")
    rig = Rig(config=model.Config(base.settings, base.wans, (tunnel,)))
    rig.step()
    rig.check()
    (p,) = of(rig.check(tx=5000), model.Probe)
    assert (p.target, p.source) == (target, source)


def test_tunnels_sharing_an_endpoint_address_ride_the_same_wan():
    """Two tunnels to one server address (other ports): the kernel has one
    host route for that address, so when one tunnel's recovery leaves a WAN,
    the other follows instead of silently riding the moved route."""
    base = make_config()
    p0 = model.Peer("wg0", "a", KEY, (model.Endpoint(IP1),), ("10.9.0.0/24",), 0, "10.9.0.1")
    p1 = model.Peer("wg1", "b", KEY2, (model.Endpoint(IP1, 51821),), ("10.8.0.0/24",), 0, "10.8.0.1")
    cfg = model.Config(base.settings, base.wans, (model.Tunnel("wg0", (p0,)), model.Tunnel("wg1", (p1,))))
    rig = Rig(config=cfg)
    rig.step()
    rig.check(key=("wg0", KEY), rx=100, tx=100)
    moved = []
    for _ in range(12):  # wg1's far end stops answering on wan; wg0 keeps working
        rig.traffic(("wg0", KEY), rx=100, tx=100)
        d = rig.check(key=("wg1", KEY2), tx=5000)
        ev = []
        if of(d, model.ProbeWan):
            ev.append(wan_probe("wan", True))
        if of(d, model.Probe):
            ev.append(model.Event("probe", {"tunnel": "wg1", "peer": KEY2, "ok": False}))
        d = rig.step(*ev, dt=0.5)
        rig.t = max(rig.t, rig.engine.next_check - 0.01)
        moved = [a for a in of(d, model.ApplyPath) if a.tunnel == "wg1" and a.wan == "wanb"]
        if moved:
            break
        assert not [a for a in of(d, model.ApplyPath) if a.tunnel == "wg0"]  # wg0 stays meanwhile
    assert moved, "wg1 never left wan"
    # in the same step: wg0 follows the shared route
    (ap,) = [a for a in of(d, model.ApplyPath) if a.tunnel == "wg0"]
    assert ap.wan == "wanb" and ap.address == IP1
    (tr,) = [t for t in transitions(d, "failover") if t.tunnel == "wg0"]
    assert "wg1 left wan" in tr.because and IP1 in tr.because, tr
    snap = rig.engine.snapshot(rig.t)["tunnels"]
    assert snap["wg0"]["wan"] == snap["wg1"]["wan"] == "wanb"


# ------------------------------------------------------------ health verdicts that trust evidence


def wan_probe6(wan, ok, family):
    return model.Event("wan_probe", {"wan": wan, "ok": ok, "family": family})


def suspect_on(rig, wan="wan"):
    """Make the peer suspect at the next check; returns that check's decision."""
    rig.check(rx=100, tx=100)
    d = rig.check(tx=5000)
    assert [p.wan for p in of(d, model.ProbeWan)] == [wan], d
    return d


def test_tunnel_traffic_through_the_wan_overrules_its_silent_track_ips():
    rig = Rig()
    rig.step()
    suspect_on(rig)
    rig.step(dt=0.3)
    rig.traffic(rx=200)  # the tunnel receives through wan meanwhile
    rig.step(dt=0.3)
    d = rig.step(wan_probe("wan", False), probe(False), dt=0.3)
    assert not of(d, model.ApplyPath) or {a.wan for a in of(d, model.ApplyPath)} == {"wan"}
    assert not transitions(d, "failover")
    assert any("a tunnel answered" in t.because for t in transitions(d, "wan")), transitions(d)
    assert rig.engine.snapshot(rig.t)["wans"]["wan"]["healthy"]


def test_rx_from_before_the_path_was_applied_is_no_evidence():
    rig = Rig()
    rig.step()
    rig.up["wan"] = False
    rig.step(dt=1)  # on wanb
    rig.up["wan"] = True
    rig.step(hotplug("ifup", "wan"), dt=1)
    engine = rig.engine
    assert "wan" not in [path.wan for path in engine.applied().values()]
    rig.traffic(rx=500)  # received through wanb: says nothing about wan
    rig.step(dt=1)
    assert not engine.proven("wan")
    assert engine.proven("wanb").get(4) == rig.t


@pytest.mark.parametrize("retry_ok", [True, False])
def test_wan_probe_right_after_a_link_change_is_retried(retry_ok):
    rig = Rig(check_interval=1.0)
    rig.step()
    rig.step(hotplug("ifup", "wan"), dt=0.5)  # carrier back: netifd's ifup
    rig.t = rig.engine.next_check - 1.0
    suspect_on(rig)  # 0.5 s after the ifup: the gateway may still be resolving
    d = rig.step(wan_probe("wan", False), probe(False), dt=0.3)
    assert not of(d, model.ApplyPath) and not transitions(d, "failover"), d
    (tr,) = transitions(d, "wan")
    assert tr.now == "retrying" and "after a link change" in tr.because, tr
    assert rig.engine.snapshot(rig.t)["wans"]["wan"]["healthy"]
    assert d.deadline == pytest.approx(rig.t + core.WAN_RETRY)
    d = rig.step(dt=core.WAN_RETRY)
    assert [p.wan for p in of(d, model.ProbeWan)] == ["wan"]  # the retry
    d = rig.step(wan_probe("wan", retry_ok), dt=0.3)
    moved = [a.wan for a in of(d, model.ApplyPath) if a.wan == "wanb"]
    assert bool(moved) is not retry_ok, d
    assert rig.engine.snapshot(rig.t)["wans"]["wan"]["healthy"] is retry_ok


def fail_round(rig, wan="wan"):
    """One WAN probe round fails along with the tunnel probe."""
    suspect_on(rig, wan)
    return rig.step(wan_probe(wan, False), probe(False), dt=0.5)


def test_one_lost_echo_moves_the_tunnel_but_is_no_flap():
    rig = Rig(failback_holddown=10.0, live=False)
    rig.step()
    rig.up["wan"] = False  # an earlier real outage (the one free loss)
    rig.step(dt=1)
    rig.up["wan"] = True
    rig.wan_ok = {}
    for _ in range(4):
        rig.step(dt=5)
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["wan"] == "wan"
    rig.wan_ok = None
    d = fail_round(rig)
    assert [a.wan for a in of(d, model.ApplyPath)] == ["wanb"]  # left at once
    snap = rig.engine.snapshot(rig.t)["wans"]["wan"]
    assert (snap["healthy"], snap["flaps"], snap["holddown"]) == (False, 1, 10.0)
    rig.wan_ok = {}  # its next round answers: the base hold-down, not a damped one
    rig.check(rx=100, tx=100)
    d = rig.step(dt=0.5)
    snap = rig.engine.snapshot(rig.t)["wans"]["wan"]
    assert (snap["healthy"], snap["flaps"], snap["holddown"]) == (True, 1, 10.0)


def test_a_second_failed_round_confirms_the_loss():
    rig = Rig(failback_holddown=10.0)
    rig.step()
    fail_round(rig)
    assert rig.engine.snapshot(rig.t)["wans"]["wan"]["flaps"] == 0
    d = rig.check(rx=100, tx=100)  # the unhealthy WAN is probed again
    assert [p.wan for p in of(d, model.ProbeWan)] == ["wan"]
    rig.step(wan_probe("wan", False), dt=0.5)
    assert rig.engine.snapshot(rig.t)["wans"]["wan"]["flaps"] == 1


def test_no_failback_onto_a_primary_whose_link_is_back_but_upstream_dead():
    rig = Rig(failback_holddown=10.0, check_interval=1.0, live=True)
    rig.step()
    rig.up["wan"] = False
    rig.step(hotplug("ifdown", "wan"), dt=0.5)
    rig.up["wan"] = True
    back = rig.t + 1
    rig.step(hotplug("ifup", "wan"), at=back)
    rig.wan_ok = {"wan": False}  # carrier back, nothing answers upstream
    applies = []
    for _ in range(120):
        applies += [a.wan for a in of(rig.step(dt=0.5), model.ApplyPath)]
    assert applies == [], applies
    assert not rig.engine.snapshot(rig.t)["wans"]["wan"]["healthy"]
    # the upstream returns: back once its track IPs answered, after the hold-down
    rig.wan_ok = {}
    healed = rig.t
    hold = None
    for _ in range(80):
        applies += [(rig.t, a.wan) for a in of(rig.step(dt=0.5), model.ApplyPath)]
        if hold is None and rig.engine.snapshot(rig.t)["wans"]["wan"]["healthy"]:
            hold = rig.engine.snapshot(rig.t)["wans"]["wan"]["holddown"]
    assert hold == 20.0  # damped: the ifdown and the confirmed dead upstream are two losses
    assert [w for _, w in applies] == ["wan"], applies
    assert hold <= applies[0][0] - healed <= hold + 2.0


def test_failback_waits_for_an_answer_sent_through_the_primary():
    rig = Rig(failback_holddown=5.0, check_interval=1.0, live=True)
    rig.step()
    rig.up["wan"] = False
    rig.step(dt=0.5)
    rig.up["wan"] = True
    d = rig.step(dt=0.5)
    t = rig.t
    probes = of(d, model.ProbeWan)
    while rig.t < t + 5.0 + 0.01:
        d = rig.step(dt=0.25)
        probes += of(d, model.ProbeWan)
        assert not of(d, model.ApplyPath)  # nothing answered yet
    assert probes and {p.wan for p in probes} == {"wan"}
    assert {p.device for p in probes} == {"eth1"}  # through the primary itself
    d = rig.step(wan_probe("wan", True), dt=0.25)
    (ap,) = of(d, model.ApplyPath)
    (tr,) = transitions(d, "failback")
    assert ap.wan == "wan" and "track ips answer" in tr.because, tr


@pytest.mark.parametrize("base, cap, expected", [
    (5.0, 60.0, 60.0),
    (60.0, 300.0, 300.0),
    (600.0, 300.0, 600.0),  # a failback_holddown above the cap is used as it is
])
def test_damped_holddown_never_exceeds_holddown_max(base, cap, expected):
    rig = Rig(failback_holddown=base, holddown_max=cap, live=True)
    rig.step()
    seen = []
    for i in range(30):  # carrier losses 20 s apart
        rig.up["wan"] = i % 2 == 1
        rig.step(dt=10)
        seen.append(rig.engine.snapshot(rig.t)["wans"]["wan"]["holddown"])
    assert max(seen) == expected
    assert seen[0] == base  # the first loss costs nothing


def test_damping_is_forgotten_after_the_flap_window():
    rig = Rig(failback_holddown=5.0, live=True)
    rig.step()
    for i in range(6):
        rig.up["wan"] = i % 2 == 1
        rig.step(dt=10)
    assert rig.engine.snapshot(rig.t)["wans"]["wan"]["holddown"] == 20.0  # 3 losses: 2 beyond the free one
    rig.step(dt=core.FLAP_WINDOW)
    assert rig.engine.snapshot(rig.t)["wans"]["wan"]["holddown"] == 5.0


# ------------------------------------------------------------ health per address family

DUAL = (
    model.Wan("wan", "eth1", track_ips=("192.0.2.254", "2001:db8:ffff::1")),
    model.Wan("wanb", "wwan0", keepalive=25, track_ips=("100.64.0.254", "2001:db8:fffe::1")),
)


def test_wan_probes_go_out_per_family():
    rig = Rig(config=make_config(endpoints=(model.Endpoint(IP6),), wans=DUAL))
    rig.v6 = {"wan", "wanb"}
    rig.step()
    d = suspect_on(rig)
    (pw,) = of(d, model.ProbeWan)
    assert pw.targets == ("2001:db8:ffff::1",)  # the peer's own family only


def test_dual_stack_wan_that_lost_only_ipv6_is_not_taken_back_on_ipv4_evidence():
    rig = Rig(config=make_config(endpoints=(model.Endpoint(IP6),), wans=DUAL, failback_holddown=5.0,
                                 check_interval=1.0))
    rig.v6 = {"wan", "wanb"}
    rig.step()
    suspect_on(rig)
    d = rig.step(wan_probe6("wan", False, 6), probe(False), dt=0.3)
    assert [a.wan for a in of(d, model.ApplyPath)] == ["wanb"]
    snap = rig.engine.snapshot(rig.t)["wans"]["wan"]
    assert snap["healthy"]  # IPv4 through wan is fine: only IPv6 is lost
    assert any(t.now == "IPv6 unhealthy" for t in transitions(d, "wan")), transitions(d)
    applies, asked = [], set()
    for _ in range(40):  # IPv4 answers through wan, IPv6 does not
        d = rig.step(dt=0.5)
        applies += of(d, model.ApplyPath)
        answers = []
        for p in of(d, model.ProbeWan):
            family = model.family(p.targets[0])
            asked.add((p.wan, family))
            answers.append(wan_probe6(p.wan, family == 4 or p.wan == "wanb", family))
        if answers:
            applies += of(rig.step(*answers, dt=0.1), model.ApplyPath)
    assert ("wan", 6) in asked and not applies, applies
    # IPv6 answers again: back after the hold-down
    for _ in range(30):
        d = rig.step(dt=0.5)
        applies += of(d, model.ApplyPath)
        answers = [wan_probe6(p.wan, True, model.family(p.targets[0])) for p in of(d, model.ProbeWan)]
        if answers:
            applies += of(rig.step(*answers, dt=0.1), model.ApplyPath)
    assert [a.wan for a in applies] == ["wan"], applies


def test_ipv4_tunnel_stays_on_a_wan_that_lost_only_ipv6():
    rig = Rig(config=make_config(wans=DUAL))
    rig.v6 = {"wan", "wanb"}
    rig.step()
    engine = rig.engine
    engine.probe_wan_now("wan", [6])
    d = rig.step(wan_probe6("wan", False, 6), wan_probe6("wan", False, 6), dt=1)
    assert not of(d, model.ApplyPath)
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["wan"] == "wan"


# ------------------------------------------------------------ DNS flips


def dns_world(rig, answer, seconds, dt=0.1):
    """Step for ``seconds``, answering every Resolve in the next step with
    ``answer(t)``; returns the ApplyPaths and when."""
    applies, pending = [], []
    end = rig.t + seconds
    while rig.t < end:
        events, pending = pending, []
        d = rig.step(*events, dt=dt)
        applies += [(rig.t, a.address) for a in of(d, model.ApplyPath)]
        pending = [resolved(r.host, [answer(rig.t)], ttl=1) for r in of(d, model.Resolve)]
    return applies


A, B = "203.0.113.5", "203.0.113.6"


def healthy_dns_rig():
    rig = dns_rig(dns_ttl_min=1.0, check_interval=1.0, live=True)
    applies = dns_world(rig, lambda t: A, 5)
    assert [a for _, a in applies] == [A]
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]["state"] == "up"
    return rig


def test_healthy_peer_is_not_re_pinned_while_the_answer_flips():
    rig = healthy_dns_rig()
    start = rig.t
    applies = dns_world(rig, lambda t: B if int((t - start) / 2) % 2 == 0 else A, 60)
    assert applies == []
    events = [e for e in rig.engine.snapshot(rig.t)["events"] if e["kind"] == "resolve" and e["time"] > start]
    assert len(events) == 1 and "flips between" in events[0]["because"], events  # said once
    assert events[0]["now"] == "keeping %s" % A


def test_healthy_peer_follows_a_real_move_within_ttl_min_and_three_checks():
    rig = healthy_dns_rig()
    moved = rig.t
    applies = dns_world(rig, lambda t: B, 10)
    assert [a for _, a in applies] == [B]
    assert applies[0][0] - moved <= 1.0 + 3 * 1.0


def test_suspect_peer_follows_a_changed_answer_at_once():
    rig = healthy_dns_rig()
    rig.live = False
    pending = []
    for _ in range(30):  # the answer moves and the tunnel stops receiving
        events, pending = pending, []
        rig.traffic(tx=5000)
        d = rig.step(*events, dt=0.1)
        pending = [resolved(r.host, [B], ttl=1) for r in of(d, model.Resolve)]
        if of(d, model.ApplyPath):
            break
    (ap,) = of(d, model.ApplyPath)
    assert ap.address == B
    assert any("suspect peer follows" in t.because for t in transitions(d, "resolve")), transitions(d)
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]["state"] in ("suspect", "recovering")


def test_round_robin_answers_holding_the_address_in_use_keep_it():
    rig = healthy_dns_rig()
    pending = []
    applies = []
    asked = 0
    for _ in range(100):
        events, pending = pending, []
        d = rig.step(*events, dt=0.1)
        applies += of(d, model.ApplyPath)
        for r in of(d, model.Resolve):  # the server rotates the order of its two addresses
            asked += 1
            pending.append(resolved(r.host, [B, A] if asked % 2 else [A, B], ttl=1))
    assert asked >= 5 and applies == []


# ------------------------------------------------------------ quiet peers

QUIET_PEER = (model.Peer("wg0", "office", KEY, (model.Endpoint(IP1),), ("10.9.0.0/24",), 25, "10.9.0.1"),)
ECHO_BYTES = 80  # one echo through WireGuard: 44 B of IPv4 padded to 48, plus 32


class IdleWorld:
    """An idle tunnel: the far end sends nothing but its handshake answers
    and echo replies.  Answers come when the shell would give them: an echo
    in 50 ms, a lost one at its timeout."""

    def __init__(self, rig):
        self.rig = rig
        self.dead = set()  # WANs whose upstream silently drops everything
        self.retrying = False  # the far end retries its handshake every 5 s (its answers to us got lost)
        self.retry_at = None
        self.path = None
        self.pending = []  # (time, event, rx bytes it brings)
        self.probes = []  # times of in-tunnel probes
        self.wan_probes = []
        self.applies = []

    def _answer(self, t, ok, event):
        timeout = self.rig.config.settings.probe_timeout
        self.pending.append((t + (0.05 if ok else timeout), event, ECHO_BYTES if ok else 0))

    def run(self, seconds):
        end = self.rig.t + seconds
        while self.rig.t < end:
            at = min([self.rig.engine.next_check] + [p[0] for p in self.pending])
            due = [p for p in self.pending if p[0] <= at]
            self.pending = [p for p in self.pending if p[0] > at]
            for _, _, rx in due:
                self.rig.traffic(rx=rx)
            if self.retrying and self.path in self.dead:
                # its initiation reaches us (downstream works); our response is lost
                if self.retry_at is None:
                    self.retry_at = at
                while self.retry_at <= at:
                    self.rig.traffic(rx=148, tx=92)
                    self.retry_at += 5.0
            d = self.rig.step(*[ev for _, ev, _ in due], at=at)
            for a in d.actions:
                if isinstance(a, model.ApplyPath):
                    self.path = a.wan
                    self.applies.append((self.rig.t, a.wan))
                    if a.wan not in self.dead:  # the kick's handshake is answered
                        self.rig.traffic(rx=92, tx=148 + ECHO_BYTES, handshake=int(self.rig.t))
                elif isinstance(a, model.Probe):
                    self.probes.append(self.rig.t)
                    self.rig.traffic(tx=ECHO_BYTES)
                    self._answer(self.rig.t, self.path not in self.dead, probe(self.path not in self.dead))
                elif isinstance(a, model.ProbeWan):
                    self.wan_probes.append((self.rig.t, a.wan))
                    self._answer(self.rig.t, a.wan not in self.dead, wan_probe(a.wan, a.wan not in self.dead))


def test_quiet_peer_is_probed_once_per_keepalive_interval_and_stays_up():
    rig = Rig(peers=QUIET_PEER)
    world = IdleWorld(rig)
    world.run(100)
    gaps = [b - a for a, b in zip(world.probes, world.probes[1:])]
    assert len(world.probes) == 3 and world.probes[0] - world.applies[0][0] >= 25, world.probes
    interval = model.Settings().check_interval * (1 + 0.05)
    assert all(25 <= g <= 25 + interval + 0.1 for g in gaps), gaps
    assert world.wan_probes == [] and [wan for _, wan in world.applies] == ["wan"]
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]["state"] == "up"
    assert not [t for t in transitions(rig.step(dt=0.1)) if t.kind == "recovery"]


def test_quiet_peer_with_traffic_or_without_probe_target_is_not_probed():
    peers = (dataclasses.replace(QUIET_PEER[0], probe=None),)
    rig = Rig(peers=peers)
    world = IdleWorld(rig)
    world.run(100)
    assert world.probes == []
    rig = Rig(peers=QUIET_PEER)
    world = IdleWorld(rig)
    rig.step()
    for _ in range(60):
        rig.traffic(rx=100, tx=100)
        world.run(1.5)
    assert world.probes == []  # heard from on every check


@pytest.mark.parametrize("retrying", [False, True], ids=["silent", "peer_retries_its_handshake"])
@pytest.mark.parametrize("phase", [0.0, 0.3, 7.0, 13.0, 24.9])
def test_silent_failure_of_an_idle_tunnel_moves_within_keepalive_plus_5s(phase, retrying):
    rig = Rig(peers=QUIET_PEER)
    world = IdleWorld(rig)
    world.retrying = retrying
    world.run(60)
    last = world.probes[-1]
    world.run(last + 0.05 + phase - rig.t)  # the fault comes `phase` s after the last answer
    world.dead.add("wan")
    died = rig.t
    world.run(60)
    moved = [t for t, wan in world.applies if wan == "wanb"]
    assert moved and moved[0] - died <= 25 + 5, (moved, died, world.probes)
    assert [w for _, w in world.wan_probes if _ >= died][:1] == ["wan"]
    snap = rig.engine.snapshot(rig.t)["tunnels"]["wg0"]
    assert snap["wan"] == "wanb" and snap["peers"][KEY]["state"] == "up"


def test_one_lost_echo_of_a_quiet_peer_is_confirmed_before_anything_moves():
    rig = Rig(peers=QUIET_PEER)
    rig.step()
    rig.check(handshake=int(rig.t))
    while True:
        d = rig.check()
        if of(d, model.Probe):
            break
    assert not of(d, model.ProbeWan)  # a quiet peer's echo alone
    d = rig.step(probe(False), dt=1)
    (pw,) = of(d, model.ProbeWan)
    (p,) = of(d, model.Probe)
    assert pw.wan == "wan" and p.target == "10.9.0.1"
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]["state"] == "suspect"
    # the second echo and the WAN answer: nothing moves, the peer is up
    d = rig.step(probe(True), wan_probe("wan", True), dt=0.1)
    assert not of(d, model.ApplyPath)
    snap = rig.engine.snapshot(rig.t)["tunnels"]["wg0"]
    assert snap["wan"] == "wan" and snap["peers"][KEY]["state"] == "up"
    # and it stays up at the next checks, probed again a keepalive later
    for _ in range(3):
        d = rig.check()
        assert not of(d, model.ProbeWan)
    assert rig.engine.snapshot(rig.t)["tunnels"]["wg0"]["peers"][KEY]["state"] == "up"
