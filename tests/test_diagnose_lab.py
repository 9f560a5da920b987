"""`wgrouter diagnose` in the dual-WAN lab: each broken situation is built for
real, and diagnose must name it, and change nothing while looking."""

import json
import os
import sys

import pytest

from tests.lab import faults
from tests.lab import topology
from wgrouter import diagnose

pytestmark = pytest.mark.lab

REPO = topology.REPO
VPN_A, VPN_B = topology.VPN_ADDRESSES


def firewall_text(tunnel):
    return """
config defaults
\toption input 'REJECT'
\toption output 'ACCEPT'
\toption forward 'REJECT'

config zone
\toption name 'lan'
\tlist network 'lan'
\toption input 'ACCEPT'
\toption output 'ACCEPT'
\toption forward 'ACCEPT'

config zone
\toption name 'wan'
\tlist network 'wan'
\tlist network 'wanb'
\toption input 'REJECT'
\toption output 'ACCEPT'
\toption forward 'REJECT'
\toption masq '1'

config zone
\toption name 'vpn'
\tlist network '%s'
\toption input 'REJECT'
\toption output 'ACCEPT'
\toption forward 'REJECT'
\toption masq '1'

config forwarding
\toption src 'lan'
\toption dest 'wan'

config forwarding
\toption src 'lan'
\toption dest 'vpn'
""" % tunnel


def bring_up(lab, block_server=False):
    """The wgrouter configuration (nohostroute=1) with the tunnel set up by
    the netifd stand-in, but no daemon: nothing repairs what a test breaks."""
    lab.write_network_config(nohostroute=True)
    lab.write_wgrouter_config()
    with open(os.path.join(lab.root, "etc/config/firewall"), "w") as f:
        f.write(firewall_text(lab.router_wg))
    if block_server:
        faults.vpn_address_down(lab, VPN_A)
    lab.netifd.configure(mode="wgrouter", hotplug_dir=None)
    assert lab.netifd.setup_tunnel()
    if not block_server:
        assert lab.tunnel_works(10), "the lab tunnel never came up"
    return lab


def diagnose_json(lab):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    r = lab.run("router", sys.executable, "-m", "wgrouter", "diagnose", "--json", "--root", lab.root,
                env=env, check=False, timeout=60)
    assert r.returncode in (0, 1, 2), r.stderr
    result = json.loads(r.stdout)
    assert r.returncode == diagnose.EXIT_CODES[result["worst"]]
    return result


def snapshot(lab):
    """Routes, rules, WireGuard config (without counters and handshake times),
    nft ruleset and the sysctls diagnose reads."""
    out = {}
    for name, argv in (("routes4", ["ip", "-4", "route", "show", "table", "all"]),
                       ("routes6", ["ip", "-6", "route", "show", "table", "all"]),
                       ("rules4", ["ip", "rule"]),
                       ("rules6", ["ip", "-6", "rule"]),
                       ("links", ["ip", "-o", "link"]),
                       ("nft", ["nft", "list", "ruleset"])):
        lines = lab.run("router", *argv, check=False).stdout.splitlines()
        # IPv6 link-local addresses (and their routes) appear by themselves
        # when DAD ends; they are no doing of diagnose.
        out[name] = sorted(line for line in lines if "fe80:" not in line)
    dump = lab.run("router", "wg", "show", lab.router_wg, "dump").stdout
    rows = []
    for line in dump.splitlines():
        fields = line.split("\t")
        if len(fields) == 8:  # peer: drop latest handshake, rx, tx
            fields = fields[:4] + fields[7:]
        rows.append(fields)
    out["wg"] = rows
    sysctls = ["net/ipv4/ip_forward", "net/ipv4/conf/all/rp_filter", "net/ipv4/conf/wan/rp_filter",
               "net/ipv4/conf/wanb/rp_filter"]
    out["sysctl"] = lab.run("router", "cat", *["/proc/sys/" + s for s in sysctls], check=False).stdout
    return out


def diagnose_readonly(lab):
    before = snapshot(lab)
    result = diagnose_json(lab)
    after = snapshot(lab)
    for key in before:
        assert before[key] == after[key], "diagnose changed %s" % key
    return result


def find(result, check, **match):
    return [f for f in result["findings"] if f["check"] == check
            and all(k in f[key] for key, k in match.items())]


def status_of(result, check, **match):
    return sorted({f["status"] for f in find(result, check, **match)})


# ------------------------------------------------------------------ healthy


def test_healthy_lab_is_ok_and_diagnose_changes_nothing(lab_factory):
    lab = bring_up(lab_factory())
    result = diagnose_readonly(lab)
    failing = [f for f in result["findings"] if f["status"] != "ok"]
    assert failing == []
    assert result["worst"] == "ok"
    from tests import fakebus
    fakebus.check_reply("diagnose", result)
    [route] = find(result, "route")
    assert "via wan" in route["summary"] and route["tunnel"] == lab.router_wg
    [endpoint] = find(result, "endpoint")
    assert "vpn.lab.test" in endpoint["evidence"] and "via wan" in endpoint["evidence"]
    # read in process, as the daemon reads it: wireguard-go over UAPI, the kernel's over netlink
    [read] = find(result, "wireguard")
    assert "%s through %s" % (lab.router_wg, "uapi" if lab.wg_backend == "wireguard-go" else "genetlink") \
        in read["summary"], read
    # the readable form: one line per finding, exit code 0
    env = dict(os.environ, PYTHONPATH=REPO)
    r = lab.run("router", sys.executable, "-m", "wgrouter", "diagnose", "--root", lab.root, env=env,
                check=False)
    assert r.returncode == 0
    assert r.stdout.splitlines()[-1].endswith(": ok")
    assert all(line.startswith(("[ok]", " ")) for line in r.stdout.splitlines()[:-1])


def test_daemon_answers_diagnose_with_the_contract_shape(lab_factory):
    # the report ubus's diagnose returns (ubusobj -> daemon.Handlers ->
    # diagnose.run) is the one `wgrouter diagnose --json` prints; the control
    # socket no longer carries diagnose
    from tests import fakebus
    from tests.lab import scenarios
    lab = lab_factory()
    with open(os.path.join(lab.root, "etc/config/firewall"), "w") as f:
        f.write(firewall_text(lab.router_wg))
    scenarios.start(lab, "wgrouter")
    env = dict(os.environ, PYTHONPATH=REPO)
    r = lab.run("router", sys.executable, "-m", "wgrouter", "diagnose", "--json", "--root", lab.root,
                env=env, check=False)
    reply = json.loads(r.stdout)
    fakebus.check_reply("diagnose", reply)
    assert reply["worst"] in ("ok", "warn")
    assert [f for f in reply["findings"] if f["status"] == "fail"] == []
    assert status_of(reply, "route") == ["ok"]


# ------------------------------------------------------------------ broken


def test_stale_handshake_server_blocked(lab_factory):
    lab = bring_up(lab_factory(), block_server=True)
    result = diagnose_readonly(lab)
    [f] = find(result, "handshake")
    assert f["status"] == "fail" and "no handshake" in f["summary"]
    assert result["worst"] == "fail"
    # the path itself is fine: diagnose blames the handshake, not the route
    assert status_of(result, "route") == ["ok"]
    faults.vpn_address_up(lab, VPN_A)
    assert lab.tunnel_works(10)
    assert status_of(diagnose_json(lab), "handshake") == ["ok"]


def test_allowed_ips_covering_endpoint_is_a_routing_loop(lab_factory):
    lab = bring_up(lab_factory())
    assert status_of(diagnose_json(lab), "route") == ["ok"]
    dev, key = lab.router_wg, lab.keys["vpn"]["public"]
    lab.run("router", "wg", "set", dev, "peer", key, "allowed-ips",
            "%s,%s/32,192.0.2.0/24" % (topology.REMOTE_NET, topology.TUNNEL_VPN))
    lab.ip("router", "route", "add", "192.0.2.0/24", "dev", dev)
    result = diagnose_readonly(lab)
    [f] = find(result, "route")
    assert f["status"] == "fail" and "routing loop" in f["summary"]
    assert "192.0.2.0/24" in f["evidence"] and "dev %s" % dev in f["evidence"]


def test_allowed_ips_overlapping_the_lan(lab_factory):
    lab = bring_up(lab_factory())
    assert find(diagnose_json(lab), "allowedips_local") == []
    lab.run("router", "wg", "set", lab.router_wg, "peer", lab.keys["vpn"]["public"], "allowed-ips",
            "%s,%s/32,192.168.1.0/25" % (topology.REMOTE_NET, topology.TUNNEL_VPN))
    result = diagnose_readonly(lab)
    [f] = find(result, "allowedips_local")
    assert f["status"] == "fail"
    assert "192.168.1.0/25" in f["summary"] and "LAN subnet 192.168.1.0/24 on lan" in f["summary"]


def test_conntrack_entry_via_down_wan(lab_factory):
    lab = bring_up(lab_factory())
    result = diagnose_json(lab)
    assert status_of(result, "conntrack") == ["ok"]
    assert topology.WANS["wan"]["address"].split("/")[0] in find(result, "conntrack")[0]["evidence"]
    assert lab.tunnel_works(5)  # fresh traffic: the entry is far from its timeout
    # The cable to the ISP is pulled and the primary's default route is gone,
    # but the address stays (netifd has not reacted yet, or mwan3 marked the
    # WAN offline): an address flush would let the masquerade notifier drop
    # the entry, this leaves it pointing at the dead WAN.
    lab.ip("ispa", "link", "set", "dev", "cpe", "down")
    lab.ip("router", "route", "del", "default", "dev", "wan")
    result = diagnose_readonly(lab)
    [f] = find(result, "conntrack")
    assert f["status"] == "fail", f
    assert "10.0.1.2 on wan, which is down" in f["summary"]
    assert "conntrack -D" in f["fix"]
    assert status_of(result, "wan", summary="WAN wan ") == ["warn"]
    [route] = find(result, "route")
    assert route["status"] == "ok" and "via wanb" in route["summary"]


def test_rp_filter_strict_on_wanb(lab_factory):
    lab = bring_up(lab_factory())
    assert status_of(diagnose_json(lab), "rp_filter") == ["ok"]
    assert lab.sysctl("router", **{"net.ipv4.conf.all.rp_filter": 0,
                                   "net.ipv4.conf.wanb.rp_filter": 1}) == []
    result = diagnose_readonly(lab)
    assert status_of(result, "rp_filter", summary="wanb") == ["warn"]
    assert status_of(result, "rp_filter", summary="on wan ") == ["ok"]


def test_ip_forward_off(lab_factory):
    lab = bring_up(lab_factory())
    assert status_of(diagnose_json(lab), "ip_forward") == ["ok"]
    assert lab.sysctl("router", **{"net.ipv4.ip_forward": 0}) == []
    result = diagnose_readonly(lab)
    assert status_of(result, "ip_forward") == ["fail"]
    assert result["worst"] == "fail"


def test_tunnel_mtu_too_big_for_lte_1280(lab_factory):
    lab = bring_up(lab_factory())
    assert status_of(diagnose_json(lab), "mtu") == ["ok"]
    lab.ip("router", "link", "set", "wanb", "mtu", "1280")
    result = diagnose_readonly(lab)
    [f] = find(result, "mtu")
    assert f["status"] == "warn"  # wanb is the backup, not in use now
    assert "wanb (mtu 1280)" in f["summary"] and "'1220'" in f["fix"]


def test_endpoint_differs_from_dns_after_dns_move(lab_factory):
    lab = bring_up(lab_factory())
    assert status_of(diagnose_json(lab), "endpoint") == ["ok"]
    faults.dns_move(lab, "vpn", VPN_B)
    assert lab.wait_for(lambda: lab.resolve("vpn") == [VPN_B], 5)
    result = diagnose_readonly(lab)
    [f] = find(result, "endpoint")
    assert f["status"] == "warn" and "not what DNS says" in f["summary"]
    assert VPN_A in f["summary"] and VPN_B in f["evidence"]
    assert "vpn.lab.test via wan (%s) -> %s" % (topology.DNS_SERVER, VPN_B) in f["evidence"]


def test_firewall_without_tunnel_zone(lab_factory):
    lab = bring_up(lab_factory())
    assert status_of(diagnose_json(lab), "firewall_zone") == ["ok"]
    with open(os.path.join(lab.root, "etc/config/firewall"), "w") as f:
        f.write(firewall_text("wgnone").replace("\toption masq '1'\n\nconfig zone", "\nconfig zone", 1))
    result = diagnose_readonly(lab)
    assert status_of(result, "firewall_zone") == ["fail"]
    assert status_of(result, "firewall_masq") == ["fail"]
