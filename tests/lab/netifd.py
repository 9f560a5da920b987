"""NetifdStandin: the parts of netifd that matter for WireGuard on two WANs.

netifd itself cannot run here, so this stand-in does what it does with real
commands (rules from OPENWRT.md, "What netifd does with a host dependency"):

* ifdown(wan): flush the WAN's addresses and routes (IPv4, and in an ipv6
  lab its global IPv6 address and v6 routes), then run the iface hotplug
  scripts (ACTION=ifdown INTERFACE=wan).
* ifup(wan) / ifupdate(wan): restore address and routes (v6 too), run hotplug.
* mode "stock": the tunnel's endpoint gets a host dependency: a /32 (a /128
  for an IPv6 endpoint) pinned to the WAN routing to it at setup.  When that
  WAN goes down the tunnel is torn down, and set up again from scratch on
  the next up/update event of any interface, pinned to whatever routes to
  the endpoint then.  No failback.
* mode "wgrouter": nohostroute=1, the tunnel is set up once and WAN events
  never touch it.

Events are serialized by one lock, as netifd runs one event (and one
hotplug-call) at a time.
"""

import ipaddress
import json
import os
import subprocess
import tempfile
import threading
import time

from tests.lab import topology
from tests.lab import ucifile

HOTPLUG_TIMEOUT = 30  # hotplug-call has none; a stuck script would hang the lab


class NetifdStandin:
    def __init__(self, lab, mode="stock", hotplug_dir=None, update_every=None):
        self.lab = lab
        self.mode = mode
        self.hotplug_dir = hotplug_dir
        self.update_every = update_every
        self.up = set(topology.WANS)  # the lab builds both WANs up
        self.tunnel_up = False
        self.pending = False  # stock: waiting for an event to set up again
        self.dep = None  # stock: (wan, endpoint ip) of the host dependency
        self.wg = None  # handle from lab.start_wg
        self.events = []  # (time.time(), text)
        self.hotplug_runs = []  # dicts: time, script, action, interface, rc, output
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._ticker = None

    def configure(self, mode, hotplug_dir=None, update_every=None):
        self.mode = mode
        self.hotplug_dir = hotplug_dir
        self.update_every = update_every
        if update_every and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, daemon=True,
                                            name="netifd-ifupdate")
            self._ticker.start()

    def _tick(self):
        # Periodic ifupdate of up WANs, as DHCP renewals and LTE modems
        # cause on real routers: the event a stock host dependency waits for.
        while not self._stop.wait(self.update_every):
            for wan in sorted(self.up):
                try:
                    self.ifupdate(wan)
                except Exception as e:  # keep ticking; record why
                    self._event("ifupdate %s failed: %s" % (wan, e))

    def stop(self):
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(5)

    def _event(self, text):
        self.events.append((time.time(), text))

    # ------------------------------------------------------------ WAN events

    def ifdown(self, wan):
        lab = self.lab
        w = topology.WANS[wan]
        with self._lock:
            self.up.discard(wan)
            # an IPv6 WAN keeps its link-local address, as the kernel does
            family = ["-4"] if wan in lab.ipv6_wans else []
            lab.ip("router", *family, "addr", "flush", "dev", w["device"], check=False)
            lab.ip("router", "route", "flush", "dev", w["device"], check=False)
            if lab.mwan3:
                lab.ip("router", "route", "flush", "dev", w["device"], "table", w["table"],
                       check=False)
            if wan in lab.ipv6_wans:
                lab.router_wan6_down(wan)
            if lab.mwan3:
                lab.mwan3_policy(self.up)
            self._event("ifdown %s" % wan)
            if self.mode == "stock" and self.dep and self.dep[0] == wan:
                self._event("host dependency %s lost: tear down %s" % (wan, lab.router_wg))
                self._teardown()
                self.pending = True
            self._hotplug("ifdown", wan)

    def ifup(self, wan):
        lab = self.lab
        w = topology.WANS[wan]
        with self._lock:
            lab.ip("router", "addr", "replace", w["address"], "dev", w["device"])
            lab.ip("router", "route", "replace", "default", "via", w["gateway"], "dev",
                   w["device"], "metric", w["metric"])
            if lab.mwan3:
                lab.ip("router", "route", "replace", "default", "via", w["gateway"], "dev",
                       w["device"], "table", w["table"])
            if wan in lab.ipv6_wans:
                lab.router_wan6_up(wan)
            self.up.add(wan)
            if lab.mwan3:
                lab.mwan3_policy(self.up)
            self._event("ifup %s" % wan)
            self._hotplug("ifup", wan, DEVICE=w["device"])
            self._dependency_event()

    def ifupdate(self, wan):
        w = topology.WANS[wan]
        with self._lock:
            if wan not in self.up:
                return
            self._event("ifupdate %s" % wan)
            self._hotplug("ifupdate", wan, DEVICE=w["device"])
            self._dependency_event()

    def mwan3_event(self, action, wan):
        """What mwan3track does when a WAN's track IPs stop (or start again)
        answering: ACTION=disconnected (connected) through the iface hotplug
        scripts, while netifd still reports the interface up."""
        if action not in ("connected", "disconnected"):
            raise ValueError(action)
        w = topology.WANS[wan]
        with self._lock:
            self._event("mwan3 %s %s" % (action, wan))
            self._hotplug(action, wan, DEVICE=w["device"])

    def _dependency_event(self):
        if self.mode == "stock" and self.pending:
            self._setup()

    # ------------------------------------------------------------ hotplug

    def _hotplug(self, action, interface, **extra):
        d = self.hotplug_dir
        if not d or not os.path.isdir(d):
            return
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "ACTION": action,
               "INTERFACE": interface, "WGROUTER_ROOT": self.lab.root}
        env.update(extra)
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            if not os.path.isfile(path):
                continue
            t0 = time.time()
            try:
                r = self.lab.run("router", "busybox", "ash", path, env=env, check=False,
                                 timeout=HOTPLUG_TIMEOUT)
                rc, out = r.returncode, r.stdout + r.stderr
            except subprocess.TimeoutExpired:
                rc, out = None, "timeout after %ds" % HOTPLUG_TIMEOUT
            self.hotplug_runs.append(dict(time=t0, duration=time.time() - t0, script=name,
                                          action=action, interface=interface, rc=rc,
                                          output=out))

    # ------------------------------------------------------------ the tunnel

    def setup_tunnel(self):
        with self._lock:
            return self._setup()

    def _config(self):
        with open(os.path.join(self.lab.root, "etc/config/network")) as f:
            sections = ucifile.parse(f.read())
        dev = self.lab.router_wg
        iface = [s for s in sections if s[".type"] == "interface" and s[".name"] == dev][0]
        peers = [s for s in sections if s[".type"] == "wireguard_" + dev
                 and s.get("disabled", "0") != "1"]
        return iface, peers

    def _setup(self):
        """proto wireguard setup: device, wg config, addresses, routes, host deps."""
        lab = self.lab
        dev = lab.router_wg
        if self.tunnel_up:
            return True
        iface, peers = self._config()
        self.wg = lab.start_wg("router", dev)
        keyfile = tempfile.NamedTemporaryFile("w", dir=lab.tmp, delete=False)
        with keyfile:
            keyfile.write(iface["private_key"] + "\n")
        argv = ["wg", "set", dev, "private-key", keyfile.name]
        for p in peers:
            argv += ["peer", p["public_key"]]
            if p.get("endpoint_host"):
                # wireguard.sh brackets an IPv6 literal the same way
                argv += ["endpoint", topology.endpoint_text(p["endpoint_host"],
                                                            p.get("endpoint_port", 51820))]
            if p.get("allowed_ips"):
                argv += ["allowed-ips", ",".join(_as_list(p["allowed_ips"]))]
            if p.get("persistent_keepalive"):
                argv += ["persistent-keepalive", p["persistent_keepalive"]]
        r = lab.run("router", *argv, check=False, timeout=60)
        os.unlink(keyfile.name)
        if r.returncode != 0:
            self._event("setup %s failed: %s" % (dev, r.stderr.strip()))
            self._teardown()
            self.pending = True
            return False
        for a in _as_list(iface.get("addresses", [])):
            lab.ip("router", "addr", "add", a, "dev", dev)
        lab.ip("router", "link", "set", dev, "up")
        for p in peers:
            if p.get("route_allowed_ips", "0") == "1":
                for net in _as_list(p.get("allowed_ips", [])):
                    lab.ip("router", "route", "replace", net, "dev", dev)
        self.dep = None
        if iface.get("nohostroute", "0") != "1":
            for ep in self._endpoints():
                route = self.route_to(ep)
                if route is None:
                    self._event("no route to endpoint %s: %s stays down" % (ep, dev))
                    self._teardown()
                    self.pending = True
                    return False
                wan, gw, metric = route
                argv = ["route", "replace", _host(ep), "dev", topology.WANS[wan]["device"]]
                if gw:
                    argv += ["via", gw]
                if metric is not None:
                    argv += ["metric", metric]
                lab.ip("router", *argv)
                self.dep = (wan, ep)
                self._event("host route %s pinned to %s" % (_host(ep), wan))
        self.tunnel_up = True
        self.pending = False
        self._event("setup %s%s" % (dev, " on %s" % self.dep[0] if self.dep else ""))
        return True

    def _endpoints(self):
        r = self.lab.run("router", "wg", "show", self.lab.router_wg, "endpoints")
        out = []
        for line in r.stdout.splitlines():
            _, _, ep = line.partition("\t")
            if ep and ep != "(none)":
                out.append(ep.rpartition(":")[0].strip("[]"))
        return out

    def route_to(self, address):
        """The WAN whose main-table route best matches address: (wan, gateway, metric)."""
        target = ipaddress.ip_address(address)
        family = "-6" if target.version == 6 else "-4"
        r = self.lab.ip("router", family, "-j", "route", "show", "table", "main")
        best = None
        devices = {w["device"]: name for name, w in topology.WANS.items()}
        for route in json.loads(r.stdout or "[]"):
            dev = route.get("dev")
            if dev not in devices or devices[dev] not in self.up:
                continue
            dst = route.get("dst", "default")
            if dst == "default":
                dst = "::/0" if target.version == 6 else "0.0.0.0/0"
            net = ipaddress.ip_network(dst, strict=False)
            if target not in net:
                continue
            key = (net.prefixlen, -route.get("metric", 0))
            if best is None or key > best[0]:
                best = (key, (devices[dev], route.get("gateway"), route.get("metric")))
        return best[1] if best else None

    def _teardown(self):
        lab = self.lab
        if self.dep:
            wan, ep = self.dep
            lab.ip("router", "route", "del", _host(ep), check=False)
        self.dep = None
        if self.wg is not None:
            lab.stop_wg(self.wg)
            self.wg = None
        self.tunnel_up = False


def _host(address):
    """The host route prefix of an endpoint address: /32 or /128."""
    return address + ("/128" if ":" in address else "/32")


def _as_list(v):
    return v if isinstance(v, list) else v.split()
