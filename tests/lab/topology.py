"""The dual-WAN lab: six network namespaces, real WireGuard, DNS, NAT and routing.

    lan --- router ==wan===  ispa --- inet --- vpn
                   ==wanb==  ispb ---/  (dnsmasq 192.0.2.53)

``Lab(ipv6=True)`` (or a tuple of WAN names) adds routed IPv6 in
2001:db8::/32 on those WANs, their ISPs, inet and vpn: no NAT66, the server
reachable at VPN_ADDRESSES6, AAAA records in dnsmasq.  The tunnel then
carries IPv6 too: lan (LAN_NET6) reaches REMOTE_NET6 behind the server, so
clear-text IPv6 leaks can be looked for as IPv4 ones are.  Without it the lab is
IPv4 only, exactly as before.

Everything is done by ip, nft, wg, wireguard-go and dnsmasq run through
subprocess.  Only netifd has a stand-in (tests/lab/netifd.py).  ``Lab`` is a
context manager; each instance has its own prefix, so labs can run side by
side.  ``__exit__`` tears everything down even after errors or Ctrl-C.
"""

import ipaddress
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from tests.lab import ucifile

try:  # kernel WireGuard when the kernel has it (QEMU tier), else wireguard-go
    from tests.lab import wgdev as _wgdev
except ImportError:
    _wgdev = None

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMESPACES = ("lan", "router", "ispa", "ispb", "inet", "vpn")
WG_RUN_DIR = "/var/run/wireguard"
NETNS_ETC = "/etc/netns"
TMP_PREFIX = "wglab-"

# Addresses of the lab (see the module docstring and tests/lab/README in the
# report).  The router side is what OpenWrt would have.
LAN_HOST = "192.168.1.2"
LAN_ROUTER = "192.168.1.1"
LAN_NET = "192.168.1.0/24"
WANS = {
    # name: device, router address, gateway (ISP), metric, mwan3 table, mwan3 mark, ISP ns
    # (ipv6 labs only: address6, gateway6 and the ISP's uplink/inet-side v6; with
    # mwan3, table6/mark6: mwan3 makes the IPv6 side its own interface, wan6,
    # with its own id, table and mark)
    "wan": dict(device="wan", address="10.0.1.2/24", gateway="10.0.1.1", metric=10,
                table=1, mark=0x100, isp="ispa", table6=3, mark6=0x300,
                address6="2001:db8:1::2/64", gateway6="2001:db8:1::1",
                isp_up6="2001:db8:a::2", inet6="2001:db8:a::1"),
    "wanb": dict(device="wanb", address="100.64.2.2/24", gateway="100.64.2.1", metric=20,
                 table=2, mark=0x200, isp="ispb", table6=4, mark6=0x400,
                 address6="2001:db8:2::2/64", gateway6="2001:db8:2::1",
                 isp_up6="2001:db8:b::2", inet6="2001:db8:b::1"),
}
ISPA_UP = "198.51.100.2"
ISPA_INET = "198.51.100.1"
ISPB_PUBLIC = ("203.0.113.2", "203.0.113.3")
ISPB_INET = "203.0.113.1"
INET_VPN = "192.0.2.1"
DNS_SERVER = "192.0.2.53"
VPN_ADDRESSES = ("192.0.2.10", "192.0.2.11")
# IPv6 (ipv6 labs only): routed, no NAT66, documentation prefix 2001:db8::/32
INET_VPN6 = "2001:db8:100::1"
VPN_ADDRESSES6 = ("2001:db8:100::10", "2001:db8:100::11")
VPN_NET6 = "2001:db8:100::/64"
# IPv6 inside the tunnel (ipv6 labs only): ULA, as a LAN would have it
LAN_HOST6 = "fd00:1::2"
LAN_ROUTER6 = "fd00:1::1"
LAN_NET6 = "fd00:1::/64"
REMOTE_NET6 = "fd00:99::/64"
PROBE_TARGET6 = "fd00:99::1"
TUNNEL_VPN6 = "fd00:200::1"
TUNNEL_ROUTER6 = "fd00:200::2"
TUNNEL_NET6 = "fd00:200::/64"
VPN_PORT = 51820
VPN_ALT_PORT = 443
RELAY_PORT = 443  # TCP: Lab(relay_server=True) runs `wgrouter relay-server` there
REMOTE_NET = "10.99.0.0/24"
PROBE_TARGET = "10.99.0.1"
TUNNEL_VPN = "10.200.0.1"
TUNNEL_ROUTER = "10.200.0.2"
DOMAIN = "lab.test"
MWAN3_MASK = 0x3F00

_counter = itertools.count()
_counter_lock = threading.Lock()


class LabError(Exception):
    """lab command failed"""


def _letters(n):
    s = ""
    while True:
        s = chr(ord("a") + n % 26) + s
        n = n // 26
        if n == 0:
            return s


def new_prefix():
    with _counter_lock:
        n = next(_counter)
    return "t%d%s" % (os.getpid(), _letters(n))


def can_run():
    """None if the lab can run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "lab needs root (network namespaces, nftables, wireguard-go)"
    for tool in ("ip", "nft", "wg", "wireguard-go", "dnsmasq", "tcpdump", "conntrack", "busybox"):
        if shutil.which(tool) is None:
            return "lab needs %s installed" % tool
    if not os.path.exists("/dev/net/tun"):
        return "lab needs /dev/net/tun for wireguard-go"
    name = "tcheck%d" % os.getpid()
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return "network namespaces unavailable: %s" % r.stderr.strip()
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _mwan3_nft(family, table, addr_type, connected):
    """mwan3's mangle chains for one address family: flows not to a
    connected network get the mark of the policy's first member."""
    return """
table %(family)s %(table)s {
    set connected {
        type %(addr_type)s; flags interval;
        elements = { %(connected)s }
    }
    chain mwan3_policy_members {
    }
    chain mwan3_policy {
        meta mark and 0x3f00 != 0 return
        %(family)s daddr @connected return
        jump mwan3_policy_members
        ct mark set meta mark and 0x3f00
    }
    chain prerouting {
        type filter hook prerouting priority mangle; policy accept;
        iifname "lan" meta mark set ct mark and 0x3f00
        iifname "lan" jump mwan3_policy
    }
    chain output {
        type route hook output priority mangle; policy accept;
        meta mark set ct mark and 0x3f00
        jump mwan3_policy
    }
}
""" % {"family": family, "table": table, "addr_type": addr_type, "connected": connected}


class Lab:
    """The lab.  Use as ``with Lab() as lab: ...``.

    mwan3: add mwan3-style policy routing on the router.
    keepalive: PersistentKeepalive of the router's peer (netifd config).
    dns_ttl: TTL dnsmasq gives lab.test records.
    ipv6: False (IPv4 only, the default), True (IPv6 on both WANs) or a
    tuple of WAN names that get IPv6; ``ipv6_wans`` says which did.
    unnamed_devices: WANs whose device no config file names (a Wi-Fi client
    uplink), so wgrouter has to learn it from netifd's ifup event.
    relay_server: the VPN server also runs ``wgrouter relay-server`` (WireGuard
    over TCP) on RELAY_PORT/TCP, forwarding to its WireGuard port.
    force_link: False (the default) writes ``option force_link '0'`` on the
    WANs, as a dhcp or pppoe WAN has it: netifd takes a WAN down on carrier
    loss.  True leaves proto static's own default, force_link 1: a carrier
    loss leaves the WAN up, its routes marked linkdown (tests/lab/netifd.py).
    """

    def __init__(self, prefix=None, mwan3=False, keepalive=25, dns_ttl=5, keep_tmp=False,
                 ipv6=False, unnamed_devices=(), relay_server=False, force_link=False):
        self.prefix = prefix or new_prefix()
        self.ipv6_wans = _ipv6_wans(ipv6)
        self.mwan3 = mwan3
        self.keepalive = keepalive
        self.dns_ttl = dns_ttl
        self.keep_tmp = keep_tmp
        ident = self.prefix[1:]
        self.router_wg = "wg%sr" % ident
        self.vpn_wg = "wg%sv" % ident
        if len(self.router_wg) > 15:
            raise LabError("prefix %r too long for a WireGuard device name" % self.prefix)
        self.faults = []  # (time.time(), fault name, detail)
        self.notes = {}  # what the lab could and could not set up
        self.keys = {}
        self.procs = []  # every child process, for teardown
        self.tmp = None
        self.root = None
        self.logdir = None
        self.netifd = None
        self.watchdog = None
        self.wgrouter = None
        self.ispb_public = ISPB_PUBLIC[0]
        self.dns_records = {}  # name: IPv4 address (A)
        self.dns_records6 = {}  # name: [IPv6 addresses] (AAAA)
        self._mwan3_v6_on = False
        # WANs whose device neither config file names (a Wi-Fi client uplink):
        # wgrouter learns it from the stand-in netifd's ifup event
        self.unnamed_devices = tuple(unnamed_devices)
        self.force_link = force_link
        self.mwan3_members6 = []
        self.relay_server = relay_server
        self.relay_server_proc = None
        self._dnsmasq = None
        self._built = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------ plumbing

    def ns(self, name):
        if name not in NAMESPACES:
            raise LabError("no namespace %r in the lab" % name)
        return "%s-%s" % (self.prefix, name)

    def cmd(self, ns, *cmd):
        return ["ip", "netns", "exec", self.ns(ns)] + [str(c) for c in cmd]

    def run(self, ns, *cmd, check=True, timeout=30, input=None, env=None):
        """Run a command in a namespace; returns CompletedProcess (text)."""
        argv = self.cmd(ns, *cmd)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           input=input, env=env)
        if check and r.returncode != 0:
            raise LabError("%s: exit %d: %s" % (" ".join(argv), r.returncode,
                                                (r.stderr or r.stdout).strip()))
        return r

    def ip(self, ns, *args, check=True):
        """``ip -n NS ...`` (no exec needed, faster)."""
        argv = ["ip", "-n", self.ns(ns)] + [str(a) for a in args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise LabError("%s: exit %d: %s" % (" ".join(argv), r.returncode, r.stderr.strip()))
        return r

    def nft(self, ns, script):
        return self.run(ns, "nft", "-f", "-", input=script)

    def popen(self, ns, *cmd, stdout=None, stderr=None, env=None, **kw):
        """Start a tracked background process in a namespace."""
        try:
            p = subprocess.Popen(self.cmd(ns, *cmd), stdout=stdout, stderr=stderr, env=env,
                                 stdin=subprocess.DEVNULL, **kw)
        finally:
            # log files opened by the caller belong to the child now
            for f in (stdout, stderr):
                if hasattr(f, "close") and hasattr(f, "fileno"):
                    f.close()
        with self._lock:
            self.procs.append(p)
        return p

    def log(self, name):
        return os.path.join(self.logdir, name)

    def stop_process(self, p, sig=signal.SIGTERM, timeout=5):
        if p is None:
            return
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            except ProcessLookupError:
                pass
        with self._lock:
            if p in self.procs:
                self.procs.remove(p)

    def sysctl(self, ns, **values):
        """Set sysctls in a namespace; returns the names that could not be set."""
        failed = []
        for key, value in values.items():
            path = "/proc/sys/" + key.replace(".", "/")
            r = self.run(ns, "sh", "-c", "echo %s > %s" % (value, path), check=False)
            if r.returncode != 0:
                failed.append(key)
        return failed

    # ------------------------------------------------------------ lifecycle

    def __enter__(self):
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc):
        self.teardown()
        return False

    def build(self):
        self.tmp = tempfile.mkdtemp(prefix="%s%s-" % (TMP_PREFIX, self.prefix))
        self.root = os.path.join(self.tmp, "root")
        self.logdir = os.path.join(self.tmp, "log")
        for d in (self.root, self.logdir, os.path.join(self.root, "etc/config"),
                  os.path.join(self.root, "var/run")):
            os.makedirs(d, exist_ok=True)
        self._built = True
        for n in NAMESPACES:
            subprocess.run(["ip", "netns", "add", self.ns(n)], check=True, capture_output=True)
            self.ip(n, "link", "set", "lo", "up")
            if self.ipv6_wans:
                # before any link exists: new devices inherit 'default', so
                # link-local addresses skip DAD too.  keep_addr_on_down: the
                # ISP's v6 address survives its 'link set cpe down' (carrier
                # faults), as an IPv4 address does.
                self.sysctl(n, **{"net.ipv6.conf.default.accept_dad": 0,
                                  "net.ipv6.conf.all.accept_dad": 0,
                                  "net.ipv6.conf.default.keep_addr_on_down": 1,
                                  "net.ipv6.conf.all.keep_addr_on_down": 1})
        self._links()
        self._addresses()
        self._sysctls()
        if self.ipv6_wans:
            self._addresses6()
        self._nat()
        if self.mwan3:
            self._mwan3()
            if self.ipv6_wans:
                self._mwan3_v6()
        self._keys()
        self._dns()
        self._vpn_wg()
        if self.relay_server:
            self.start_relay_server()
        self.write_network_config()
        from tests.lab import netifd
        self.netifd = netifd.NetifdStandin(self, mode="stock", hotplug_dir=None)

    def _veth(self, ns1, dev1, ns2, dev2):
        subprocess.run(["ip", "link", "add", dev1, "netns", self.ns(ns1), "type", "veth",
                        "peer", "name", dev2, "netns", self.ns(ns2)],
                       check=True, capture_output=True)
        self.ip(ns1, "link", "set", dev1, "up")
        self.ip(ns2, "link", "set", dev2, "up")

    def _links(self):
        # 'ip link add A netns X ... peer name B netns Y' creates both ends
        # directly in their namespaces, so names never meet in the root one.
        self._veth("lan", "eth0", "router", "lan")
        self._veth("router", "wan", "ispa", "cpe")
        self._veth("router", "wanb", "ispb", "cpe")
        self._veth("ispa", "uplink", "inet", "ispa")
        self._veth("ispb", "uplink", "inet", "ispb")
        self._veth("inet", "vpn", "vpn", "inet")
        # This kernel may lack the dummy driver: the DNS address sits on
        # inet's loopback, the remote subnet on a veth pair inside vpn.
        self._veth("vpn", "remote", "vpn", "remote0")

    def _addresses(self):
        ip = self.ip
        ip("lan", "addr", "add", LAN_HOST + "/24", "dev", "eth0")
        ip("lan", "route", "add", "default", "via", LAN_ROUTER)
        ip("router", "addr", "add", LAN_ROUTER + "/24", "dev", "lan")
        for w in WANS.values():
            ip("router", "addr", "add", w["address"], "dev", w["device"])
            # netifd's routes are RTPROT_STATIC (netifd system-linux.c system_rt)
            ip("router", "route", "add", "default", "via", w["gateway"], "dev", w["device"],
               "metric", w["metric"], "proto", "static")
        ip("ispa", "addr", "add", "10.0.1.1/24", "dev", "cpe")
        ip("ispa", "addr", "add", ISPA_UP + "/24", "dev", "uplink")
        ip("ispa", "route", "add", "default", "via", ISPA_INET)
        ip("ispb", "addr", "add", "100.64.2.1/24", "dev", "cpe")
        for a in ISPB_PUBLIC:
            ip("ispb", "addr", "add", a + "/24", "dev", "uplink")
        ip("ispb", "route", "add", "default", "via", ISPB_INET)
        ip("inet", "addr", "add", ISPA_INET + "/24", "dev", "ispa")
        ip("inet", "addr", "add", ISPB_INET + "/24", "dev", "ispb")
        ip("inet", "addr", "add", INET_VPN + "/24", "dev", "vpn")
        ip("inet", "addr", "add", DNS_SERVER + "/32", "dev", "lo")
        for a in VPN_ADDRESSES:
            ip("vpn", "addr", "add", a + "/24", "dev", "inet")
        ip("vpn", "route", "add", "default", "via", INET_VPN)
        ip("vpn", "addr", "add", PROBE_TARGET + "/24", "dev", "remote")

    def _addresses6(self):
        """Routed IPv6 (no NAT66) on the WANs in ipv6_wans, their ISPs, inet
        and vpn.  Every address is 'nodad': usable at once."""
        ip = self.ip
        for name in self.ipv6_wans:
            w = WANS[name]
            isp = w["isp"]
            self.router_wan6_up(name)
            ip(isp, "-6", "addr", "add", w["gateway6"] + "/64", "dev", "cpe", "nodad")
            ip(isp, "-6", "addr", "add", w["isp_up6"] + "/64", "dev", "uplink", "nodad")
            ip(isp, "-6", "route", "add", "default", "via", w["inet6"], "dev", "uplink")
            ip("inet", "-6", "addr", "add", w["inet6"] + "/64", "dev", isp, "nodad")
            # return traffic for the router's prefix goes back through its ISP
            ip("inet", "-6", "route", "add", wan6_net(name), "via", w["isp_up6"], "dev", isp)
        ip("inet", "-6", "addr", "add", INET_VPN6 + "/64", "dev", "vpn", "nodad")
        for a in VPN_ADDRESSES6:
            ip("vpn", "-6", "addr", "add", a + "/64", "dev", "inet", "nodad")
        ip("vpn", "-6", "route", "add", "default", "via", INET_VPN6, "dev", "inet")
        # the tunnel's own IPv6: lan <-> router <-(wg)-> vpn <-> remote
        ip("lan", "-6", "addr", "add", LAN_HOST6 + "/64", "dev", "eth0", "nodad")
        ip("lan", "-6", "route", "add", "default", "via", LAN_ROUTER6, "dev", "eth0")
        ip("router", "-6", "addr", "add", LAN_ROUTER6 + "/64", "dev", "lan", "nodad")
        ip("vpn", "-6", "addr", "add", PROBE_TARGET6 + "/64", "dev", "remote", "nodad")

    def router_wan6_up(self, wan):
        """The router's IPv6 on WAN (address, default route, mwan3 table
        route), as netifd's static proto sets ip6addr and ip6gw."""
        w = WANS[wan]
        dev = w["device"]
        self.ip("router", "-6", "addr", "replace", w["address6"], "dev", dev, "nodad")
        self.ip("router", "-6", "route", "replace", "default", "via", w["gateway6"], "dev", dev,
                "metric", w["metric"], "proto", "static")
        if self.mwan3:
            self.ip("router", "-6", "route", "replace", "default", "via", w["gateway6"],
                    "dev", dev, "table", w["table6"])

    def router_wan6_down(self, wan):
        """Remove the router's global IPv6 addresses and v6 routes on WAN.
        The kernel's link-local address and fe80::/64 route stay, as on a
        router (a flushed fe80::/64 could not be added back: the kernel
        refuses a second same-metric device route for a prefix)."""
        w = WANS[wan]
        dev = w["device"]
        self.ip("router", "-6", "addr", "flush", "dev", dev, "scope", "global", check=False)
        tables = ["main"] + ([str(w["table6"])] if self.mwan3 else [])
        for table in tables:
            r = self.ip("router", "-6", "-j", "route", "show", "dev", dev, "table", table,
                        check=False)
            for route in json.loads(r.stdout or "[]"):
                if route.get("protocol") == "kernel":
                    continue  # fe80::/64, and prefix routes that went with the address
                argv = ["-6", "route", "del", route["dst"], "dev", dev, "table", table]
                if route.get("gateway"):
                    argv += ["via", route["gateway"]]
                if route.get("metric") is not None:
                    argv += ["metric", route["metric"]]
                self.ip("router", *argv, check=False)

    def _sysctls(self):
        for n in ("router", "ispa", "ispb", "inet", "vpn"):
            self.sysctl(n, **{"net.ipv4.ip_forward": 1})
        self.sysctl("router", **{"net.ipv4.conf.all.rp_filter": 2,
                                 "net.ipv4.conf.default.rp_filter": 2,
                                 "net.ipv4.conf.wan.rp_filter": 2,
                                 "net.ipv4.conf.wanb.rp_filter": 2})
        if self.ipv6_wans:
            for n in ("router", "ispa", "ispb", "inet", "vpn"):
                self.sysctl(n, **{"net.ipv6.conf.all.forwarding": 1})
            # the router's v6 is static (netifd ip6addr/ip6gw): no SLAAC, no RA routes
            failed = self.sysctl("router", **{"net.ipv6.conf.all.accept_ra": 0,
                                              "net.ipv6.conf.default.accept_ra": 0,
                                              "net.ipv6.conf.wan.accept_ra": 0,
                                              "net.ipv6.conf.wanb.accept_ra": 0})
            self.notes["router_accept_ra_0"] = not failed

    def _nat(self):
        # The router: fw4's wan zone masquerades everything leaving wan/wanb
        # (its srcnat chain hooks postrouting, so router-originated packets
        # go through it too; conntrack keeps an established flow's mapping).
        self.nft("router", """
table ip fw4lab {
    chain srcnat {
        type nat hook postrouting priority srcnat; policy accept;
        oifname { "wan", "wanb" } masquerade
    }
}
""")
        self.nft("ispa", """
table ip isp {
    chain srcnat {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "uplink" masquerade
    }
}
""")
        self.nft("ispb", """
table ip isp {
    chain srcnat {
        type nat hook postrouting priority srcnat; policy accept;
    }
}
""")
        self._ispb_snat(self.ispb_public)
        failed = self.sysctl("ispb", **{"net.netfilter.nf_conntrack_udp_timeout": 30,
                                        "net.netfilter.nf_conntrack_udp_timeout_stream": 30})
        self.notes["ispb_udp_timeout_30s"] = not failed
        # The server answers WireGuard on an alternate port too (over IPv6
        # as well in an ipv6 lab); faults.vpn_address_down fills "faults".
        for family, table in [("ip", "vpn")] + ([("ip6", "vpn6")] if self.ipv6_wans else []):
            self.nft("vpn", """
table %s %s {
    chain dstnat {
        type nat hook prerouting priority dstnat; policy accept;
        udp dport %d redirect to :%d
    }
    chain faults {
        type filter hook prerouting priority raw; policy accept;
    }
}
""" % (family, table, VPN_ALT_PORT, VPN_PORT))

    def _ispb_snat(self, address):
        self.nft("ispb", """
flush chain ip isp srcnat
add rule ip isp srcnat oifname "uplink" snat to %s
""" % address)
        self.ispb_public = address

    def _mwan3(self):
        # mwan3: a table per WAN, rules iif/fwmark/unreachable, marks under
        # 0x3f00 restored from and saved to the connmark.
        for w in WANS.values():
            self._mwan3_table(w, w["gateway"])
        self.nft("router", _mwan3_nft("ip", "mwan3lab", "ipv4_addr", (
            "10.0.1.0/24, 100.64.2.0/24, 192.168.1.0/24, 127.0.0.0/8, %s, 10.200.0.0/24, 224.0.0.0/3"
            % REMOTE_NET)))
        self.mwan3_policy(WANS)

    def _mwan3_table(self, w, gateway, *family):
        """One WAN's mwan3 table and its iif/fwmark/unreachable rules, for
        one address family (``family``: nothing, or "-6": the wan6 side)."""
        n = w["table6"] if family else w["table"]
        self.ip("router", *family, "route", "replace", "default", "via", gateway,
                "dev", w["device"], "table", n)
        self.ip("router", *family, "rule", "add", "pref", 1000 + n, "iif", w["device"], "lookup", n)
        mark = "0x%x/0x%x" % (w["mark6"] if family else w["mark"], MWAN3_MASK)
        self.ip("router", *family, "rule", "add", "pref", 2000 + n, "fwmark", mark, "lookup", n)
        self.ip("router", *family, "rule", "add", "pref", 3000 + n, "fwmark", mark, "unreachable")

    def _mwan3_v6(self):
        # mwan3 does the same for IPv6 with ip -6 rules and its v6 sets; the
        # v6 policy's members are the WANs that have IPv6.
        # (mwan3 fills its connected set from the main table: the LAN and
        # the tunnel's routes are in it, so their flows are never marked)
        connected6 = ", ".join([wan6_net(n) for n in self.ipv6_wans]
                               + [LAN_NET6, REMOTE_NET6, TUNNEL_NET6,
                                  "::1/128", "fe80::/10", "ff00::/8"])
        for name in self.ipv6_wans:
            w = WANS[name]
            self._mwan3_table(w, w["gateway6"], "-6")
        self.nft("router", _mwan3_nft("ip6", "mwan3lab6", "ipv6_addr", connected6))
        self._mwan3_v6_on = True
        self.mwan3_policy(self.mwan3_members)

    def mwan3_policy(self, up):
        """Failover policy 'wan, then wanb': mark new flows for the first WAN
        in ``up`` (mwan3's hotplug rewrites its policy chains like this).
        With IPv6 the v6 policy gets the first of ``up`` that has IPv6."""
        members = [name for name in WANS if name in up]
        script = "flush chain ip mwan3lab mwan3_policy_members\n"
        if members:
            script += ("add rule ip mwan3lab mwan3_policy_members meta mark set meta mark "
                       "or 0x%x\n" % WANS[members[0]]["mark"])
        members6 = [name for name in members if name in self.ipv6_wans]
        if self._mwan3_v6_on:
            script += "flush chain ip6 mwan3lab6 mwan3_policy_members\n"
            if members6:
                script += ("add rule ip6 mwan3lab6 mwan3_policy_members meta mark set "
                           "meta mark or 0x%x\n" % WANS[members6[0]]["mark6"])
        self.nft("router", script)
        self.mwan3_members = members
        self.mwan3_members6 = members6

    def _keys(self):
        for who in ("router", "vpn"):
            priv = subprocess.run(["wg", "genkey"], check=True, capture_output=True,
                                  text=True).stdout.strip()
            pub = subprocess.run(["wg", "pubkey"], input=priv, check=True, capture_output=True,
                                 text=True).stdout.strip()
            path = os.path.join(self.tmp, "%s.key" % who)
            with open(path, "w") as f:
                os.chmod(path, 0o600)
                f.write(priv + "\n")
            self.keys[who] = {"private": priv, "public": pub, "private_file": path}

    # ------------------------------------------------------------ DNS

    def _dns(self):
        self.hosts_file = os.path.join(self.tmp, "lab.hosts")
        self.dns_records = {"vpn": VPN_ADDRESSES[0]}
        if self.ipv6_wans:
            # an AAAA-only name; vpn.lab.test stays A-only as in the v4 lab
            self.dns_records6 = {"vpn6": [VPN_ADDRESSES6[0]]}
        self._write_hosts()
        # The router's resolver: 'ip netns exec' bind-mounts this file over
        # /etc/resolv.conf for every command run in the namespace.
        d = os.path.join(NETNS_ETC, self.ns("router"))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "resolv.conf"), "w") as f:
            f.write("nameserver %s\noptions timeout:1 attempts:2\n" % DNS_SERVER)
        self._dnsmasq = self.popen(
            "inet", "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
            "--no-resolv", "--no-hosts", "--addn-hosts=%s" % self.hosts_file,
            "--local-ttl=%d" % self.dns_ttl, "--auth-ttl=%d" % self.dns_ttl,
            "--local=/%s/" % DOMAIN, "--listen-address=%s" % DNS_SERVER, "--bind-interfaces",
            "--user=root", "--group=root", "--pid-file=%s" % os.path.join(self.tmp, "dnsmasq.pid"),
            "--log-queries", "--log-facility=%s" % self.log("dnsmasq.log"),
            stdout=subprocess.DEVNULL, stderr=open(self.log("dnsmasq.err"), "w"))
        self._wait(lambda: self._dns_answers("vpn", self.dns_records["vpn"]), 10,
                   "dnsmasq did not answer")
        if self.dns_records6:
            self._wait(lambda: self.resolve6("vpn6") == self.dns_records6["vpn6"], 10,
                       "dnsmasq did not answer AAAA")

    def _write_hosts(self):
        tmp = self.hosts_file + ".new"
        with open(tmp, "w") as f:
            for name, addr in sorted(self.dns_records.items()):
                f.write("%s %s.%s\n" % (addr, name, DOMAIN))
            for name, addrs in sorted(self.dns_records6.items()):
                for addr in addrs:
                    f.write("%s %s.%s\n" % (addr, name, DOMAIN))
        os.replace(tmp, self.hosts_file)

    def set_dns(self, name, address):
        """Change (or add) NAME.lab.test at run time: rewrite the file, SIGHUP.
        An IPv4 address replaces the A record, an IPv6 address the AAAA
        records (the other family stays); None removes the A record."""
        if address is None:
            self.dns_records.pop(name, None)
        elif is_ipv6(address):
            self.dns_records6[name] = [address]
        else:
            self.dns_records[name] = address
        self._reload_dns()

    def set_dns6(self, name, addresses):
        """Set NAME.lab.test's AAAA records (a list; empty or None removes them)."""
        if isinstance(addresses, str):
            addresses = [addresses]
        if addresses:
            self.dns_records6[name] = list(addresses)
        else:
            self.dns_records6.pop(name, None)
        self._reload_dns()

    def _reload_dns(self):
        self._write_hosts()
        self._dnsmasq.send_signal(signal.SIGHUP)

    def resolve(self, name, ns="inet", family=4):
        """What the system resolver in ``ns`` answers for NAME.lab.test
        (IPv4, or with family=6 IPv6: AAAA only, never v4-mapped)."""
        if "." not in name:
            name = "%s.%s" % (name, DOMAIN)
        if ns == "router" and family == 6:
            r = self.run("router", "python3", "-c", _GAI6_PY, name, check=False)
        elif ns == "router":
            r = self.run("router", "getent", "ahostsv4", name, check=False)
        else:
            r = self.run(ns, "python3", "-c", _DIG_PY, DNS_SERVER, name,
                         "28" if family == 6 else "1", check=False)
        addrs = []
        for line in r.stdout.splitlines():
            a = line.split()[0] if line.split() else ""
            if a and a not in addrs:
                addrs.append(a)
        return addrs

    def resolve6(self, name, ns="inet"):
        """resolve(name, ns, family=6): the AAAA answers."""
        return self.resolve(name, ns, family=6)

    def _dns_answers(self, name, address):
        return address in self.resolve(name)

    # ------------------------------------------------------------ WireGuard

    def start_wg(self, ns, dev):
        """Create WireGuard device DEV in NS: kernel WireGuard where the kernel
        has it (tests/lab/wgdev.py decides), else ``wireguard-go -f DEV``
        as a tracked child.  Returns a handle for stop_wg()."""
        if _wgdev is not None:
            return _wgdev.start(self, ns, dev)
        sock = os.path.join(WG_RUN_DIR, dev + ".sock")
        p = self.popen(ns, "wireguard-go", "-f", dev,
                       stdout=open(self.log("wireguard-go-%s.log" % dev), "a"),
                       stderr=subprocess.STDOUT)
        self._wait(lambda: os.path.exists(sock) and self.ip(ns, "link", "show", dev,
                                                            check=False).returncode == 0,
                   10, "wireguard-go %s did not start" % dev)
        return (ns, dev, p)

    def stop_wg(self, handle):
        """Delete the device and stop its wireguard-go (safe to call twice)."""
        if handle is None:
            return
        if _wgdev is not None:
            _wgdev.stop(handle)
            return
        ns, dev, p = handle
        self.ip(ns, "link", "del", dev, check=False)
        self.stop_process(p)
        try:
            os.unlink(os.path.join(WG_RUN_DIR, dev + ".sock"))
        except OSError:
            pass

    @property
    def wg_backend(self):
        """'kernel' or 'wireguard-go'."""
        return _wgdev.backend() if _wgdev is not None else "wireguard-go"

    def _vpn_wg(self):
        dev = self.vpn_wg
        self.vpn_wg_handle = self.start_wg("vpn", dev)
        allowed = [LAN_NET, TUNNEL_ROUTER + "/32"]
        if self.ipv6_wans:
            allowed += [LAN_NET6, TUNNEL_ROUTER6 + "/128"]
        self.run("vpn", "wg", "set", dev, "listen-port", VPN_PORT,
                 "private-key", self.keys["vpn"]["private_file"],
                 "peer", self.keys["router"]["public"],
                 "allowed-ips", ",".join(allowed))
        self.ip("vpn", "addr", "add", TUNNEL_VPN + "/24", "dev", dev)
        if self.ipv6_wans:
            self.ip("vpn", "-6", "addr", "add", TUNNEL_VPN6 + "/64", "dev", dev, "nodad")
        self.ip("vpn", "link", "set", dev, "up")
        self.ip("vpn", "route", "add", LAN_NET, "dev", dev)
        if self.ipv6_wans:
            self.ip("vpn", "-6", "route", "add", LAN_NET6, "dev", dev)

    def start_relay_server(self, port=RELAY_PORT):
        """`wgrouter relay-server` on the server: TCP PORT on every address,
        forwarding to the server's WireGuard on 127.0.0.1:VPN_PORT only."""
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        self.relay_server_log = self.log("relay-server.log")
        self.relay_server_proc = self.popen(
            "vpn", sys.executable, "-m", "wgrouter", "relay-server", "--listen", "0.0.0.0:%d" % port,
            "--forward", "127.0.0.1:%d" % VPN_PORT, cwd=REPO, env=env,
            stdout=open(self.relay_server_log, "a"), stderr=subprocess.STDOUT)
        self._wait(lambda: "listening on" in open(self.relay_server_log).read(), 10,
                   "relay-server did not start")
        return self.relay_server_proc

    def vpn_endpoint(self):
        """The router's address:port as the server sees it (``wg show`` on vpn)."""
        r = self.run("vpn", "wg", "show", self.vpn_wg, "endpoints")
        for line in r.stdout.splitlines():
            key, _, ep = line.partition("\t")
            if key == self.keys["router"]["public"]:
                return None if ep in ("", "(none)") else ep
        return None

    def handshake_age(self):
        from tests.lab import observe
        return observe.handshake_age(self)

    def tunnel_works(self, timeout=5.0):
        from tests.lab import observe
        return observe.tunnel_works(self, timeout)

    # ------------------------------------------------------------ config files

    def write_network_config(self, nohostroute=False, endpoint_host="vpn." + DOMAIN,
                             endpoint_port=VPN_PORT):
        """lab.root/etc/config/network the way OpenWrt has it."""
        self.endpoint = (endpoint_host, endpoint_port)
        v6 = bool(self.ipv6_wans)
        wg = [("proto", "wireguard"), ("private_key", self.keys["router"]["private"]),
              ("addresses", [TUNNEL_ROUTER + "/24"] + ([TUNNEL_ROUTER6 + "/64"] if v6 else []))]
        if nohostroute:
            wg.append(("nohostroute", "1"))
        sections = [
            ("interface", "loopback", [("device", "lo"), ("proto", "static"),
                                       ("ipaddr", "127.0.0.1"), ("netmask", "255.0.0.0")]),
            ("interface", "lan", [("device", "lan"), ("proto", "static"),
                                  ("ipaddr", LAN_ROUTER), ("netmask", "255.255.255.0")]),
        ]
        for name, w in WANS.items():
            addr, _, plen = w["address"].partition("/")
            sections.append(("interface", name, [
                *self._device_option(name), ("proto", "static"), ("ipaddr", addr),
                ("netmask", _netmask(int(plen))), ("gateway", w["gateway"]),
                ("metric", str(w["metric"])), ("dns", DNS_SERVER)]
                + ([] if self.force_link else [("force_link", "0")])
                + ([("ip6addr", w["address6"]), ("ip6gw", w["gateway6"])]
                   if name in self.ipv6_wans else [])))
        sections.append(("interface", self.router_wg, wg))
        sections.append(("wireguard_%s" % self.router_wg, "vpn", [
            ("description", "lab vpn server"),
            ("public_key", self.keys["vpn"]["public"]),
            ("endpoint_host", endpoint_host), ("endpoint_port", str(endpoint_port)),
            ("persistent_keepalive", str(self.keepalive)),
            ("allowed_ips", [REMOTE_NET, TUNNEL_VPN + "/32"]
             + ([REMOTE_NET6, TUNNEL_VPN6 + "/128"] if v6 else [])),
            ("route_allowed_ips", "1")]))
        self._write_config("network", ucifile.render(sections))

    def _device_option(self, wan):
        return [] if wan in self.unnamed_devices else [("device", WANS[wan]["device"])]

    def write_wgrouter_config(self, check_interval=1, failback_holddown=5, wan_keepalive=25,
                              wanb_keepalive=15, endpoints=None, probe=PROBE_TARGET,
                              extra="", mwan3=False, dns_ttl_min=None, probe_timeout=None, relays=(),
                              backoff_base=None, backoff_max=None):
        if endpoints is None:
            endpoints = ["vpn.%s:%d" % (DOMAIN, VPN_ALT_PORT),
                         "%s:%d" % (VPN_ADDRESSES[1], VPN_PORT)]
        sections = [
            # None leaves an option out: the daemon's shipped default
            ("wgrouter", "main", [(k, str(v)) for k, v in (("check_interval", check_interval),
                                                          ("failback_holddown", failback_holddown))
                                  if v is not None]
             + ([("mwan3", "1")] if mwan3 else [])
             + ([("dns_ttl_min", str(dns_ttl_min))] if dns_ttl_min is not None else [])
             + ([("probe_timeout", str(probe_timeout))] if probe_timeout is not None else [])
             + [(k, str(v)) for k, v in (("backoff_base", backoff_base), ("backoff_max", backoff_max))
                if v is not None]),
            ("wan", "wan", [*self._device_option("wan"), ("keepalive", str(wan_keepalive)),
                            ("track_ip", [ISPA_INET]), ("dns_server", [DNS_SERVER])]
             + ([("table", str(WANS["wan"]["table"]))] if mwan3 else [])),
            ("wan", "wanb", [*self._device_option("wanb"), ("keepalive", str(wanb_keepalive)),
                             ("track_ip", [ISPB_INET]), ("dns_server", [DNS_SERVER])]
             + ([("table", str(WANS["wanb"]["table"]))] if mwan3 else [])),
            ("tunnel", self.router_wg, [("probe", probe)]),
            ("peer", None, [("tunnel", self.router_wg),
                            ("public_key", self.keys["vpn"]["public"]),
                            ("endpoint", list(endpoints))] + ([("relay", list(relays))] if relays else [])),
        ]
        self._write_config("wgrouter", ucifile.render(sections) + extra)

    def _write_config(self, name, text):
        path = os.path.join(self.root, "etc/config", name)
        with open(path, "w") as f:
            f.write(text)
        return path

    # ------------------------------------------------------------ modes

    def start_baseline(self, watchdog_interval=60, stale_after=150, endpoint_host=None):
        """Stock OpenWrt: netifd with the host dependency + wireguard_watchdog.
        endpoint_host: netifd's endpoint_host (default: the vpn's DNS name;
        an IPv6 literal or "vpn6.lab.test" in an ipv6 lab)."""
        from tests.lab import baseline
        net = {"endpoint_host": endpoint_host} if endpoint_host else {}
        self.write_network_config(nohostroute=False, **net)
        self.netifd.configure(mode="stock", hotplug_dir=None)
        self.netifd.boot()
        self.watchdog = baseline.Watchdog(self, interval=watchdog_interval,
                                          stale_after=stale_after)
        self.watchdog.start()
        return self

    def start_wgrouter(self, hotplug_dir=None, cmd=None, endpoint_host=None, without=(), **config):
        """netifd with nohostroute=1, then ``python3 -m wgrouter run --root ROOT``.
        endpoint_host: netifd's endpoint_host (default: the vpn's DNS name;
        an IPv6 literal such as VPN_ADDRESSES6[0] is written unbracketed, as
        in OpenWrt's UCI, and bracketed for wg).  without: top-level modules
        the daemon cannot import, as on a router without that package."""
        if hotplug_dir is None:
            hotplug_dir = os.path.join(REPO, "files/etc/hotplug.d/iface")
        net = {"endpoint_host": endpoint_host} if endpoint_host else {}
        self.write_network_config(nohostroute=True, **net)
        self.write_wgrouter_config(**config)
        self.netifd.configure(mode="wgrouter", hotplug_dir=hotplug_dir)
        self.netifd.boot()
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env["WGROUTER_ROOT"] = self.root
        argv = cmd or [sys.executable, "-m", "wgrouter", "run", "--root", self.root]
        if without:
            # a router without these optional packages: importing them fails
            argv = [sys.executable, "-c", "import runpy, sys; sys.modules.update(dict.fromkeys(%r)); "
                    "runpy.run_module('wgrouter', run_name='__main__')" % (list(without),),
                    "run", "--root", self.root]
        self.wgrouter_log = self.log("wgrouter.log")
        self.wgrouter = self.popen("router", *argv, cwd=REPO, env=env,
                                   stdout=open(self.wgrouter_log, "a"), stderr=subprocess.STDOUT)
        return self.wgrouter

    def stop_wgrouter(self):
        p, self.wgrouter = self.wgrouter, None
        if p is not None:
            self.stop_process(p, timeout=10)
            return p.returncode
        return None

    # ------------------------------------------------------------ teardown

    def teardown(self):
        if self.watchdog is not None:
            try:
                self.watchdog.stop()
            except Exception:
                pass
        if self.netifd is not None:
            try:
                self.netifd.stop()
            except Exception:
                pass
        with self._lock:
            procs = list(reversed(self.procs))
        for p in procs:
            try:
                self.stop_process(p, timeout=3)
            except Exception:
                pass
        if self._built:
            from tests.lab import cleanup
            cleanup.cleanup(self.prefix, keep_tmp=self.keep_tmp)
        self._built = False

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _wait(pred, timeout, message, step=0.05):
        deadline = time.monotonic() + timeout
        while True:
            try:
                if pred():
                    return
            except (LabError, subprocess.SubprocessError, OSError):
                pass
            if time.monotonic() > deadline:
                raise LabError(message)
            time.sleep(step)

    def wait_for(self, pred, timeout, step=0.1):
        """Poll pred() until true; return True/False (no exception)."""
        try:
            self._wait(pred, timeout, "timeout", step)
            return True
        except LabError:
            return False


def wan6_net(wan):
    """The /64 of WAN's IPv6 address ("2001:db8:1::/64")."""
    return str(ipaddress.ip_interface(WANS[wan]["address6"]).network)


def _ipv6_wans(ipv6):
    """Lab(ipv6=...) as a tuple of WAN names, in WANS order."""
    if ipv6 is True:
        return tuple(WANS)
    if not ipv6:
        return ()
    if isinstance(ipv6, str):
        ipv6 = (ipv6,)
    unknown = [w for w in ipv6 if w not in WANS]
    if unknown:
        raise LabError("ipv6: no WAN %s in the lab" % ", ".join(map(repr, unknown)))
    return tuple(w for w in WANS if w in ipv6)


def is_ipv6(address):
    """True for an IPv6 address (optionally [bracketed] or with a /prefix)."""
    return ":" in address.strip("[]").partition("/")[0]


def endpoint_text(host, port):
    """host:port as wg wants it: [v6]:port for an IPv6 literal."""
    host = str(host)
    if ":" in host and not host.startswith("["):
        host = "[%s]" % host
    return "%s:%s" % (host, port)


def _netmask(plen):
    bits = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
    return ".".join(str((bits >> s) & 0xFF) for s in (24, 16, 8, 0))


# A resolver query straight to the lab DNS server, printing answer addresses
# (stdlib only: this machine has no dig).
_DIG_PY = r"""
import socket, struct, sys, random
server, name = sys.argv[1], sys.argv[2]
qtype = int(sys.argv[3]) if len(sys.argv) > 3 else 1
qid = random.randrange(65536)
q = struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0)
q += b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\0'
q += struct.pack('>HH', qtype, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.sendto(q, (server, 53))
data = s.recv(4096)
an = struct.unpack('>H', data[6:8])[0]
i = 12
while data[i]:
    i += data[i] + 1
i += 5
for _ in range(an):
    if data[i] & 0xc0 == 0xc0:
        i += 2
    else:
        while data[i]:
            i += data[i] + 1
        i += 1
    rtype, rclass, ttl, rdlen = struct.unpack('>HHIH', data[i:i + 10])
    i += 10
    if rtype == 1 and qtype == 1:
        print(socket.inet_ntoa(data[i:i + 4]), ttl)
    elif rtype == 28 and qtype == 28:
        print(socket.inet_ntop(socket.AF_INET6, data[i:i + 16]), ttl)
    i += rdlen
"""

# The system resolver's IPv6 answers (getaddrinfo AF_INET6 without
# AI_V4MAPPED, so an A-only name answers nothing).
_GAI6_PY = r"""
import socket, sys
try:
    infos = socket.getaddrinfo(sys.argv[1], None, socket.AF_INET6, socket.SOCK_DGRAM)
except socket.gaierror:
    infos = []
for info in infos:
    print(info[4][0])
"""
