"""The stock wireguard_watchdog, rebuilt from its documented rules.

Every ``interval`` seconds (60 on a router, from cron), for each enabled peer
of each WireGuard interface that is up: if endpoint_host is a host name (not
an IP literal), persistent_keepalive is set, and the latest handshake is
non-zero and at least ``stale_after`` (150) seconds old, run
``wg set IF peer KEY endpoint host:port``.  Nothing else: no routes, no other
WAN, port or address, no conntrack.
"""

import ipaddress
import os
import subprocess
import threading
import time

from tests.lab import ucifile

INTERVAL = 60  # the cron line runs it once a minute
STALE_AFTER = 150  # handshake age that counts as dead


def _is_ip(host):
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class Watchdog:
    def __init__(self, lab, interval=INTERVAL, stale_after=STALE_AFTER):
        self.lab = lab
        self.interval = interval
        self.stale_after = stale_after
        # (time.time(), interface, peer key, "host:port", rc); rc None while
        # 'wg set' still runs (it can block for minutes re-resolving a name
        # when DNS is unreachable, as on a router)
        self.actions = []
        self.runs = 0
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._loop, daemon=True, name="wg-watchdog")
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)  # a blocked "wg set" dies with the lab

    def _loop(self):
        while not self._stop.wait(self.interval):
            try:
                self.check_once()
            except Exception as e:  # the cron job would just run again
                self.actions.append((time.time(), None, None, "error: %s" % e, None))

    def check_once(self):
        self.runs += 1
        path = os.path.join(self.lab.root, "etc/config/network")
        with open(path) as f:
            sections = ucifile.parse(f.read())
        ifaces = [s[".name"] for s in sections
                  if s[".type"] == "interface" and s.get("proto") == "wireguard"]
        for iface in ifaces:
            r = self.lab.run("router", "wg", "show", iface, "latest-handshakes", check=False)
            if r.returncode != 0:
                continue  # interface not up
            handshakes = {}
            for line in r.stdout.splitlines():
                key, _, ts = line.partition("\t")
                handshakes[key] = int(ts or 0)
            for peer in sections:
                if peer[".type"] != "wireguard_" + iface or peer.get("disabled") == "1":
                    continue
                host = peer.get("endpoint_host")
                if not host or _is_ip(host):
                    continue
                if not peer.get("persistent_keepalive") or peer["persistent_keepalive"] == "0":
                    continue
                key = peer.get("public_key")
                last = handshakes.get(key, 0)
                if last == 0 or time.time() - last < self.stale_after:
                    continue
                ep = "%s:%s" % (host, peer.get("endpoint_port", "51820"))
                i = len(self.actions)
                self.actions.append((time.time(), iface, key, ep, None))
                try:
                    r = self.lab.run("router", "wg", "set", iface, "peer", key, "endpoint", ep,
                                     check=False, timeout=300)
                    rc = r.returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
                self.actions[i] = self.actions[i][:4] + (rc,)
