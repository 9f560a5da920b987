"""wgrouter.diagnose: parsers, the pure checks, and gather() with FakeRunner."""

import dataclasses
import json
import os
import socket
import sys

import pytest

from tests import fakebus
from tests.fakerunner import FakeRunner
import wgrouter
from wgrouter import diagnose
from wgrouter import model
from wgrouter import uci
from wgrouter import wg
from wgrouter import wgdump
from wgrouter.diagnose import facts as diagnose_facts

NOW = 1_800_000_000
KEY = "mS4HfFcrxugJidRgt8Ad6MMJTD4Zkh1Z7nTBT1aPGlQ="
KEY2 = "DKIFvZJjvFSUYxnMveDX5S7FqirAHZMfPtt1Lq2CKTI="
TUN = "wg0"

FIREWALL_OK = """
config zone
\toption name 'lan'
\tlist network 'lan'
config zone
\toption name 'wan'
\tlist network 'wan'
\tlist network 'wanb'
\toption masq '1'
config zone
\toption name 'vpn'
\tlist network 'wg0'
\toption masq '1'
config forwarding
\toption src 'lan'
\toption dest 'vpn'
"""


def make_config(peers=None, keepalive=25, wan_keepalive=None, endpoints=None, settings=None):
    if peers is None:
        peers = (model.Peer(TUN, "vpn", KEY,
                            endpoints or (model.Endpoint("vpn.example.net", 51820),),
                            allowed_ips=("10.99.0.0/24", "10.200.0.1/32"), keepalive=keepalive),)
    return model.Config(
        settings=settings or model.Settings(),
        wans=(model.Wan("wan", "eth1", keepalive=wan_keepalive, dns_servers=("192.0.2.53",)),
              model.Wan("wanb", "wwan0", dns_servers=("192.0.2.53",))),
        tunnels=(model.Tunnel(TUN, peers, addresses=("10.200.0.2/24",)),))


def link(index, name, mtu=1500, kind=None):
    return {"ifindex": index, "ifname": name, "flags": 0, "up": True, "lower_up": True,
            "pointopoint": False, "operstate": "UP", "carrier": True, "mtu": mtu, "kind": kind}


def addr(index, address, plen):
    return {"family": socket.AF_INET, "ifindex": index, "address": address, "peer": None,
            "prefixlen": plen, "scope": 0, "label": None}


def wg_device(endpoint="192.0.2.10:51820", handshake=NOW - 30, keepalive=25,
              allowed=("10.99.0.0/24", "10.200.0.1/32"), key=KEY, extra=()):
    peers = [wg.PeerInfo(key, endpoint, handshake, 1000, 2000, keepalive, tuple(allowed))]
    return wg.Device(51820, 0, peers + [info for _k, info in extra])


def healthy_facts(**changes):
    facts = diagnose.Facts(
        links=[link(1, "lo", 65536), link(2, "br-lan"), link(3, "eth1"), link(4, "wwan0"),
               link(5, TUN, 1420, "wireguard")],
        addrs=[addr(1, "127.0.0.1", 8), addr(2, "192.168.1.1", 24), addr(3, "10.0.1.2", 24),
               addr(4, "100.64.2.2", 24), addr(5, "10.200.0.2", 24)],
        wans={"wan": model.WanState("wan", "eth1", True, "10.0.1.1", "10.0.1.2"),
              "wanb": model.WanState("wanb", "wwan0", True, "100.64.2.1", "100.64.2.2")},
        wg={TUN: wg_device()},
        routes={"192.0.2.10": diagnose.parse_route_get(
            0, "192.0.2.10 via 10.0.1.1 dev eth1 src 10.0.1.2 uid 0 \n    cache \n", "")},
        dns={"vpn.example.net": {"wan": {"addresses": ["192.0.2.10"], "via": "wan (192.0.2.53)"},
                                 "wanb": {"addresses": ["192.0.2.10"], "via": "wanb (192.0.2.53)"}}},
        conntrack={("192.0.2.10", 51820): {"entries": diagnose.parse_conntrack(
            "udp      17 29 src=10.0.1.2 dst=192.0.2.10 sport=51820 dport=51820 src=192.0.2.10 "
            "dst=10.0.1.2 sport=51820 dport=51820 mark=0 use=1\n"), "error": None}},
        sysctl={"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
                "net.ipv4.conf.eth1.rp_filter": "2", "net.ipv4.conf.wwan0.rp_filter": "2"},
        firewall=uci.parse(FIREWALL_OK, "firewall"),
    )
    return dataclasses.replace(facts, **changes)


def by_check(findings, check):
    return [f for f in findings if f["check"] == check]


def statuses(findings, check):
    return [f["status"] for f in by_check(findings, check)]


# ------------------------------------------------------------------ parsers


def test_wgdump_devices_keep_allowed_ips_and_fwmark():
    text = ("wg0\tPRIV\tPUB\t51820\t0xca6c\n"
            "wg0\t%s\t(none)\t192.0.2.10:51820\t10.99.0.0/24,10.200.0.1/32\t1700000000\t5\t6\t25\n"
            "wg1\tPRIV\tPUB\t0\toff\n"
            "wg1\t%s\t(none)\t(none)\t(none)\t0\t0\t0\toff\n" % (KEY, KEY2))
    devices = wgdump.parse_devices(text)
    assert devices["wg0"].fwmark == 0xCA6C
    assert devices["wg0"].listen_port == 51820
    assert devices["wg0"].peer(KEY).allowed_ips == ("10.99.0.0/24", "10.200.0.1/32")
    assert devices["wg0"].peer(KEY).keepalive == 25
    assert devices["wg1"].fwmark == 0
    assert devices["wg1"].peer(KEY2).allowed_ips == ()
    assert devices["wg1"].peer(KEY2).endpoint is None


@pytest.mark.parametrize("rc,out,err,expect", [
    (0, "192.0.2.10 via 10.0.1.1 dev wan src 10.0.1.2 uid 0 \n    cache \n", "",
     {"dev": "wan", "gateway": "10.0.1.1", "prefsrc": "10.0.1.2", "type": "unicast", "error": None}),
    (0, "10.0.1.5 dev wan src 10.0.1.2 uid 0 \n", "",
     {"dev": "wan", "gateway": None, "prefsrc": "10.0.1.2", "type": "unicast"}),
    (0, "192.0.2.10 dev wg0 table 51820 src 10.200.0.2 uid 0\n", "", {"dev": "wg0", "gateway": None}),
    (0, "unreachable 192.0.2.10 table 2 uid 0 \n", "", {"type": "unreachable", "dev": None}),
    (2, "", "RTNETLINK answers: Network is unreachable\n",
     {"error": "RTNETLINK answers: Network is unreachable", "dev": None}),
])
def test_parse_route_get(rc, out, err, expect):
    got = diagnose.parse_route_get(rc, out, err)
    for k, v in expect.items():
        assert got[k] == v, k


def test_parse_conntrack_splits_original_and_reply():
    out = ("udp      17 170 src=10.0.1.2 dst=192.0.2.10 sport=40751 dport=51820 src=192.0.2.10 "
           "dst=198.51.100.2 sport=51820 dport=40751 [ASSURED] mark=256 use=1\n"
           "conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n")
    [e] = diagnose.parse_conntrack(out)
    assert (e["src"], e["dst"], e["sport"], e["dport"]) == ("10.0.1.2", "192.0.2.10", "40751", "51820")
    assert (e["reply_src"], e["reply_dst"]) == ("192.0.2.10", "198.51.100.2")
    assert e["mark"] == "256"


# ------------------------------------------------------------------ checks


def test_healthy_system_is_all_ok_and_matches_contract():
    findings = diagnose.evaluate(make_config(), healthy_facts(), NOW)
    bad = [f for f in findings if f["status"] != "ok"]
    assert bad == []
    checks = {f["check"] for f in findings}
    for c in ("wan", "handshake", "endpoint", "route", "conntrack", "keepalive", "allowedips",
              "ip_forward", "rp_filter", "firewall_zone", "firewall_masq", "mtu"):
        assert c in checks, c
    result = diagnose.report(findings)
    assert result["worst"] == "ok"
    fakebus.check_reply("diagnose", result)
    fakebus.check_reply("diagnose", json.loads(json.dumps(result)))


@pytest.mark.parametrize("handshake,keepalive,status", [
    (0, 25, "fail"),
    (NOW - 400, 25, "fail"),
    (NOW - 400, 0, "warn"),
    (NOW - 100, 25, "ok"),
])
def test_handshake_age(handshake, keepalive, status):
    facts = healthy_facts(wg={TUN: wg_device(handshake=handshake, keepalive=keepalive)})
    [f] = by_check(diagnose.evaluate(make_config(), facts, NOW), "handshake")
    assert f["status"] == status
    assert f["tunnel"] == TUN and f["peer"] == "vpn"


def test_handshake_limit_follows_settings():
    facts = healthy_facts(wg={TUN: wg_device(handshake=NOW - 100)})
    cfg = make_config(settings=model.Settings(handshake_timeout=60))
    assert statuses(diagnose.evaluate(cfg, facts, NOW), "handshake") == ["fail"]


def test_keepalive_off_behind_nat_warns_naming_the_wan():
    facts = healthy_facts(wg={TUN: wg_device(keepalive=0)})
    findings = diagnose.evaluate(make_config(keepalive=0), facts, NOW)
    warned = [f for f in by_check(findings, "keepalive") if f["status"] == "warn"]
    # 10.0.1.2 (RFC 1918) and 100.64.2.2 (CGNAT)
    assert sorted(f["evidence"].split()[0] for f in warned) == ["wan", "wanb"]
    assert all("keepalive" in f["fix"] for f in warned)


def test_keepalive_public_wan_needs_none():
    facts = healthy_facts(wans={
        "wan": model.WanState("wan", "eth1", True, "198.51.100.1", "198.51.100.2"),
        "wanb": model.WanState("wanb", "wwan0", False)},
        wg={TUN: wg_device(keepalive=0)})
    findings = diagnose.evaluate(make_config(keepalive=0), facts, NOW)
    assert by_check(findings, "keepalive") == []


def test_wan_keepalive_override_counts_for_the_other_wan():
    # wan overrides the peer's keepalive 0 with 25 (the kernel has 25, in use);
    # wanb has no override, so a failover to it would run without keepalive.
    cfg = make_config(keepalive=0, wan_keepalive=25)
    findings = diagnose.evaluate(cfg, healthy_facts(), NOW)
    got = {f["evidence"].split()[0]: f["status"]
           for f in by_check(findings, "keepalive")}
    assert got == {"wan": "ok", "wanb": "warn"}


def test_endpoint_differs_from_dns():
    facts = healthy_facts(dns={"vpn.example.net": {
        "wan": {"addresses": ["192.0.2.11"], "via": "wan (192.0.2.53)"},
        "wanb": {"error": "WAN is down, not asked", "via": "wanb", "skipped": True}}})
    [f] = by_check(diagnose.evaluate(make_config(), facts, NOW), "endpoint")
    assert f["status"] == "warn"
    assert "not what DNS says" in f["summary"]
    assert "192.0.2.11" in f["evidence"] and "wan (192.0.2.53)" in f["evidence"]


def test_endpoint_ip_candidate_matches_without_dns():
    cfg = make_config(endpoints=(model.Endpoint("vpn.example.net", 443),
                                 model.Endpoint("192.0.2.10", 51820)))
    facts = healthy_facts(dns={"vpn.example.net": {"wan": {"addresses": ["192.0.2.11"], "via": "wan"}}})
    assert statuses(diagnose.evaluate(cfg, facts, NOW), "endpoint") == ["ok"]


def test_no_endpoint_fails():
    facts = healthy_facts(wg={TUN: wg_device(endpoint=None)})
    assert statuses(diagnose.evaluate(make_config(), facts, NOW), "endpoint") == ["fail"]


def test_dns_unresolvable_warns():
    facts = healthy_facts(dns={"vpn.example.net": {"wan": {"error": "NXDOMAIN", "via": "wan"},
                                                   "wanb": {"error": "timeout", "via": "wanb"}}})
    [f] = by_check(diagnose.evaluate(make_config(), facts, NOW), "endpoint")
    assert f["status"] == "warn" and "NXDOMAIN" in f["evidence"]


def test_route_into_the_tunnel_is_a_loop():
    facts = healthy_facts(
        wg={TUN: wg_device(allowed=("0.0.0.0/0",))},
        routes={"192.0.2.10": diagnose.parse_route_get(0, "192.0.2.10 dev wg0 src 10.200.0.2 uid 0\n", "")})
    findings = diagnose.evaluate(make_config(), facts, NOW)
    [f] = by_check(findings, "route")
    assert f["status"] == "fail" and "routing loop" in f["summary"]
    assert "0.0.0.0/0" in f["evidence"]


def test_allowed_ips_covering_endpoint_with_host_route_is_ok():
    facts = healthy_facts(wg={TUN: wg_device(allowed=("0.0.0.0/0",))})
    findings = diagnose.evaluate(make_config(), facts, NOW)
    assert statuses(findings, "route") == ["ok"]
    assert statuses(findings, "allowedips_endpoint") == ["ok"]


def test_route_via_down_wan_fails():
    facts = healthy_facts(wans={
        "wan": model.WanState("wan", "eth1", False, None, None),
        "wanb": model.WanState("wanb", "wwan0", True, "100.64.2.1", "100.64.2.2")})
    findings = diagnose.evaluate(make_config(), facts, NOW)
    [f] = by_check(findings, "route")
    assert f["status"] == "fail" and "wan, which is down" in f["summary"]
    assert statuses(findings, "wan") == ["warn", "ok"]


def test_no_route_fails():
    facts = healthy_facts(routes={"192.0.2.10": diagnose.parse_route_get(
        2, "", "RTNETLINK answers: Network is unreachable")})
    [f] = by_check(diagnose.evaluate(make_config(), facts, NOW), "route")
    assert f["status"] == "fail" and "unreachable" in f["evidence"]


def test_route_out_of_a_non_wan_warns():
    facts = healthy_facts(routes={"192.0.2.10": diagnose.parse_route_get(
        0, "192.0.2.10 via 192.168.1.254 dev br-lan src 192.168.1.1\n", "")})
    assert statuses(diagnose.evaluate(make_config(), facts, NOW), "route") == ["warn"]


def test_conntrack_entry_on_a_vanished_address_fails():
    out = ("udp 17 100 src=10.0.1.2 dst=192.0.2.10 sport=51820 dport=51820 src=192.0.2.10 "
           "dst=10.0.1.2 sport=51820 dport=51820 [ASSURED] mark=0 use=1\n"
           "udp 17 29 src=100.64.2.2 dst=192.0.2.10 sport=51820 dport=51820 src=192.0.2.10 "
           "dst=100.64.2.2 sport=51820 dport=51820 mark=0 use=1\n")
    facts = healthy_facts(
        addrs=[addr(2, "192.168.1.1", 24), addr(4, "100.64.2.2", 24)],
        wans={"wan": model.WanState("wan", "eth1", False),
              "wanb": model.WanState("wanb", "wwan0", True, "100.64.2.1", "100.64.2.2")},
        routes={"192.0.2.10": diagnose.parse_route_get(
            0, "192.0.2.10 via 100.64.2.1 dev wwan0 src 100.64.2.2\n", "")},
        conntrack={("192.0.2.10", 51820): {"entries": diagnose.parse_conntrack(out), "error": None}})
    [f] = by_check(diagnose.evaluate(make_config(), facts, NOW), "conntrack")
    assert f["status"] == "fail"
    assert "10.0.1.2" in f["summary"] and "100.64.2.2" not in f["summary"]
    assert "conntrack -D -p udp --orig-dst 192.0.2.10 --orig-port-dst 51820" in f["fix"]


def test_conntrack_entry_on_the_other_up_wan_fails():
    out = ("udp 17 100 src=100.64.2.2 dst=192.0.2.10 sport=51820 dport=51820 src=192.0.2.10 "
           "dst=100.64.2.2 sport=51820 dport=51820 mark=0 use=1\n")
    facts = healthy_facts(conntrack={("192.0.2.10", 51820): {
        "entries": diagnose.parse_conntrack(out), "error": None}})
    [f] = by_check(diagnose.evaluate(make_config(), facts, NOW), "conntrack")
    assert f["status"] == "fail" and "route now uses wan" in f["summary"]


def test_conntrack_missing_tool_warns():
    facts = healthy_facts(conntrack={("192.0.2.10", 51820): {"entries": [], "error": "command not found"}})
    assert statuses(diagnose.evaluate(make_config(), facts, NOW), "conntrack") == ["warn"]


def test_allowed_ips_inside_lan_fail():
    facts = healthy_facts(wg={TUN: wg_device(allowed=("10.99.0.0/24", "192.168.1.0/24"))})
    [f] = by_check(diagnose.evaluate(make_config(), facts, NOW), "allowedips_local")
    assert f["status"] == "fail"
    assert "192.168.1.0/24" in f["summary"] and "br-lan" in f["summary"] and "LAN" in f["summary"]


def test_allowed_ips_containing_wan_subnet_warn_and_full_tunnel_is_fine():
    facts = healthy_facts(wg={TUN: wg_device(allowed=("10.0.0.0/8",))})
    [f] = by_check(diagnose.evaluate(make_config(), facts, NOW), "allowedips_local")
    assert f["status"] == "warn" and "WAN" in f["summary"]
    facts = healthy_facts(wg={TUN: wg_device(allowed=("0.0.0.0/0",))})
    assert by_check(diagnose.evaluate(make_config(), facts, NOW), "allowedips_local") == []


def test_allowed_ips_overlap_between_peers():
    other = wg.PeerInfo(KEY2, "192.0.2.20:51820", NOW - 10, 1, 1, 25, ("10.99.0.128/25",))
    facts = healthy_facts(wg={TUN: wg_device(extra=[(KEY2, other)])})
    cfg = make_config()
    peer2 = model.Peer(TUN, "site2", KEY2, (model.Endpoint("192.0.2.20"),), ("10.99.0.128/25",), 25)
    cfg = dataclasses.replace(cfg, tunnels=(dataclasses.replace(cfg.tunnels[0],
                                                                peers=cfg.tunnels[0].peers + (peer2,)),))
    [f] = by_check(diagnose.evaluate(cfg, facts, NOW), "allowedips_overlap")
    assert f["status"] == "warn"
    assert "10.99.0.0/24" in f["summary"] and "10.99.0.128/25" in f["summary"]


def test_missing_tunnel_and_missing_peer_fail():
    findings = diagnose.evaluate(make_config(), healthy_facts(wg={}), NOW)
    assert statuses(findings, "tunnel") == ["fail"]
    facts = healthy_facts(wg={TUN: wg_device(key=KEY2)})
    assert statuses(diagnose.evaluate(make_config(), facts, NOW), "peer") == ["fail"]


def test_ip_forward_off_fails():
    facts = healthy_facts(sysctl=dict(healthy_facts().sysctl, **{"net.ipv4.ip_forward": "0"}))
    [f] = by_check(diagnose.evaluate(make_config(), facts, NOW), "ip_forward")
    assert f["status"] == "fail" and "ip_forward=1" in f["fix"]


@pytest.mark.parametrize("all_value,dev_value,status", [
    ("0", "1", "warn"), ("1", "0", "warn"), ("2", "1", "ok"), ("0", "2", "ok"), ("0", "0", "ok")])
def test_rp_filter_effective_value(all_value, dev_value, status):
    sysctl = dict(healthy_facts().sysctl, **{"net.ipv4.conf.all.rp_filter": all_value,
                                             "net.ipv4.conf.wwan0.rp_filter": dev_value})
    findings = diagnose.evaluate(make_config(), healthy_facts(sysctl=sysctl), NOW)
    [f] = [f for f in by_check(findings, "rp_filter") if "wanb" in f["summary"]]
    assert f["status"] == status


def test_firewall_tunnel_without_zone_fails_and_wan_without_masq_fails():
    text = FIREWALL_OK.replace("\tlist network 'wg0'\n", "")
    text = text.replace("\toption masq '1'\nconfig zone", "\nconfig zone", 1)  # the wan zone's
    findings = diagnose.evaluate(make_config(), healthy_facts(firewall=uci.parse(text, "firewall")), NOW)
    [zone] = by_check(findings, "firewall_zone")
    assert zone["status"] == "fail" and "wg0 is in no firewall zone" in zone["summary"]
    masq = by_check(findings, "firewall_masq")
    assert [f["status"] for f in masq] == ["fail", "fail"]


def test_firewall_no_forwarding_into_tunnel_zone_warns():
    text = FIREWALL_OK.split("config forwarding")[0]
    findings = diagnose.evaluate(make_config(), healthy_facts(firewall=uci.parse(text, "firewall")), NOW)
    assert statuses(findings, "firewall_zone") == ["warn"]


def test_firewall_missing_file_warns():
    findings = diagnose.evaluate(make_config(), healthy_facts(firewall=None), NOW)
    assert statuses(findings, "firewall") == ["warn"]


def test_mtu_too_big_for_backup_warns_with_safe_value():
    facts = healthy_facts()
    facts.links[3] = link(4, "wwan0", 1280)
    [f] = by_check(diagnose.evaluate(make_config(), facts, NOW), "mtu")
    assert f["status"] == "warn"
    assert "wanb (mtu 1280)" in f["summary"]
    assert "option mtu '1220'" in f["fix"]


def test_mtu_too_big_for_wan_in_use_fails_and_ipv6_overhead():
    facts = healthy_facts()
    facts.links[2] = link(3, "eth1", 1492)  # PPPoE
    [f] = by_check(diagnose.evaluate(make_config(), facts, NOW), "mtu")
    assert f["status"] == "ok"  # 1420 + 60 fits 1492
    facts.links[4] = link(5, TUN, 1450, "wireguard")
    [f] = by_check(diagnose.evaluate(make_config(), facts, NOW), "mtu")
    assert f["status"] == "fail" and "'1432'" in f["fix"]
    facts = healthy_facts(wg={TUN: wg_device(endpoint="[2001:db8::1]:51820")})
    [f] = by_check(diagnose.evaluate(make_config(), facts, NOW), "mtu")
    assert f["status"] == "ok" and "80 B overhead" in f["evidence"]


def test_worst_and_text_format():
    findings = [diagnose.finding("a", "ok", "fine"), diagnose.finding("b", "warn", "hmm", "ev", "do x"),
                diagnose.finding("c", "fail", "bad", "ev2", "do y", tunnel="wg0", peer="vpn")]
    assert diagnose.worst(findings) == "fail"
    assert diagnose.worst(findings[:2]) == "warn"
    assert diagnose.worst([]) == "ok"
    text = diagnose.format_text(diagnose.report(findings))
    lines = text.splitlines()
    assert lines[0].startswith("[ok]") and "a: fine" in lines[0]
    assert lines[1].startswith("[warn] b: hmm -- fix: do x")
    assert any(line.startswith("[fail] c (wg0 peer vpn): bad -- fix: do y") for line in lines)
    assert lines[-1] == "1 ok, 1 warn, 1 fail: fail"


@pytest.mark.parametrize("worst,code", [("ok", 0), ("warn", 1), ("fail", 2)])
def test_main_exit_codes_and_json(monkeypatch, capsys, worst, code):
    result = diagnose.report([diagnose.finding("x", worst, "s")])
    monkeypatch.setattr(diagnose, "run", lambda root: result)
    assert diagnose.main("/nonexistent", as_json=True) == code
    assert json.loads(capsys.readouterr().out) == result


def test_run_with_broken_config_reports_fail(tmp_path):
    result = diagnose.run(str(tmp_path))
    assert result["worst"] == "fail"
    assert result["findings"][0]["check"] == "config"
    fakebus.check_reply("diagnose", result)


# ------------------------------------------------------------------ gather


WG_DUMP = ("wg0\tPRIV\tPUB\t51820\toff\n"
           "wg0\t%s\t(none)\t192.0.2.10:51820\t10.99.0.0/24,10.200.0.1/32\t%d\t5\t6\t25\n"
           "wgother\tPRIV\tPUB\t1\toff\n" % (KEY, NOW - 5))

# no in-process transport: every device comes from the scripted `wg show all dump`
NO_TRANSPORT = wg.Client(())
READ_ONLY = (["wg", "show"], ["ip", "route", "get"], ["conntrack", "-L"])


def fake_dumps():
    links = [link(1, "lo", 65536), link(2, "br-lan"), link(3, "eth1"), link(4, "wwan0"),
             link(5, "wg0", 1420, "wireguard")]
    addrs = [addr(2, "192.168.1.1", 24), addr(3, "10.0.1.2", 24), addr(4, "100.64.2.2", 24)]
    routes = [{"family": socket.AF_INET, "dst": None, "dst_len": 0, "gateway": gw, "oif": oif,
               "table": 254, "metric": metric, "type": "unicast", "protocol": 4, "scope": 0,
               "prefsrc": None, "nexthops": []}
              for gw, oif, metric in (("10.0.1.1", 3, 10), ("100.64.2.1", 4, 20))]
    return links, addrs, routes


def test_gather_reads_only_and_collects_everything(tmp_path):
    (tmp_path / "etc/config").mkdir(parents=True)
    (tmp_path / "etc/config/firewall").write_text(FIREWALL_OK)
    fake = FakeRunner()
    fake.on(["wg", "show", "all", "dump"], out=WG_DUMP)
    fake.on(["ip", "route", "get", "192.0.2.10"],
            out="192.0.2.10 via 10.0.1.1 dev eth1 src 10.0.1.2 uid 0\n")
    fake.on(["conntrack"], out="udp 17 29 src=10.0.1.2 dst=192.0.2.10 sport=51820 dport=51820 "
                               "src=192.0.2.10 dst=10.0.1.2 sport=51820 dport=51820 mark=0 use=1\n",
            err="conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n")
    fake.on([sys.executable], out='{"addresses": ["192.0.2.10"], "ttl": 5}\n')
    asked = []

    def sysctls(names):
        asked.extend(names)
        return {n: ("1" if n.endswith("ip_forward") else "2") for n in names}

    cfg = make_config()
    facts = diagnose.gather(str(tmp_path), cfg, fake, dumps=fake_dumps, sysctls=sysctls, wg=NO_TRANSPORT)
    assert set(facts.wg) == {"wg0"}  # wgother is not in this namespace
    assert facts.routes["192.0.2.10"]["dev"] == "eth1"
    assert facts.conntrack[("192.0.2.10", 51820)]["entries"][0]["src"] == "10.0.1.2"
    assert set(facts.dns["vpn.example.net"]) == {"wan", "wanb"}
    assert facts.dns["vpn.example.net"]["wan"]["addresses"] == ["192.0.2.10"]
    assert "net.ipv4.conf.wwan0.rp_filter" in asked and "net.ipv4.ip_forward" in asked
    assert facts.wans["wan"].up and facts.wans["wan"].address == "10.0.1.2"
    assert [s.type for s in facts.firewall].count("zone") == 3
    # the resolver child is asked through each WAN device
    resolves = [argv for argv in fake.calls if argv[0] == sys.executable]
    assert [argv[argv.index("--device") + 1] for argv in resolves] == ["eth1", "wwan0"]
    assert all(argv[-1] == "vpn.example.net" for argv in resolves)
    assert ["conntrack", "-L", "-p", "udp", "--orig-dst", "192.0.2.10",
            "--orig-port-dst", "51820"] in fake.calls
    # nothing but reads
    for argv in fake.calls:
        if argv[0] == sys.executable:
            continue
        assert any(argv[:len(p)] == p for p in READ_ONLY), argv
    result = diagnose.report(diagnose.evaluate(cfg, facts, NOW))
    assert result["worst"] == "ok", [f for f in result["findings"] if f["status"] != "ok"]


def test_gather_with_fwmark_asks_route_with_mark_and_skips_down_wan_dns(tmp_path):
    fake = FakeRunner()
    fake.on(["wg", "show", "all", "dump"], out=WG_DUMP.replace("51820\toff", "51820\t0xca6c", 1))
    links, addrs, routes = fake_dumps()
    routes = routes[:1]  # wanb has no default route: down
    facts = diagnose.gather(str(tmp_path), make_config(), fake, dumps=lambda: (links, addrs, routes),
                            sysctls=lambda names: {}, wg=NO_TRANSPORT)
    assert ["ip", "route", "get", "192.0.2.10", "mark", "0xca6c"] in fake.calls
    assert facts.dns["vpn.example.net"]["wanb"].get("skipped") is True
    assert facts.firewall is None


def test_gather_survives_missing_tools(tmp_path):
    fake = FakeRunner()
    fake.on(["wg"], missing=True)
    facts = diagnose.gather(str(tmp_path), make_config(), fake, dumps=fake_dumps,
                            sysctls=lambda n: {}, wg=NO_TRANSPORT)
    assert "not found" in facts.wg_error
    findings = diagnose.evaluate(make_config(), facts, NOW)
    assert statuses(findings, "wireguard") == ["fail"]
    fake = FakeRunner()
    fake.on(["wg", "show", "all", "dump"], out=WG_DUMP)
    fake.on(["conntrack"], missing=True)
    facts = diagnose.gather(str(tmp_path), make_config(), fake, dumps=fake_dumps,
                            sysctls=lambda n: {}, wg=NO_TRANSPORT)
    assert "not found" in facts.conntrack[("192.0.2.10", 51820)]["error"]


def gather_without_dns_servers(tmp_path, answer):
    """gather() for WANs without option dns_server; (config, facts, resolver argvs)."""
    fake = FakeRunner()
    fake.on(["wg", "show", "all", "dump"], out=WG_DUMP)
    fake.on([sys.executable], out='{"addresses": ["%s"], "ttl": 5}\n' % answer)
    cfg = make_config()
    cfg = dataclasses.replace(cfg, wans=tuple(dataclasses.replace(w, dns_servers=()) for w in cfg.wans))
    facts = diagnose.gather(str(tmp_path), cfg, fake, dumps=fake_dumps, sysctls=lambda n: {}, wg=NO_TRANSPORT)
    return cfg, facts, [argv for argv in fake.calls if argv[0] == sys.executable]


def test_gather_asks_the_system_resolver_once_for_wans_without_servers(tmp_path):
    cfg, facts, resolves = gather_without_dns_servers(tmp_path, "192.0.2.11")
    assert len(resolves) == 1 and "--device" not in resolves[0] and "--server" not in resolves[0]
    assert set(facts.dns["vpn.example.net"]) == {diagnose.SYSTEM_RESOLVER}
    [f] = by_check(diagnose.evaluate(cfg, facts, NOW), "endpoint")
    assert f["status"] == "warn" and "the system resolver -> 192.0.2.11" in f["evidence"]


def test_gather_asks_the_servers_netifd_learned_on_each_wan(tmp_path):
    auto = tmp_path / "tmp/resolv.conf.d/resolv.conf.auto"
    auto.parent.mkdir(parents=True)
    auto.write_text("# Interface wan\nnameserver 198.51.100.53\n"
                    "# Interface wanb\nnameserver 100.64.0.53\nnameserver fe80::1%wwan0\n")
    _, facts, resolves = gather_without_dns_servers(tmp_path, "192.0.2.10")
    asked = {argv[argv.index("--device") + 1]: [argv[i + 1] for i, a in enumerate(argv) if a == "--server"]
             for argv in resolves}
    assert asked == {"eth1": ["198.51.100.53"], "wwan0": ["100.64.0.53"]}, resolves
    assert diagnose.SYSTEM_RESOLVER not in facts.dns["vpn.example.net"]


def test_resolver_child_failure_is_reported(tmp_path):
    fake = FakeRunner()
    fake.on(["wg", "show", "all", "dump"], out=WG_DUMP)
    fake.on([sys.executable], rc=1, out='{"error": "NXDOMAIN"}\n')
    facts = diagnose.gather(str(tmp_path), make_config(), fake, dumps=fake_dumps,
                            sysctls=lambda n: {}, wg=NO_TRANSPORT)
    assert facts.dns["vpn.example.net"]["wan"]["error"] == "NXDOMAIN"
    fake = FakeRunner()
    fake.on(["wg", "show", "all", "dump"], out=WG_DUMP)
    fake.on([sys.executable], rc=1, err="Traceback: boom")
    facts = diagnose.gather(str(tmp_path), make_config(), fake, dumps=fake_dumps,
                            sysctls=lambda n: {}, wg=NO_TRANSPORT)
    assert "boom" in facts.dns["vpn.example.net"]["wan"]["error"]


def test_passive_peer_without_endpoint_is_fine():
    peer = model.Peer(TUN, "phone", KEY, (), allowed_ips=("10.99.0.0/24",))
    cfg = make_config(peers=(peer,))
    facts = healthy_facts(wg={TUN: wg_device(endpoint=None, keepalive=0)})
    findings = diagnose.evaluate(cfg, facts, NOW)
    assert statuses(findings, "endpoint") == ["ok"]
    assert by_check(findings, "route") == [] and by_check(findings, "conntrack") == []


def test_resolver_child_runs_this_package_copy():
    fake = FakeRunner()
    fake.on([sys.executable], out='{"addresses": ["192.0.2.10"], "ttl": 5}\n')
    wan = model.Wan("wan", "eth1", dns_servers=("192.0.2.53", "192.0.2.54"))
    answer = diagnose_facts._resolve(fake, "vpn.example.net", wan)
    assert answer == {"addresses": ["192.0.2.10"], "via": "wan (192.0.2.53, 192.0.2.54)"}
    [argv] = fake.calls
    assert argv[1] == "-c" and repr(os.path.dirname(os.path.dirname(
        wgrouter.__file__))) in argv[2]
    assert argv[argv.index("--device") + 1] == "eth1"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--server"] == ["192.0.2.53", "192.0.2.54"]


# ------------------------------------------------------------------ whose host routes


def host_route(gateway, oif, proto, metric=0, table=254, dst="192.0.2.10"):
    return {"family": socket.AF_INET, "dst": dst, "dst_len": 32, "gateway": gateway, "oif": oif,
            "table": table, "metric": metric, "type": "unicast", "protocol": proto, "scope": 0,
            "prefsrc": None, "nexthops": []}


def test_wgrouters_host_route_is_told_from_netifds_pin():
    """Both are in the kernel (nohostroute 0 on a static WAN): ours carries
    wgrouter's protocol, netifd's is proto static and stays when we stop."""
    from wgrouter import apply
    facts = healthy_facts(kernel_routes=[
        host_route("100.64.2.1", 4, apply.ROUTE_PROTO),
        host_route("10.0.1.1", 3, 4, metric=10)])
    found = by_check(diagnose.evaluate(make_config(), facts, NOW), "hostroute")
    assert [f["status"] for f in found] == ["ok", "warn"]
    assert found[0]["evidence"] == "192.0.2.10/32 via 100.64.2.1 dev wwan0 proto 119 (wgrouter) metric 0"
    assert "netifd pins" in found[1]["summary"] and "stays when wgrouter stops" in found[1]["summary"]
    assert found[1]["evidence"].startswith("192.0.2.10/32 via 10.0.1.1 dev eth1 proto static metric 10")
    assert "nohostroute '1'" in found[1]["fix"] and "'wg0'" in found[1]["fix"]


def test_only_wgrouters_host_route_is_ok_and_names_its_table():
    from wgrouter import apply
    facts = healthy_facts(kernel_routes=[host_route("10.0.1.1", 3, apply.ROUTE_PROTO, table=1),
                                         host_route("10.0.1.1", 3, 4, dst="192.0.2.99")])
    found = by_check(diagnose.evaluate(make_config(), facts, NOW), "hostroute")
    assert [f["status"] for f in found] == ["ok"]
    assert "dev eth1 table 1 proto 119" in found[0]["evidence"]


def test_a_host_route_of_someone_else_warns_and_none_says_nothing():
    facts = healthy_facts(kernel_routes=[host_route("10.0.1.1", 3, 3)])
    [f] = by_check(diagnose.evaluate(make_config(), facts, NOW), "hostroute")
    assert f["status"] == "warn" and "neither wgrouter's nor netifd's" in f["summary"]
    assert "proto boot" in f["evidence"]
    assert by_check(diagnose.evaluate(make_config(), healthy_facts(), NOW), "hostroute") == []


def test_gather_keeps_the_kernels_routes_for_the_host_route_check(tmp_path):
    fake = FakeRunner()
    fake.on(["wg", "show", "all", "dump"], out=WG_DUMP)
    links, addrs, routes = fake_dumps()
    pin = host_route("10.0.1.1", 3, 4, metric=10)
    facts = diagnose.gather(str(tmp_path), make_config(), fake,
                            dumps=lambda: (links, addrs, routes + [pin]),
                            sysctls=lambda names: {}, wg=NO_TRANSPORT)
    assert pin in facts.kernel_routes


# ------------------------------------------------------------------ WireGuard read as the daemon reads it


class Transport:
    """A wg transport answering from {device: wg.Device} (as tests/test_wg.py's):
    absent is no such device, ``unavailable`` ones it cannot answer for."""

    def __init__(self, name, devices, unavailable=()):
        self.name = name
        self.devices = devices
        self.unavailable = set(unavailable)
        self.asked = []
        self.closed = False

    def device(self, ifname):
        self.asked.append(ifname)
        if ifname in self.unavailable:
            raise wg.Unavailable("%s: not here" % ifname)
        if ifname not in self.devices:
            raise wg.NoDevice(ifname)
        return self.devices[ifname]

    def close(self):
        self.closed = True


def wg_links():
    links, addrs, routes = fake_dumps()
    # a wireguard-go device (a tun link) and a tun that is no WireGuard (OpenVPN's)
    return links + [link(6, "wgu", 1420, "tun"), link(7, "tun0", 1500, "tun")], addrs, routes


UAPI_DEV = wg.Device(0, 0, [wg.PeerInfo(KEY2, None, 0, 0, 0, 0, ("10.98.0.0/24",))])


def test_gather_reads_each_device_in_process_and_forks_no_wg(tmp_path):
    kernel_dev = dataclasses.replace(wg_device(endpoint="192.0.2.10:51820"), fwmark=0xCA6C)
    # "wgaway": a UAPI socket of a device in another namespace (they are shared)
    uapi = Transport("uapi", {"wgu": UAPI_DEV, "wgaway": UAPI_DEV}, unavailable=("wg0",))
    genl = Transport("genetlink", {"wg0": kernel_dev})
    fake = FakeRunner()
    facts = diagnose.gather(str(tmp_path), make_config(), fake, dumps=wg_links, sysctls=lambda n: {},
                            wg=wg.Client((uapi, genl)))
    assert [argv for argv in fake.calls if argv[0] == "wg"] == []
    assert facts.wg == {"wg0": kernel_dev, "wgu": UAPI_DEV} and facts.wg_error is None
    assert facts.wg_via == {"wg0": "genetlink", "wgu": "uapi"}
    # only WireGuard-like links of this namespace are asked about; tun0 is none
    assert sorted(uapi.asked) == ["tun0", "wg0", "wgu"] and "wgaway" not in genl.asked
    # the device's own field reaches the route lookup
    assert ["ip", "route", "get", "192.0.2.10", "mark", "0xca6c"] in fake.calls


def test_gather_forks_wg_only_for_the_device_no_transport_answers(tmp_path):
    dump = (WG_DUMP.replace("51820\toff", "51820\t0xca6c", 1)
            + "wgu\tPRIV\tPUB\t1\toff\nwgu\t%s\t(none)\t192.0.2.99:1\t(none)\t5\t5\t5\toff\n" % KEY2)
    fake = FakeRunner().on(["wg", "show", "all", "dump"], out=dump)
    uapi = Transport("uapi", {"wgu": UAPI_DEV}, unavailable=("wg0", "tun0"))
    facts = diagnose.gather(str(tmp_path), make_config(), fake, dumps=wg_links, sysctls=lambda n: {},
                            wg=wg.Client((uapi,)))
    assert [argv for argv in fake.calls if argv[0] == "wg"] == [["wg", "show", "all", "dump"]]
    assert facts.wg_via == {"wg0": "wg", "wgu": "uapi"}  # tun0 is in no dump: no WireGuard
    assert facts.wg["wgu"] is UAPI_DEV  # what the transport answered, not the dump's
    assert facts.wg["wg0"].fwmark == 0xCA6C and facts.peer(make_config().tunnels[0].peers[0]).rx == 5
    assert ["ip", "route", "get", "192.0.2.10", "mark", "0xca6c"] in fake.calls
    # and when wg cannot answer either: why, for both ways, and what was read stays
    fake = FakeRunner().on(["wg"], missing=True)
    facts = diagnose.gather(str(tmp_path), make_config(), fake, dumps=wg_links, sysctls=lambda n: {},
                            wg=wg.Client((uapi,)))
    assert "not found" in facts.wg_error and "wg0: not here" in facts.wg_error
    assert facts.wg == {"wgu": UAPI_DEV} and facts.wg_via == {"wgu": "uapi"}


def test_gather_uses_the_daemons_transports_by_default_and_closes_them(tmp_path, monkeypatch):
    genl = Transport("genetlink", {"wg0": wg_device()})
    client = wg.Client
    monkeypatch.setattr(diagnose_facts.wg_mod, "Client", lambda: client((genl,)))
    facts = diagnose.gather(str(tmp_path), make_config(), FakeRunner(), dumps=fake_dumps, sysctls=lambda n: {})
    assert facts.wg_via == {"wg0": "genetlink"} and genl.closed
    given = client((Transport("genetlink", {"wg0": wg_device()}),))
    diagnose.gather(str(tmp_path), make_config(), FakeRunner(), dumps=fake_dumps, sysctls=lambda n: {},
                    wg=given)
    assert not given.transports[0].closed  # the caller's client stays the caller's


def test_report_says_how_each_device_was_read():
    facts = healthy_facts(wg_via={TUN: "genetlink", "wgu": "wg"})
    result = diagnose.report(diagnose.evaluate(make_config(), facts, NOW))
    [f] = by_check(result["findings"], "wireguard")
    assert f["status"] == "ok" and f["summary"] == "WireGuard read: wg0 through genetlink, wgu through wg"
    assert "[ok]   wireguard: WireGuard read: wg0 through genetlink, wgu through wg" in diagnose.format_text(result)
    fakebus.check_reply("diagnose", result)
