import socket

import pytest

from tests.fakerunner import NetNS, netns_unavailable
from wgrouter import kernel
from wgrouter import model

AF = socket.AF_INET


def link(index, name, up=True, operstate="UP", lower_up=True):
    return {"ifindex": index, "ifname": name, "up": up, "operstate": operstate, "lower_up": lower_up,
            "pointopoint": False, "carrier": lower_up, "flags": 0, "mtu": 1500, "kind": None}


def addr(index, address, family=AF, scope=0, flags=0):
    return {"family": family, "ifindex": index, "address": address, "peer": None, "prefixlen": 24,
            "scope": scope, "flags": flags, "label": None}


def default(oif, gateway, metric=0, table=254, rtype="unicast", nexthops=(), family=AF):
    return {"family": family, "dst": None, "dst_len": 0, "gateway": gateway, "oif": oif, "table": table,
            "metric": metric, "type": rtype, "protocol": 4, "scope": 0, "prefsrc": None,
            "nexthops": list(nexthops)}


WAN = model.Wan("wan", "eth1")
WANB = model.Wan("wanb", "wwan0")
LINKS = [link(2, "eth1"), link(3, "wwan0", operstate="UNKNOWN")]
ADDRS = [addr(2, "fd00::2", socket.AF_INET6), addr(2, "10.1.0.2"), addr(2, "10.1.0.3"), addr(3, "100.64.0.5")]
ROUTES = [default(2, "10.1.0.1", 10), default(3, None, 20)]


@pytest.mark.parametrize(
    "wan,links,addrs,routes,expected",
    [
        (WAN, LINKS, ADDRS, ROUTES, model.WanState("wan", "eth1", True, "10.1.0.1", "10.1.0.2")),
        (WANB, LINKS, ADDRS, ROUTES, model.WanState("wanb", "wwan0", True, None, "100.64.0.5")),
        # missing device
        (model.Wan("wan", "eth9"), LINKS, ADDRS, ROUTES, model.WanState("wan", "eth9", False)),
        # administratively down
        (WAN, [link(2, "eth1", up=False, operstate="DOWN")], ADDRS, ROUTES,
         model.WanState("wan", "eth1", False, "10.1.0.1", "10.1.0.2")),
        # no carrier
        (WAN, [link(2, "eth1", operstate="LOWERLAYERDOWN", lower_up=False)], ADDRS, ROUTES,
         model.WanState("wan", "eth1", False, "10.1.0.1", "10.1.0.2")),
        # UNKNOWN without lower-up is not carrier
        (WANB, [link(3, "wwan0", operstate="UNKNOWN", lower_up=False)], ADDRS, ROUTES,
         model.WanState("wanb", "wwan0", False, None, "100.64.0.5")),
        # no IPv4 address
        (WAN, LINKS, [addr(2, "fd00::2", socket.AF_INET6)], ROUTES,
         model.WanState("wan", "eth1", False, "10.1.0.1", None)),
        # no default route; a non-default one does not count
        (WAN, LINKS, ADDRS, [dict(default(2, "10.1.0.1"), dst="0.0.0.0", dst_len=1)],
         model.WanState("wan", "eth1", False, None, "10.1.0.2")),
        # unreachable default does not count
        (WAN, LINKS, ADDRS, [default(2, None, rtype="unreachable")],
         model.WanState("wan", "eth1", False, None, "10.1.0.2")),
        # lowest metric wins
        (WAN, LINKS, ADDRS, [default(2, "10.1.0.9", 50), default(2, "10.1.0.1", 5)],
         model.WanState("wan", "eth1", True, "10.1.0.1", "10.1.0.2")),
        # default only in another table: not up without wan.table
        (WAN, LINKS, ADDRS, [default(2, "10.1.0.1", table=1)],
         model.WanState("wan", "eth1", False, None, "10.1.0.2")),
        # mwan3 table
        (model.Wan("wan", "eth1", table=1), LINKS, ADDRS, [default(2, "10.1.0.7", table=1), default(2, "10.1.0.1")],
         model.WanState("wan", "eth1", True, "10.1.0.7", "10.1.0.2")),
        (model.Wan("wan", "eth1", table=1000), LINKS, ADDRS, [default(2, "10.1.0.1")],
         model.WanState("wan", "eth1", True, "10.1.0.1", "10.1.0.2")),
        # multipath default with a hop on the device
        (WAN, LINKS, ADDRS, [default(None, None, nexthops=[{"oif": 9, "gateway": "1.1.1.1"},
                                                          {"oif": 2, "gateway": "10.1.0.1"}])],
         model.WanState("wan", "eth1", True, "10.1.0.1", "10.1.0.2")),
        # a default on another device does not count
        (WAN, LINKS, ADDRS, [default(3, None)], model.WanState("wan", "eth1", False, None, "10.1.0.2")),
    ],
)
def test_wan_states(wan, links, addrs, routes, expected):
    assert kernel.wan_states((wan,), links, addrs, routes) == {wan.name: expected}


AF6 = socket.AF_INET6
V6 = addr(2, "2001:db8:1::2", AF6)
LL = addr(2, "fe80::2", AF6, scope=253)
DEF6 = default(2, "fe80::1", 1024, family=AF6)
ADDRS4 = [a for a in ADDRS if a["family"] == AF]


@pytest.mark.parametrize(
    "addrs,routes,up,up4,up6,gateway6,address6",
    [
        # dual stack: both families carried
        (ADDRS4 + [V6], ROUTES + [DEF6], True, None, True, "fe80::1", "2001:db8:1::2"),
        # IPv6 only (DS-Lite, or an LTE bearer without IPv4): up through IPv6 alone
        ([V6, LL], [DEF6], True, False, True, "fe80::1", "2001:db8:1::2"),
        # IPv4 lost, IPv6 stays: still up, but not for IPv4 endpoints
        ([V6], [DEF6, dict(default(2, "10.1.0.1"))], True, False, True, "fe80::1", "2001:db8:1::2"),
        # link-local only: no IPv6 path
        (ADDRS4 + [LL], ROUTES + [DEF6], True, None, False, None, None),
        # a tentative (DAD pending) or DAD-failed address does not count yet
        (ADDRS4 + [addr(2, "2001:db8:1::2", AF6, flags=0x40)], ROUTES + [DEF6], True, None, False, None, None),
        (ADDRS4 + [addr(2, "2001:db8:1::2", AF6, flags=0x08)], ROUTES + [DEF6], True, None, False, None, None),
        # a global address without an IPv6 default route
        (ADDRS4 + [V6], ROUTES, True, None, False, None, None),
        # neither family complete
        ([V6], ROUTES[:1], False, None, False, None, None),
    ],
)
def test_wan_states_ipv6(addrs, routes, up, up4, up6, gateway6, address6):
    st = kernel.wan_states((WAN,), LINKS, addrs, routes)["wan"]
    assert (st.up, st.up4, st.up6, st.gateway6, st.address6) == (up, up4, up6, gateway6, address6)
    assert st.carries(6) == up6
    assert st.carries(4) == (up if up4 is None else up4)


def test_wan_states_ipv6_in_the_mwan3_table():
    wan = model.Wan("wan", "eth1", table=1)
    st = kernel.wan_states((wan,), LINKS, ADDRS4 + [V6],
                           ROUTES + [dict(DEF6, table=1, gateway="fe80::7")])["wan"]
    assert (st.up6, st.gateway6) == (True, "fe80::7")


def test_link_up_rules():
    assert kernel.link_up(link(1, "a"))
    assert kernel.link_up(link(1, "a", operstate="UNKNOWN", lower_up=True))
    assert not kernel.link_up(link(1, "a", operstate="DORMANT"))
    assert not kernel.link_up(link(1, "a", up=False))


TUN_CODE = r"""
import fcntl, json, os, struct, subprocess
from wgrouter import kernel, model
# open the persistent tun so it gets carrier (a point-to-point device, like pppoe/wwan)
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"ptp0", 0x0001 | 0x1000))
for cmd in ("ip link set ptp0 up", "ip addr add 100.64.0.5 peer 100.64.0.1 dev ptp0",
            "ip route add default dev ptp0 metric 30"):
    subprocess.run(cmd.split(), check=True)
wans = (
    model.Wan("wan", "w1"),
    model.Wan("wanb", "w2"),
    model.Wan("lte", "ptp0"),
    model.Wan("nodefault", "w3"),
    model.Wan("tabled", "w4", table=1000),
    model.Wan("untabled", "w4"),
    model.Wan("gone", "w9"),
)
states = kernel.observe_wans(wans, mwan3=True)
print(json.dumps({
    "states": {k: [v.up, v.gateway, v.address] for k, v in states.items()},
}))
"""


@pytest.mark.lab
def test_observe_wans_in_namespace():
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with NetNS() as ns:
        for i in (1, 2, 3, 4):
            ns.ip("link", "add", "w%d" % i, "type", "veth", "peer", "name", "w%dp" % i)
            ns.ip("link", "set", "w%d" % i, "up")
            ns.ip("link", "set", "w%dp" % i, "up")
            ns.ip("addr", "add", "10.%d.0.2/24" % i, "dev", "w%d" % i)
        ns.ip("route", "add", "default", "via", "10.1.0.1", "dev", "w1", "metric", "10")
        ns.ip("route", "add", "default", "via", "10.2.0.1", "dev", "w2", "metric", "20")
        ns.ip("route", "add", "default", "via", "10.4.0.1", "dev", "w4", "table", "1000")
        ns.ip("tuntap", "add", "dev", "ptp0", "mode", "tun")
        out = ns.python(TUN_CODE)
        assert out["states"] == {
            "wan": [True, "10.1.0.1", "10.1.0.2"],
            "wanb": [True, "10.2.0.1", "10.2.0.2"],
            "lte": [True, None, "100.64.0.5"],
            "nodefault": [False, None, "10.3.0.2"],
            "tabled": [True, "10.4.0.1", "10.4.0.2"],
            "untabled": [False, None, "10.4.0.2"],
            "gone": [False, None, None],
        }
        # carrier loss on the primary: its route stays (linkdown) but it is down
        ns.ip("link", "set", "w1p", "down")
        ns.ip("link", "set", "w2", "down")
        out = ns.python("import json\nfrom wgrouter import kernel, model\n"
                        "s = kernel.observe_wans((model.Wan('wan', 'w1'), model.Wan('wanb', 'w2')))\n"
                        "print(json.dumps({k: [v.up, v.gateway, v.address] for k, v in s.items()}))")
        # w2 down: the kernel dropped its default route
        assert out == {"wan": [False, "10.1.0.1", "10.1.0.2"], "wanb": [False, None, "10.2.0.2"]}
