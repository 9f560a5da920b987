"""NetifdStandin: the parts of netifd that matter for WireGuard on two WANs.

netifd itself cannot run here, so this stand-in does what it does with real
commands.  Each rule cites openwrt/netifd (read at 7901e66, the openwrt-24.10
release the observations were made on) or an observation of the real netifd
with the real WireGuard proto handler in a VM (OPENWRT.md, "What netifd does
with a host dependency", 2026-12-01):

* Carrier loss and return (``carrier``).  interface.c
  ``interface_set_link_state`` logs "has link connectivity loss" and then
  ``interface_check_state`` takes the interface down only when neither the
  link nor ``force_link`` holds it up.  ``force_link`` defaults to 1 for
  ``proto static`` (proto-static.c: ``PROTO_FLAG_FORCE_LINK_DEFAULT``,
  applied in interface.c ``interface_alloc``) and to 0 for every other proto
  (dhcp, pppoe); ``option force_link`` overrides it.  So a static WAN keeps
  its addresses and routes on carrier loss (the kernel marks them
  ``linkdown``), no hotplug event is sent, and the host route stays pinned to
  the dead WAN.  Its carrier return raises only IFEV_LINK_UP, for which
  interface-event.c ``interface_queue_event`` runs no hotplug-call.
* ifdown(wan) (interface.c ``mark_interface_down``): the interface's own
  users hear IFEV_DOWN first (``interface_event``: ``iface->users`` before
  ``iface_all_users``), so a host dependency on it tears the tunnel down and
  ``ifdown wg0`` is queued before ``ifdown wan``.  The WAN's addresses and
  routes are flushed, the pinned host route with them (interface-ip.c: it
  lives in the WAN's ``host_routes``).
* The tunnel's teardown and its new setup run as the proto handler's script
  tasks, after the event, not inside it (proto-shell.c
  ``proto_shell_if_down_cb`` -> IFPEV_LINK_LOST + PROTO_CMD_TEARDOWN):
  teardown deletes the device and the endpoint host routes; its end
  (IFPEV_DOWN while the interface is in IFS_SETUP) gives ``ifup-failed
  wg0`` (``mark_interface_down``), and ``interface_handle_config_change``
  sets it up again at once (autostart).  The new setup pins the endpoint
  through whatever routes to it now (``proto_shell_add_host_dependency`` ->
  interface-ip.c ``interface_ip_add_target_route``: a /32 or /128 with the
  matching route's gateway and metric, RTPROT_STATIC from system-linux.c
  ``system_rt``), then ``ifup wg0`` with DEVICE.  Observed: device deleted
  0.4-0.6 s after the cut and created again on wanb at 1.8-2.1 s, with no
  other interface event; events ``ifdown wg0``, ``ifdown wan``,
  ``ifup-failed wg0``, ``ifup wg0``.  Here each step takes as long as its
  commands take; the stand-in adds no delay of its own.
* No route to the endpoint at setup: the dependency stays unresolved, the
  interface unavailable (``proto_shell_check_dependencies``) until the next
  IFEV_UP or IFEV_UPDATE of any interface (``proto_shell_if_up_cb``).
  A resolved dependency watches only its WAN: another WAN's return changes
  nothing (no failback, observed).
* Hotplug (interface-event.c): events are queued and run one at a time,
  ``hotplug-call iface`` each, FIFO, with ``interface_queue_event``'s rules
  (one pending event per interface; a new one replaces it, except that an
  ifupdate does not replace a pending ifup).  DEVICE is set on ifup and
  ifupdate only (``call_hotplug``), from the interface's device at the time
  the event runs.  At start every interface gets an ifup.
* mwan3track runs hotplug-call itself (OPENWRT.md), outside netifd's queue.
* nohostroute=1 (wgrouter's configuration): no host dependency, WAN events
  never touch the tunnel (observed).
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
SETTLE_TIMEOUT = 60  # settle(): a tunnel setup and its hotplug runs fit easily

# uci's true values for a boolean option (netifd reads them as blobmsg bools)
_TRUE = ("1", "true", "yes", "on", "enabled")
_FALSE = ("0", "false", "no", "off", "disabled")
# protos whose handler sets PROTO_FLAG_FORCE_LINK_DEFAULT (proto-static.c)
FORCE_LINK_PROTOS = ("static",)


class NetifdStandin:
    def __init__(self, lab, mode="stock", hotplug_dir=None):
        self.lab = lab
        self.mode = mode  # informational: the tunnel's nohostroute decides
        self.hotplug_dir = hotplug_dir
        self.up = set(topology.WANS)  # the lab builds both WANs up
        self.link = {wan: True for wan in topology.WANS}
        self.tunnel_up = False
        self.pending = False  # unresolved host dependency: set up on the next up/update
        self.dep = None  # (wan, endpoint ip) of the resolved host dependency
        self._pin = None  # the ip route arguments of its host route
        self.wg = None  # handle from lab.start_wg
        self.events = []  # (time.time(), text)
        self.hotplug_runs = []  # dicts: time, script, action, interface, rc, output
        self.hotplug_events = []  # dicts: time, action, interface, device (as run)
        self._lock = threading.RLock()  # netifd's main loop: one change at a time
        self._cond = threading.Condition()  # the hotplug queue
        self._queue = []  # interface names, FIFO
        self._queued = {}  # interface -> its one pending event
        self._current = None  # (interface, event) whose hotplug-call runs
        self._tasks = []  # proto script task threads
        self._booted = False
        self._setting_up = False
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._hotplug_loop, daemon=True,
                                        name="netifd-hotplug")
        self._worker.start()

    def configure(self, mode, hotplug_dir=None):
        self.mode = mode
        self.hotplug_dir = hotplug_dir

    def stop(self):
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in list(self._tasks):
            t.join(10)
        self._worker.join(5)

    def _event(self, text):
        self.events.append((time.time(), text))

    def settle(self, timeout=SETTLE_TIMEOUT):
        """Wait until no proto task runs and every queued hotplug event ran."""
        deadline = time.monotonic() + timeout
        while True:
            for t in list(self._tasks):
                t.join(max(0.0, deadline - time.monotonic()))
            with self._cond:
                while (self._queue or self._current) and time.monotonic() < deadline:
                    self._cond.wait(0.05)
                idle = not self._queue and not self._current
            if idle and not any(t.is_alive() for t in self._tasks):
                return True
            if time.monotonic() >= deadline:
                return False

    # ------------------------------------------------------------ configuration

    def _sections(self):
        with open(os.path.join(self.lab.root, "etc/config/network")) as f:
            return ucifile.parse(f.read())

    def force_link(self, wan):
        """force_link of WAN's interface: the option, else its proto's default."""
        for s in self._sections():
            if s[".type"] == "interface" and s[".name"] == wan:
                value = str(s.get("force_link", "")).strip().lower()
                if value in _TRUE:
                    return True
                if value in _FALSE:
                    return False
                return s.get("proto") in FORCE_LINK_PROTOS
        return False

    def _config(self):
        sections = self._sections()
        dev = self.lab.router_wg
        iface = [s for s in sections if s[".type"] == "interface" and s[".name"] == dev][0]
        peers = [s for s in sections if s[".type"] == "wireguard_" + dev
                 and s.get("disabled", "0") != "1"]
        return iface, peers

    # ------------------------------------------------------------ start

    def boot(self):
        """netifd's start: every interface gets its ifup, the tunnel last
        (its host dependency needs the WANs).  Returns whether the tunnel
        came up; waits for the hotplug runs.  Later calls only set the
        tunnel up (netifd starts once)."""
        with self._lock:
            for s in ([] if self._booted else self._sections()):
                if s[".type"] != "interface" or s[".name"] == self.lab.router_wg:
                    continue
                if s[".name"] in topology.WANS and s[".name"] not in self.up:
                    continue
                self._queue_event(s[".name"], "ifup")
            self._booted = True
        ok = self._setup()
        self.settle()
        return ok

    def setup_tunnel(self):
        ok = self._setup()
        self.settle()
        return ok

    # ------------------------------------------------------------ link events

    def carrier(self, wan, up):
        """The kernel reports WAN's carrier lost (up=False) or back.  Returns
        at once: like netifd, the tunnel's teardown and setup run after."""
        with self._lock:
            if self.link.get(wan) == up:
                return
            self.link[wan] = up
            self._event("Interface '%s' has link connectivity %s" % (wan, "" if up else "loss"))
            if self.force_link(wan):
                # the interface stays up: addresses and routes stay (linkdown
                # while the carrier is gone), no hotplug event either way
                return
            if up:
                self._ifup(wan)
            else:
                self._ifdown(wan)

    # ------------------------------------------------------------ WAN events

    def ifdown(self, wan):
        """`ifdown WAN`: netifd takes it down; waits for the consequences."""
        with self._lock:
            self._ifdown(wan)
        self.settle()

    def ifup(self, wan):
        with self._lock:
            self._ifup(wan)
        self.settle()

    def ifupdate(self, wan):
        with self._lock:
            if wan in self.up:
                self._event("ifupdate %s" % wan)
                self._queue_event(wan, "ifupdate")
                self._dependency_event()
        self.settle()

    def _ifdown(self, wan):
        lab = self.lab
        w = topology.WANS[wan]
        if wan not in self.up:
            return
        self.up.discard(wan)
        self._event("ifdown %s" % wan)
        # the WAN's own users first: the host dependency
        lost = self.dep is not None and self.dep[0] == wan
        if lost:
            self._event("host dependency %s lost: %s has lost the connection, tear down"
                        % (wan, lab.router_wg))
            self._queue_event(lab.router_wg, "ifdown")
        self._queue_event(wan, "ifdown")
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
        if lost:
            self._task(self._rebuild)

    def _ifup(self, wan):
        lab = self.lab
        w = topology.WANS[wan]
        if wan in self.up:
            return
        lab.ip("router", "addr", "replace", w["address"], "dev", w["device"])
        lab.ip("router", "route", "replace", "default", "via", w["gateway"], "dev",
               w["device"], "metric", w["metric"], "proto", "static")
        if lab.mwan3:
            lab.ip("router", "route", "replace", "default", "via", w["gateway"], "dev",
                   w["device"], "table", w["table"], "proto", "static")
        if wan in lab.ipv6_wans:
            lab.router_wan6_up(wan)
        self.up.add(wan)
        if lab.mwan3:
            lab.mwan3_policy(self.up)
        self._event("ifup %s" % wan)
        self._queue_event(wan, "ifup")
        self._dependency_event()

    def mwan3_event(self, action, wan):
        """What mwan3track does when a WAN's track IPs stop (or start again)
        answering: ACTION=disconnected (connected) through the iface hotplug
        scripts, run by mwan3track itself while netifd still reports the
        interface up."""
        if action not in ("connected", "disconnected"):
            raise ValueError(action)
        w = topology.WANS[wan]
        self._event("mwan3 %s %s" % (action, wan))
        self._hotplug(action, wan, w["device"])

    def _dependency_event(self):
        # proto_shell_if_up_cb: an unresolved dependency looks again
        if self.pending and not self.tunnel_up and not self._setting_up:
            self.pending = False
            self._task(self._setup)

    # ------------------------------------------------------------ hotplug

    def _queue_event(self, interface, action):
        """interface-event.c interface_queue_event: one pending event per
        interface, FIFO across interfaces."""
        with self._cond:
            current = self._current
            if current is not None and current[0] == interface:
                if interface in self._queued:
                    if action != "ifupdate":
                        self._queued[interface] = action
                elif action != current[1] or action == "ifupdate":
                    self._queued[interface] = action
                    self._queue.append(interface)
            elif interface in self._queued:
                if not (self._queued[interface] == "ifup" and action == "ifupdate"):
                    self._queued[interface] = action
            else:
                self._queued[interface] = action
                self._queue.append(interface)
            self._cond.notify_all()

    def _device(self, interface):
        """The interface's l3 device now (None when it is down)."""
        if interface == self.lab.router_wg:
            return interface if self.tunnel_up else None
        if interface in topology.WANS:
            return topology.WANS[interface]["device"] if interface in self.up else None
        for s in self._sections():
            if s[".type"] == "interface" and s[".name"] == interface:
                return s.get("device")
        return None

    def _hotplug_loop(self):
        while True:
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                interface = self._queue.pop(0)
                action = self._queued.pop(interface)
                self._current = (interface, action)
            try:
                device = self._device(interface) if action in ("ifup", "ifupdate") else None
                self._hotplug(action, interface, device)
            except Exception as e:  # keep serving events; record why
                self._event("hotplug %s %s failed: %s" % (action, interface, e))
            finally:
                with self._cond:
                    self._current = None
                    self._cond.notify_all()

    def _hotplug(self, action, interface, device):
        self.hotplug_events.append(dict(time=time.time(), action=action, interface=interface,
                                        device=device))
        d = self.hotplug_dir
        if not d or not os.path.isdir(d):
            return
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "ACTION": action,
               "INTERFACE": interface, "WGROUTER_ROOT": self.lab.root}
        if device:
            env["DEVICE"] = device
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

    def _task(self, fn):
        """Run fn as a proto script task: after the event that started it,
        beside netifd's other work (fn takes the lock for its state changes
        only: a `wg set` that waits for DNS does not hold up WAN events)."""
        def run():
            try:
                fn()
            except Exception as e:  # the lab's teardown may race a task
                self._event("proto task failed: %s" % e)

        self._tasks = [t for t in self._tasks if t.is_alive()]
        t = threading.Thread(target=run, daemon=True, name="netifd-proto")
        self._tasks.append(t)
        t.start()

    def _rebuild(self):
        """After the link loss: teardown ends in ifup-failed, autostart sets
        the interface up again at once."""
        with self._lock:
            if self._stop.is_set():
                return
            self._teardown()
            self._event("teardown %s done" % self.lab.router_wg)
            self._queue_event(self.lab.router_wg, "ifup-failed")
        self._setup()

    def _setup(self):
        """proto wireguard setup: device, wg config, addresses, routes, host
        deps.  Called without the lock: wg resolves endpoint names itself
        (retrying while DNS is unreachable), as wireguard.sh's wg does."""
        lab = self.lab
        dev = lab.router_wg
        with self._lock:
            if self.tunnel_up or self._setting_up or self._stop.is_set():
                return self.tunnel_up
            self._setting_up = True
            self.pending = False
        try:
            iface, peers = self._config()
            wg = lab.start_wg("router", dev)
            with self._lock:
                self.wg = wg
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
            try:
                r = lab.run("router", *argv, check=False, timeout=120)
            finally:
                os.unlink(keyfile.name)
            with self._lock:
                if self._stop.is_set():
                    return False
                if r.returncode != 0:
                    self._event("setup %s failed: %s" % (dev, r.stderr.strip()))
                    self._teardown()
                    self.pending = True
                    return False
                return self._setup_routes(iface, peers)
        finally:
            with self._lock:
                self._setting_up = False

    def _setup_routes(self, iface, peers):
        lab = self.lab
        dev = lab.router_wg
        for a in _as_list(iface.get("addresses", [])):
            lab.ip("router", "addr", "add", a, "dev", dev)
        lab.ip("router", "link", "set", dev, "up")
        for p in peers:
            if p.get("route_allowed_ips", "0") == "1":
                for net in _as_list(p.get("allowed_ips", [])):
                    lab.ip("router", "route", "replace", net, "dev", dev, "proto", "static")
        self.dep = None
        if iface.get("nohostroute", "0") != "1":
            for ep in self._endpoints():
                route = self.route_to(ep)
                if route is None:
                    # not observed: the interface stays unavailable, no event
                    self._event("no route to endpoint %s: %s waits for an interface event"
                                % (ep, dev))
                    self._teardown()
                    self.pending = True
                    return False
                wan, gw, metric = route
                argv = ["route", "replace", _host(ep), "dev", topology.WANS[wan]["device"]]
                if gw:
                    argv += ["via", gw]
                if metric is not None:
                    argv += ["metric", metric]
                argv += ["proto", "static"]
                lab.ip("router", *argv)
                self.dep = (wan, ep)
                self._pin = argv
                self._event("host route %s pinned to %s" % (_host(ep), wan))
        self.tunnel_up = True
        self._event("setup %s%s" % (dev, " on %s" % self.dep[0] if self.dep else ""))
        self._queue_event(dev, "ifup")
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
        """The up WAN whose main-table route best matches address:
        (wan, gateway, metric)."""
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
            # the handler deletes its endpoint routes (OPENWRT.md); after an
            # ifdown of the WAN they went with its flush already
            lab.ip("router", "route", "del", *self._pin[2:], check=False)
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
