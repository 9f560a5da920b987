"""The data the LuCI pages are shown with: a router's /etc/config/network
and /etc/config/wgrouter as LuCI's uci.js holds them, and a status reply of
the contract in tests/ubus_contract.json."""

import os
import time

from tests import fakebus
from wgrouter import config
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


def standin(write=True, wgrouter_text=WGROUTER, rpc=None):
    """window.STANDIN for a page: uci configs, rpc replies, ACL."""
    return {
        "uci": {"network": luci_sections(network_sections()),
                "wgrouter": luci_sections(uci.parse(wgrouter_text, "/etc/config/wgrouter"))},
        "rpc": rpc if rpc is not None else {},
        "rpc_write": [m for m, s in fakebus.load_contract()["methods"].items() if s["access"] == "write"],
        "acl": {"read": True, "write": write},
    }


def status_reply(now=None):
    """A status reply of the contract: two tunnels, wg0 on the primary,
    wg1 recovering on the backup, and the events that led there."""
    now = time.time() if now is None else now
    reply = {
        "tunnels": {
            "wg0": {"peers": {"c3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3M=": {
                "label": "@wireguard_wg0[0]", "state": "up", "wan": "wan", "endpoint": "203.0.113.10:51820",
                "endpoint_source": "dns", "keepalive": 25, "handshake_age": 41.2, "rx": 18234567,
                "tx": 2345678, "last_step": None}}},
            "wg1": {"peers": {"dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnY=": {
                "label": "@wireguard_wg1[0]", "state": "recovering", "wan": "wanb",
                "endpoint": "198.51.100.20:51820", "endpoint_source": "netifd", "keepalive": 25,
                "handshake_age": 173.0, "rx": 901234, "tx": 1200456, "last_step": "reresolve"}}},
        },
        "wans": {
            "wan": {"up": True, "healthy": True, "active": True, "families": ["ipv4", "ipv6"]},
            "wanb": {"up": True, "healthy": True, "active": False, "families": ["ipv4"]},
        },
        "events": [
            {"time": now - 3600, "text": "wg0: was starting, now up on wan, because handshake"},
            {"time": now - 1800, "text": "wg1: was wan, now wanb, because wan is down (hotplug ifdown)"},
            {"time": now - 60, "text": "wg1: was up, now recovering, because no handshake for 173 s"},
        ],
        "version": "0.1.0",
        "pid": 1234,
        "uptime": 86400.0,
    }
    fakebus.check_reply("status", reply)
    return reply


def rpc_replies():
    """rpc replies for the status page: the contract's shapes."""
    replies = {"status": status_reply(), "reapply": {"ok": True}, "switch": {"ok": True, "wan": "wanb"},
               "diagnose": {"findings": [], "worst": "ok"}}
    fakebus.check_reply("reapply", replies["reapply"])
    fakebus.check_reply("switch", replies["switch"])
    fakebus.check_reply("diagnose", replies["diagnose"])
    return replies


def view_source(name):
    with open(os.path.join(VIEWS, name + ".js")) as f:
        return f.read()
