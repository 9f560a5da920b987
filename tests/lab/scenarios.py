"""Failover scenarios, shared by the scenario tests, the demo and the benchmark.

Each scenario takes a lab whose tunnel is already up (with wgrouter or with
the stock baseline running), a ProbeStream and a Capture, injects its fault
and returns an Outcome: seconds from the fault to the first reply through the
tunnel (or, for failback, to the first tunnel packet on the primary WAN).
Where nothing recovers within ``limit`` the Outcome says so and carries the
limit as its figure.

A scenario's name says which WAN variant it uses where that matters
(``_dhcp``: force_link 0, netifd takes the WAN down on carrier loss;
``_static``: proto static's force_link 1, netifd does not; see
tests/lab/netifd.py).  The functions are the same: the variant is the lab's
(SETUP).
"""

import dataclasses
import os
import time

from tests.lab import faults
from tests.lab import observe
from tests.lab import topology

# Lab timings for wgrouter: a 1 s monitor makes the silent-failure bound
# (3 check intervals) short enough to test; 5 s of hold-down keeps failback
# tests short while still being far longer than a flap period.
LAB_CHECK_INTERVAL = 1.0
LAB_HOLDDOWN = 5.0
# The shipped defaults are a 1.5 s check and a 1 s probe timeout (ping's
# shortest); bench/run.py's *_defaults scenarios run with those.
LAB_PROBE_TIMEOUT = 1.0


@dataclasses.dataclass
class Outcome:
    name: str
    recovered: bool
    seconds: float  # the limit when not recovered
    limit: float
    fault_time: float
    notes: dict = dataclasses.field(default_factory=dict)


# Time-bound factor (tests/qemu/run.sh sets 5 for the VM under TCG, where a
# daemon's start alone can take over 15 s); the set-up waits below are scaled
# by it, the measured figures never are.
SCALE = float(os.environ.get("WGROUTER_LAB_SCALE", "1"))


def start(lab, mode, **config):
    """Start wgrouter or the stock baseline on a fresh lab and wait until the
    tunnel carries traffic."""
    if mode == "wgrouter":
        config.setdefault("check_interval", LAB_CHECK_INTERVAL)
        config.setdefault("failback_holddown", LAB_HOLDDOWN)
        config.setdefault("probe_timeout", LAB_PROBE_TIMEOUT)
        lab.start_wgrouter(**config)
    elif mode == "baseline":
        lab.start_baseline(**config)
    else:
        raise ValueError(mode)
    if not observe.tunnel_works(lab, timeout=15 * SCALE):
        raise topology.LabError("%s: the tunnel never came up (see %s)" % (mode, lab.logdir))
    if mode == "wgrouter":
        wait_state(lab, lambda p: p.get("state") == "up" and p.get("wan") == "wan", 15 * SCALE)
    return lab


def status(lab):
    from wgrouter import control
    return control.request(lab.root, {"method": "status"})


def peer_status(lab):
    """The one peer's status dict from the running daemon ({} if none)."""
    try:
        st = status(lab)
    except Exception:
        return {}
    for t in (st.get("tunnels") or {}).values():
        for p in (t.get("peers") or {}).values():
            return p
    return {}


def wait_state(lab, pred, timeout):
    if not lab.wait_for(lambda: pred(peer_status(lab)), timeout):
        raise topology.LabError("daemon never reached the expected state; last: %r (log %s)" % (
            peer_status(lab), getattr(lab, "wgrouter_log", None)))


def steady(probes, timeout=10.0):
    """Wait until the probe stream gets replies again."""
    if probes.wait_reply_after(time.time(), timeout) is None:
        raise topology.LabError("tunnel not steady before the fault")


def _measure(name, probes, t, limit, **notes):
    d = probes.wait_reply_after(t, limit)
    if d is None:
        return Outcome(name, False, limit, limit, t, notes)
    return Outcome(name, True, d, limit, t, notes)


def carrier_loss(lab, probes, cap, limit=30.0):
    steady(probes)
    t = faults.carrier_loss(lab, "wan")
    return _measure("carrier_loss", probes, t, limit)


def silent_failure(lab, probes, cap, limit=30.0):
    steady(probes)
    t = faults.silent_failure(lab, "wan")
    return _measure("silent_failure", probes, t, limit)


def udp_blocked_backup(lab, probes, cap, limit=30.0):
    """The backup carrier drops UDP to the usual port; the primary dies."""
    steady(probes)
    faults.silent_failure(lab, "wanb", udp_port=topology.VPN_PORT)
    t = faults.carrier_loss(lab, "wan")
    return _measure("udp_blocked_backup", probes, t, limit)


def dns_move(lab, probes, cap, limit=30.0):
    """The server moves to its second address; the old one goes quiet."""
    steady(probes)
    faults.dns_move(lab, "vpn", topology.VPN_ADDRESSES[1])
    t = faults.vpn_address_down(lab, topology.VPN_ADDRESSES[0])
    return _measure("dns_move", probes, t, limit, ttl=lab.dns_ttl)


def cgnat_nat_loss(lab, probes, cap, limit=30.0):
    """On the CGNAT backup, the carrier loses its NAT state and our public
    address changes."""
    steady(probes)
    t0 = faults.carrier_loss(lab, "wan")
    if probes.wait_reply_after(t0, limit) is None:
        return Outcome("cgnat_nat_loss", False, limit, limit, t0, {"stage": "failover to wanb"})
    time.sleep(1.0)
    before = lab.vpn_endpoint()
    t = faults.nat_reset(lab, "ispb")
    out = _measure("cgnat_nat_loss", probes, t, limit)
    lab.wait_for(lambda: lab.vpn_endpoint() != before, 5)
    out.notes.update(public_before=before, public_after=lab.vpn_endpoint())
    return out


def failback(lab, probes, cap, limit=60.0):
    """Primary dies, tunnel moves to the backup; primary returns.  Figure:
    seconds from the return to the first tunnel packet on the primary."""
    steady(probes)
    t0 = faults.carrier_loss(lab, "wan")
    if probes.wait_reply_after(t0, 30.0) is None:
        return Outcome("failback", False, limit, limit, t0, {"stage": "failover to wanb"})
    time.sleep(1.0)
    t = faults.carrier_return(lab, "wan")
    back = None
    end = time.time() + limit
    while time.time() < end:
        pk = [p for p in cap.tunnel_packets(since=t) if p["dev"] == "wan"]
        if pk:
            back = pk[0]["time"] - t
            break
        time.sleep(0.2)
    out = Outcome("failback", back is not None, back if back is not None else limit, limit, t)
    out.notes["outage_during_failback_s"] = round(probes.outage(since=t), 3)
    return out


def udp_blocked_everywhere(lab, probes, cap, limit=150.0):
    """Both ISPs drop every UDP datagram but DNS; the peer has a TCP relay
    (wgrouter's; the stock baseline has none and never recovers)."""
    steady(probes)
    t = faults.udp_blocked_everywhere(lab)
    return _measure("udp_blocked_everywhere", probes, t, limit)


def ipv6_carrier_loss(lab, probes, cap, limit=30.0):
    """carrier_loss with the tunnel on an IPv6 endpoint (see SETUP)."""
    steady(probes)
    t = faults.carrier_loss(lab, "wan")
    return _measure("ipv6_carrier_loss", probes, t, limit)


ALL = {
    "carrier_loss_dhcp": carrier_loss,
    "carrier_loss_static": carrier_loss,
    "silent_failure": silent_failure,
    "udp_blocked_backup_dhcp": udp_blocked_backup,
    "dns_move": dns_move,
    "cgnat_nat_loss": cgnat_nat_loss,
    "failback_dhcp": failback,
    "ipv6_carrier_loss_dhcp": ipv6_carrier_loss,
    "udp_blocked_everywhere": udp_blocked_everywhere,
}

# Lab and start options a scenario needs, for wgrouter and the baseline alike
# (the lab's default is force_link 0, the _dhcp variant).
SETUP = {
    "carrier_loss_static": ({"force_link": True}, {}),
    "ipv6_carrier_loss_dhcp": ({"ipv6": True}, {"endpoint_host": topology.VPN_ADDRESSES6[0]}),
    "udp_blocked_everywhere": ({"relay_server": True}, {}),
}
# Start options for wgrouter alone: the peer's relay, and a short ladder
# backoff (3 candidates on 2 WANs come before the relay; backoff_max stays
# long enough that a WAN left is not taken back meanwhile).
WGROUTER_SETUP = {
    "udp_blocked_everywhere": {"relays": ["%s:%d" % (topology.VPN_ADDRESSES[0], topology.RELAY_PORT)],
                               "backoff_base": 0.5, "backoff_max": 60},
}


def run(name, mode, limit=None, lab_kwargs=None, start_kwargs=None):
    """Build a fresh lab, start ``mode``, run scenario ``name``; Outcome."""
    fn = ALL[name]
    lab_setup, start_setup = SETUP.get(name, ({}, {}))
    if mode == "wgrouter":
        start_setup = dict(start_setup, **WGROUTER_SETUP.get(name, {}))
    with topology.Lab(**dict(lab_setup, **(lab_kwargs or {}))) as lab:
        start(lab, mode, **dict(start_setup, **(start_kwargs or {})))
        probes = observe.ProbeStream(lab)
        # in an ipv6 lab the LAN sends IPv6 through the tunnel as well, so
        # clear-text leaks of either family are counted
        probes6 = (observe.ProbeStream(lab, target=topology.PROBE_TARGET6)
                   if lab.ipv6_wans else None)
        cap = observe.Capture(lab)
        try:
            kw = {} if limit is None else {"limit": limit}
            out = fn(lab, probes, cap, **kw)
            out.name = name
            leaks = cap.leaks(since=out.fault_time)
            out.notes["leaks"] = len(leaks)
            if probes6 is not None:
                out.notes["leaks_ipv6"] = sum(1 for p in leaks if p["family"] == 6)
            return out
        finally:
            for watcher in (probes, probes6, cap):
                if watcher is not None:
                    watcher.stop()


def server_packet_on(cap, dev, since):
    """Time of the first WireGuard packet from the server that reaches the
    router on ``dev`` after ``since`` (None if none yet)."""
    ports = (topology.VPN_PORT, topology.VPN_ALT_PORT)
    servers = topology.VPN_ADDRESSES + topology.VPN_ADDRESSES6
    for p in cap.packets(since):
        if p["dev"] == dev and p["proto"] == 17 and p["src"] in servers and p["sport"] in ports:
            return p["time"]
    return None


def silent_failure_idle(lab, cap, limit=60.0, idle=None):
    """An idle tunnel: nothing is sent through it (no ProbeStream; the server
    has no keepalive).  The primary's upstream dies silently after ``idle``
    s of quiet, or by default right after the server's answer to the
    router's next probe (seen on wan, within the keepalive interval and
    10 s): the worst moment, a whole interval before the next probe.
    Figure: seconds from the fault to the first WireGuard packet from the
    server reaching the router on the backup, the moment the tunnel answers
    there again; measuring by a stream of pings would make the tunnel busy."""
    if idle is None:
        since, notes = time.time(), {}
        end = since + lab.keepalive + 10.0
        while time.time() < end and server_packet_on(cap, "wan", since) is None:
            time.sleep(0.05)
        answered = server_packet_on(cap, "wan", since)
        if answered is None:
            raise topology.LabError("the idle tunnel got no probe answer within %gs" % (lab.keepalive + 10.0))
        notes["fault_after_answer_s"] = round(time.time() - answered, 3)
    else:
        time.sleep(idle)
        notes = {}
    t = faults.silent_failure(lab, "wan")
    end = t + limit
    while time.time() < end:
        at = server_packet_on(cap, "wanb", t)
        if at is not None:
            return Outcome("silent_failure_idle", True, at - t, limit, t, notes)
        time.sleep(0.2)
    return Outcome("silent_failure_idle", False, limit, limit, t, notes)
