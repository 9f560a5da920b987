"""Faults injected into a running lab.

Each fault returns the time.time() at which it took effect and appends
(time, name, detail) to ``lab.faults``.  The time is taken right after the
command that makes the fault real (link down, nft rule, conntrack flush,
SIGHUP), before any reaction (netifd, hotplug) runs.
"""

import threading
import time

from tests.lab import topology


def _record(lab, name, detail=""):
    t = time.time()
    lab.faults.append((t, name, detail))
    return t


def _isp(wan):
    return topology.WANS[wan]["isp"]


def carrier_loss(lab, wan="wan"):
    """The ISP side of the WAN's link goes down; the router sees NO-CARRIER.
    netifd reacts as the WAN's force_link says (Lab(force_link=...)): with
    force_link 0 (dhcp, pppoe) an ifdown, with 1 (proto static's default)
    nothing but a log line, the routes left in place and marked linkdown."""
    lab.ip(_isp(wan), "link", "set", "dev", "cpe", "down")
    t = _record(lab, "carrier_loss", wan)
    lab.netifd.carrier(wan, False)
    return t


def carrier_return(lab, wan="wan"):
    lab.ip(_isp(wan), "link", "set", "dev", "cpe", "up")
    if wan in lab.ipv6_wans:
        # the lab keeps v6 addresses on link down; this makes sure of it
        lab.ip(_isp(wan), "-6", "addr", "replace", topology.WANS[wan]["gateway6"] + "/64",
               "dev", "cpe", "nodad")
    lab.wait_for(lambda: "NO-CARRIER" not in lab.ip("router", "link", "show",
                                                     topology.WANS[wan]["device"]).stdout, 5,
                 step=0.02)
    t = _record(lab, "carrier_return", wan)
    lab.netifd.carrier(wan, True)
    return t


def silent_failure(lab, wan="wan", udp_port=None):
    """The ISP drops everything the router sends upstream (or only UDP to
    ``udp_port``), IPv4 and IPv6 alike (an inet table).  Link and addresses
    stay up: netifd sees nothing."""
    match = 'iifname "cpe"' + (" udp dport %d" % udp_port if udp_port else "")
    lab.nft(_isp(wan), """
table inet labfault
delete table inet labfault
table inet labfault {
    chain forward {
        type filter hook forward priority filter; policy accept;
        %s counter drop
    }
}
""" % match)
    return _record(lab, "silent_failure", "%s%s" % (wan, " udp/%d" % udp_port if udp_port else ""))


def restore_upstream(lab, wan="wan"):
    lab.run(_isp(wan), "nft", "delete", "table", "inet", "labfault", check=False)
    return _record(lab, "restore_upstream", wan)


def udp_blocked_everywhere(lab):
    """Both ISPs drop every UDP datagram they forward, either way and in
    both families, except DNS to and from the lab resolver: a hotel or
    guest network that passes only TCP (and its own DNS).  Its own table, so
    it combines with a silent failure."""
    for wan in topology.WANS:
        lab.nft(_isp(wan), """
table inet labudp
delete table inet labudp
table inet labudp {
    chain forward {
        type filter hook forward priority filter; policy accept;
        ip daddr %(dns)s udp dport 53 accept
        ip saddr %(dns)s udp sport 53 accept
        meta l4proto udp counter drop
    }
}
""" % {"dns": topology.DNS_SERVER})
    return _record(lab, "udp_blocked_everywhere")


def udp_unblocked(lab):
    for wan in topology.WANS:
        lab.run(_isp(wan), "nft", "delete", "table", "inet", "labudp", check=False)
    return _record(lab, "udp_unblocked")


def udp_blocked_dropped(lab):
    """UDP datagrams the ISPs dropped so far for udp_blocked_everywhere."""
    total = 0
    for wan in topology.WANS:
        r = lab.run(_isp(wan), "nft", "list", "table", "inet", "labudp", check=False)
        words = r.stdout.split()
        total += sum(int(n) for before, n in zip(words, words[1:]) if before == "packets")
    return total


def dropped(lab, wan="wan"):
    """Packets the silent failure has dropped so far (nft counter, both families)."""
    r = lab.run(_isp(wan), "nft", "list", "table", "inet", "labfault", check=False)
    for word_before, word in zip(r.stdout.split(), r.stdout.split()[1:]):
        if word_before == "packets":
            return int(word)
    return 0


def nat_reset(lab, isp="ispb"):
    """CGNAT state loss: flush the ISP's conntrack and switch its public SNAT
    address, so the next packet reaches the server from a new source."""
    if isp != "ispb":
        lab.run(isp, "conntrack", "-F", check=False)
        return _record(lab, "nat_reset", isp)
    new = [a for a in topology.ISPB_PUBLIC if a != lab.ispb_public][0]
    lab._ispb_snat(new)
    lab.run("ispb", "conntrack", "-F", check=False)
    return _record(lab, "nat_reset", "%s -> %s" % (isp, new))


def dns_move(lab, name="vpn", address=topology.VPN_ADDRESSES[1]):
    """NAME.lab.test now resolves to ADDRESS (file rewritten, dnsmasq SIGHUP)."""
    lab.set_dns(name, address)
    return _record(lab, "dns_move", "%s -> %s" % (name, address))


def vpn_address_down(lab, address=topology.VPN_ADDRESSES[0]):
    """The server stops answering UDP on ADDRESS (so a DNS move is observable).
    An IPv6 address (VPN_ADDRESSES6, ipv6 labs) goes into the ip6 table."""
    if topology.is_ipv6(address):
        lab.run("vpn", "nft", "add", "rule", "ip6", "vpn6", "faults", "ip6", "daddr", address,
                "meta", "l4proto", "udp", "drop")
    else:
        lab.run("vpn", "nft", "add", "rule", "ip", "vpn", "faults", "ip", "daddr", address,
                "meta", "l4proto", "udp", "drop")
    return _record(lab, "vpn_address_down", address)


def vpn_address_up(lab, address=topology.VPN_ADDRESSES[0]):
    """Every address answers again (both families)."""
    lab.run("vpn", "nft", "flush", "chain", "ip", "vpn", "faults")
    if lab.ipv6_wans:
        lab.run("vpn", "nft", "flush", "chain", "ip6", "vpn6", "faults")
    return _record(lab, "vpn_address_up", address)


def both_down(lab):
    lab.ip("ispa", "link", "set", "dev", "cpe", "down")
    lab.ip("ispb", "link", "set", "dev", "cpe", "down")
    t = _record(lab, "both_down")
    lab.netifd.carrier("wan", False)
    lab.netifd.carrier("wanb", False)
    return t


class Flap:
    """Carrier down/up of WAN every ``period`` s for ``duration`` s (thread)."""

    def __init__(self, lab, wan, period, duration):
        self.lab, self.wan, self.period, self.duration = lab, wan, period, duration
        self.transitions = []  # (time, "down"|"up")
        self.error = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="flap-" + wan)
        self._thread.start()

    def _run(self):
        end = time.monotonic() + self.duration
        try:
            _record(self.lab, "flap", "%s every %ss for %ss" % (self.wan, self.period,
                                                                 self.duration))
            while time.monotonic() < end:
                self.transitions.append((carrier_loss(self.lab, self.wan), "down"))
                time.sleep(self.period)
                self.transitions.append((carrier_return(self.lab, self.wan), "up"))
                if time.monotonic() >= end:
                    break
                time.sleep(self.period)
        except Exception as e:
            self.error = e

    def join(self, timeout=None):
        self._thread.join(timeout)
        if self.error:
            raise self.error


def flap(lab, wan="wan", period=1.0, duration=6.0):
    """Start flapping; returns a Flap (join() it).  Ends with the WAN up."""
    return Flap(lab, wan, period, duration)


class DnsFlip:
    """NAME.lab.test answers ``addresses[0]``, then ``addresses[1]``, ...
    in turn, changing every ``period`` s for ``duration`` s (thread), as a
    round-robin that serves one address at a time does.  Ends on the first."""

    def __init__(self, lab, name, addresses, period, duration):
        self.lab, self.name, self.addresses = lab, name, list(addresses)
        self.period, self.duration = period, duration
        self.changes = []  # (time, address)
        self.error = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="dnsflip-" + name)
        self._thread.start()

    def _run(self):
        end = time.monotonic() + self.duration
        i = 0
        try:
            _record(self.lab, "dns_flip", "%s between %s every %ss for %ss" % (
                self.name, ", ".join(self.addresses), self.period, self.duration))
            while time.monotonic() < end:
                i += 1
                address = self.addresses[i % len(self.addresses)]
                self.lab.set_dns(self.name, address)
                self.changes.append((time.time(), address))
                time.sleep(self.period)
            self.lab.set_dns(self.name, self.addresses[0])
            self.changes.append((time.time(), self.addresses[0]))
        except Exception as e:
            self.error = e

    def join(self, timeout=None):
        self._thread.join(timeout)
        if self.error:
            raise self.error
