"""The data the LuCI pages are shown with: a router's /etc/config/network
and /etc/config/wgrouter as LuCI's uci.js holds them, and a status reply of
the contract in tests/ubus_contract.json."""

import os
import time

from tests import fakebus
from tests.luci_standin import router as router_module
from wgrouter import config
from wgrouter import model
from wgrouter import uci

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APP = os.path.join(ROOT, "openwrt-feed", "luci-app-wgrouter")
VIEWS = os.path.join(APP, "htdocs/luci-static/resources/view/wgrouter")

# tests/routers/two_wireguard: a modem backup WAN and three WireGuard interfaces
NETWORK = os.path.join(ROOT, "tests", "routers", "two_wireguard", "network")

WGROUTER = """
config wgrouter 'main'
	option enabled '1'
	option failback_holddown '120'
	option events '64'

config wan 'wan'
	list track_ip '1.1.1.1'
	list track_ip '8.8.8.8'

config wan 'wanb'
	option device 'wwan0'
	option keepalive '25'
	list track_ip '9.9.9.9'
	list dns_server '1.1.1.1'

config tunnel 'wg0'
	option enabled '1'
	option probe '10.99.0.1'

config tunnel 'wg1'
	option enabled '1'

config peer
	option tunnel 'wg0'
	option public_key 'c3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3M='
	list endpoint 'office.example.net:443'
	list endpoint '203.0.113.7:51820'

config mqtt 'mqtt'
	option enabled '0'
	option host 'broker.lan'
"""


def luci_sections(sections):
    """uci.Sections as uci.js keeps them: '.name' ('cfgNNNNNN' for an
    anonymous one, as rpcd's uci get names it), '.type', '.anonymous',
    '.index', and each option (a list as an array)."""
    out = []
    for i, s in enumerate(sections):
        item = {".name": s.name or "cfg%02x%04x" % (i, 0x5e11), ".type": s.type,
                ".anonymous": s.name is None, ".index": i}
        item.update({k: list(v) if isinstance(v, list) else v for k, v in s.options.items()})
        out.append(item)
    return out


def uci_text(sections):
    """uci.js sections back as /etc/config text (what a commit writes)."""
    def q(v):
        return "'%s'" % str(v).replace("'", "'\\''")
    lines = []
    for s in sections:
        lines.append("config %s%s" % (s[".type"], "" if s.get(".anonymous") else " " + q(s[".name"])))
        for k, v in s.items():
            if k.startswith("."):
                continue
            for item in (v if isinstance(v, list) else [v]):
                lines.append("\t%s %s %s" % ("list" if isinstance(v, list) else "option", k, q(item)))
        lines.append("")
    return "\n".join(lines)


def network_sections():
    return uci.load(NETWORK)


def daemon_errors(wgrouter_text):
    """The daemon loader's messages for this /etc/config/wgrouter with the
    fixture's network (no error: [])."""
    try:
        config.from_sections(network_sections(), uci.parse(wgrouter_text, "/etc/config/wgrouter"))
    except config.ConfigError as e:
        return [str(x) for x in e.errors]
    return []


def standin(write=True, wgrouter_text=WGROUTER, router=None, sid=None):
    """window.STANDIN for a page: uci configs, the ubus endpoint of
    ``router`` (a router.Router) with the session ``sid``, and whether LuCI
    marks the page writable (the login's write access to the ACL group)."""
    out = {
        "uci": {"network": luci_sections(network_sections()),
                "wgrouter": luci_sections(uci.parse(wgrouter_text, "/etc/config/wgrouter"))},
        "acl": {"read": True, "write": write},
    }
    if router is not None:
        out["ubus"] = router.url + router_module.UBUS_PATH
        out["sessionid"] = sid if sid is not None else router.login(write=write)
    return out


# The last 90 minutes of the fixture's router, as (seconds before now,
# transition): wg0 and wg1 start on wan; wan goes down and both fail over to
# wanb; wan comes back and both fail back after the hold-down; wg0's own
# interface is down for a minute; wg1 leaves wan again when wan stops
# carrying its handshakes, and its peer is being recovered.
HISTORY = [
    (5400, model.Transition("wg0", None, "none", "wan", "wan is the most preferred healthy WAN")),
    (5400, model.Transition("wg1", None, "none", "wan", "wan is the most preferred healthy WAN")),
    (2400, model.Transition("wan", None, "healthy", "down", "down (hotplug ifdown)", "wan")),
    (2400, model.Transition("wg0", None, "wan", "wanb", "wan is down (hotplug ifdown)", "failover")),
    (2400, model.Transition("wg1", None, "wan", "wanb", "wan is down (hotplug ifdown)", "failover")),
    (1500, model.Transition("wan", None, "down", "healthy", "it came up anew (ifup)", "wan")),
    (1380, model.Transition("wg0", None, "wanb", "wan", "wan healthy for 120 s", "failback")),
    (1380, model.Transition("wg1", None, "wanb", "wan", "wan healthy for 120 s", "failback")),
    (900, model.Transition("wg0", None, "wan", "down", "hotplug ifdown")),
    (840, model.Transition("wg0", None, "down", "wan", "tunnel wg0 is back")),
    (420, model.Transition("wg1", None, "wan", "wanb", "wan is suspect for wg1: no handshake for 173 s",
                           "failover")),
    (60, model.Transition("wg1", "@wireguard_wg1[0]", "up", "reresolve",
                          "no handshake for 173 s; next step not before 4 s", "recovery")),
]


def event(when, tr):
    """One item of the snapshot's events, as the core writes it
    (wgrouter/core/status.py, snapshot)."""
    return {"time": when, "kind": tr.kind, "tunnel": tr.tunnel, "peer": tr.peer, "was": tr.was,
            "now": tr.now, "because": tr.because, "text": str(tr)}


def status_reply(now=None, history=HISTORY):
    """A status reply of the contract, as the daemon gives it: two tunnels,
    wg0 on the primary, wg1 recovering on the backup, and the events that
    led there (``history``, the ring's content)."""
    now = time.time() if now is None else now
    reply = {
        "time": now,
        "tunnels": {
            "wg0": {"wan": "wan", "state": "up", "peers": {"c3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3M=": {
                "label": "@wireguard_wg0[0]", "state": "up", "wan": "wan", "endpoint": "203.0.113.10:51820",
                "endpoint_source": "dns", "keepalive": 25, "handshake_age": 41.2, "rx": 18234567,
                "tx": 2345678, "last_step": None}}},
            "wg1": {"wan": "wanb", "state": "recovering", "peers": {"dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnY=": {
                "label": "@wireguard_wg1[0]", "state": "recovering", "wan": "wanb",
                "endpoint": "198.51.100.20:51820", "endpoint_source": "netifd", "keepalive": 25,
                "handshake_age": 173.0, "rx": 901234, "tx": 1200456, "last_step": "reresolve"}}},
        },
        "wans": {
            "wan": {"up": True, "healthy": True, "active": True, "families": ["ipv4", "ipv6"]},
            "wanb": {"up": True, "healthy": True, "active": False, "families": ["ipv4"]},
        },
        "events": [event(now - ago, tr) for ago, tr in history],
        "version": "0.1.0",
        "pid": 1234,
        "uptime": 86400.0,
    }
    fakebus.check_reply("status", reply)
    return reply


DIAGNOSIS = {"worst": "warn", "findings": [
    {"check": "handshake", "status": "ok", "tunnel": "wg0", "peer": "@wireguard_wg0[0]",
     "summary": "handshake 41 s ago", "evidence": "latest handshake 41 s ago", "fix": None},
    {"check": "handshake", "status": "warn", "tunnel": "wg1", "peer": "@wireguard_wg1[0]",
     "summary": "no handshake for 173 s", "evidence": "latest handshake 173 s ago, 0 B received since",
     "fix": "check that the peer is up and that 198.51.100.20 answers on UDP 51820"},
    {"check": "mtu", "status": "ok", "tunnel": "wg1", "peer": None,
     "summary": "MTU fits every WAN", "evidence": "wg1 1420, wan 1500, wanb 1500", "fix": None}]}


def handlers(status=None, diagnosis=None):
    """The daemon's answers for a router.Router: the contract's shapes."""
    fakebus.check_reply("diagnose", diagnosis or DIAGNOSIS)
    return router_module.Handlers(status or status_reply(), diagnosis or DIAGNOSIS)


def view_source(name):
    with open(os.path.join(VIEWS, name + ".js")) as f:
        return f.read()
