"""WireGuard over TCP in the dual-WAN lab, the lab's VPN server running
`wgrouter relay-server`: the daemon taking the relay as its last rung and
leaving it again; the data plane driven directly (no decision core, the
router's peer pointed at the local relay endpoint, the relay client bound to
a WAN device); the server's refusals."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.lab import faults
from tests.lab import observe
from tests.lab import scenarios
from tests.lab import topology

pytestmark = pytest.mark.lab

REPO = topology.REPO
VPN_A = topology.VPN_ADDRESSES[0]
RELAY = "%s:%d" % (VPN_A, topology.RELAY_PORT)
SCALE = scenarios.SCALE  # the QEMU tier's slower handshakes (tests/qemu/run.sh)


class RelayClient:
    """`wgrouter relay-client` in the router namespace, driven on stdin."""

    def __init__(self, lab, device, relay=RELAY):
        self.lab = lab
        env = dict(os.environ, PYTHONPATH=REPO)
        self.log = open(lab.log("relay-client.log"), "a")
        self.proc = subprocess.Popen(
            lab.cmd("router", sys.executable, "-m", "wgrouter", "relay-client", "--relay", relay,
                    "--device", device, "--backoff-base", "0.5", "--backoff-max", "4"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=REPO)
        with lab._lock:
            lab.procs.append(self.proc)  # the lab's teardown stops it too
        self.port = json.loads(self.proc.stdout.readline())["port"]

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def status(self):
        return self.command("status")

    def move(self, device):
        return self.command("move %s" % device)

    def stop(self):
        self.lab.stop_process(self.proc)
        self.log.close()


def set_endpoint(lab, endpoint):
    lab.run("router", "wg", "set", lab.router_wg, "peer", lab.keys["vpn"]["public"], "endpoint", endpoint)


def relay_packets(cap, since, dev=None):
    """TCP packets between the router and the relay port, on WAN ``dev``."""
    return [p for p in cap.packets(since) if p["proto"] == 6 and (dev is None or p["dev"] == dev)
            and topology.RELAY_PORT in (p["sport"], p["dport"])]


def udp_tunnel_lab(lab_factory):
    """A lab with the relay server, the tunnel up over UDP on wan, and no
    wgrouter: netifd with nohostroute=1 sets the tunnel up once."""
    lab = lab_factory(relay_server=True)
    lab.write_network_config(nohostroute=True)
    lab.netifd.configure(mode="wgrouter")
    lab.netifd.setup_tunnel()
    assert observe.tunnel_works(lab, 10)
    return lab


def test_udp_blocked_everywhere_tunnel_over_the_relay_follows_a_carrier_loss(lab_factory):
    lab = udp_tunnel_lab(lab_factory)
    cap = observe.Capture(lab)
    ps = observe.ProbeStream(lab)
    client = None
    try:
        t_fault = faults.udp_blocked_everywhere(lab)
        # the fault is real: nothing comes back over UDP on either WAN
        time.sleep(3)
        assert ps.replied_between(t_fault + 0.5, t_fault + 3) == 0
        assert faults.udp_blocked_dropped(lab) > 0
        set_endpoint(lab, "%s:51820" % topology.VPN_ADDRESSES[1])  # the other address: blocked too
        time.sleep(1.5)
        assert ps.replied_between(time.time() - 1.2, time.time()) == 0

        client = RelayClient(lab, "wan")
        t_relay = time.time()
        set_endpoint(lab, "127.0.0.1:%d" % client.port)
        took = ps.wait_reply_after(t_relay, 15 * SCALE)
        assert took is not None, "no reply over the relay"
        st = client.status()
        assert st["transport"] == "tcp-relay" and st["relay"] == RELAY and st["device"] == "wan"
        assert st["connected"] and st["tx_bytes"] > 0 and st["rx_bytes"] > 0
        assert lab.wait_for(lambda: relay_packets(cap, t_relay, "wan"), 3)
        assert not relay_packets(cap, t_relay, "wanb")
        # WireGuard itself no longer leaves as UDP
        time.sleep(1)
        assert cap.tunnel_packets(t_relay + 0.5) == []

        # the relay's WAN loses its carrier; a move takes the connection to wanb
        t_cut = faults.carrier_loss(lab, "wan")
        assert client.move("wanb") == {"ok": True}
        back = ps.wait_reply_after(t_cut, 15 * SCALE)
        assert back is not None, "no reply after the move to wanb"
        st = client.status()
        assert st["device"] == "wanb" and st["connected"] and st["connects"] == 2
        assert lab.wait_for(lambda: relay_packets(cap, t_cut + 0.1, "wanb"), 3)
        assert not relay_packets(cap, t_cut + 0.1, "wan")
        print("first reply over the relay %.2f s after the endpoint change; %.2f s after the carrier loss"
              % (took, back))
        time.sleep(1)
        assert cap.leaks() == []
        with open(lab.relay_server_log) as f:
            server_log = f.read()
        assert server_log.count(": connected, UDP from 127.0.0.1:") == 2
    finally:
        ps.stop()
        cap.stop()
        if client is not None:
            client.stop()


def routes_of_wgrouter(lab):
    """`ip route` lines of wgrouter's host routes (proto 119) in the router."""
    return lab.run("router", "ip", "route", "show", "proto", "119").stdout.splitlines()


def test_wgrouter_takes_the_relay_when_udp_is_blocked_everywhere_and_returns_to_udp(lab_factory):
    lab = lab_factory(relay_server=True)
    # a short backoff: the ladder tries 3 candidates on 2 WANs before the relay
    scenarios.start(lab, "wgrouter", relays=[RELAY], backoff_base=0.5, backoff_max=60,
                    probe_timeout=scenarios.LAB_PROBE_TIMEOUT * SCALE)
    cap = observe.Capture(lab)
    ps = observe.ProbeStream(lab)
    try:
        assert scenarios.peer_status(lab)["transport"] == "udp"
        t_fault = faults.udp_blocked_everywhere(lab)
        scenarios.wait_state(lab, lambda p: p.get("transport") == "tcp-relay", 150 * SCALE)
        t_relay = time.time()
        took = ps.wait_reply_after(t_relay, 20 * SCALE)
        assert took is not None, "no reply over the relay"
        st = scenarios.peer_status(lab)
        wan = st["wan"]
        assert st["relay"] == RELAY and st["endpoint"] == RELAY and st["keepalive"] <= 25
        full = scenarios.status(lab)
        # the relay's own view: connected through the WAN's device
        link = full["relays"][lab.router_wg][lab.keys["vpn"]["public"]]
        assert link["connected"] and link["device"] == topology.WANS[wan]["device"] and link["rx_bytes"] > 0
        events = [e for e in full["events"] if e["kind"] == "transport"]
        assert events and events[-1]["now"] == "tcp-relay " + RELAY
        assert "every UDP path failed" in events[-1]["because"]
        # the kernel's endpoint is the relay's socket on loopback
        assert lab.run("router", "wg", "show", lab.router_wg, "endpoints").stdout.split()[-1].startswith(
            "127.0.0.1:")
        # the relay's host route as an endpoint's: proto 119, through the active WAN
        device = topology.WANS[wan]["device"]
        assert [r for r in routes_of_wgrouter(lab) if r.startswith(VPN_A + " ") and "dev %s " % device in r]
        assert lab.wait_for(lambda: relay_packets(cap, t_relay, device), 3)
        other = [w for w in topology.WANS if w != wan][0]
        assert not relay_packets(cap, t_relay + 1, topology.WANS[other]["device"])
        print("on the relay %.1f s after the fault; first reply %.2f s later" % (t_relay - t_fault, took))

        # the relay's WAN loses its carrier: the connection moves to the other WAN
        wan = scenarios.peer_status(lab)["wan"]  # (a failback may have moved it meanwhile)
        other = [w for w in topology.WANS if w != wan][0]
        connects = open(lab.relay_server_log).read().count(": connected, UDP from")
        t_cut = faults.carrier_loss(lab, wan)
        scenarios.wait_state(lab, lambda p: p.get("wan") == other and p.get("transport") == "tcp-relay",
                             20 * SCALE)
        moved = ps.wait_reply_after(t_cut, 20 * SCALE)
        assert moved is not None, "no reply over the relay after the carrier loss"
        assert lab.wait_for(lambda: relay_packets(cap, t_cut + 0.5, topology.WANS[other]["device"]), 3)
        assert [r for r in routes_of_wgrouter(lab)
                if r.startswith(VPN_A + " ") and "dev %s " % topology.WANS[other]["device"] in r]
        # a new connection, through the other WAN's device
        assert lab.wait_for(lambda: open(lab.relay_server_log).read().count(": connected, UDP from") > connects, 5)
        faults.carrier_return(lab, wan)
        print("relay through %s %.2f s after %s lost its carrier" % (other, moved, wan))

        # UDP passes again: a direct try on a WAN past its hold-down ends the relay
        t_open = faults.udp_unblocked(lab)

        def transport_events():
            return [e for e in scenarios.status(lab)["events"] if e["kind"] == "transport"]
        # the status says udp while a try is out too, and a try can fail (one
        # sent just before the unblock, or one slower than its probe in the
        # emulated VM): wait for the try that ends the relay
        assert lab.wait_for(lambda: transport_events()[-1]["now"] == "udp", 60 * SCALE), transport_events()[-3:]
        t_back = time.time()
        events = transport_events()
        assert events[-1]["now"] == "udp" and "stopped" in events[-1]["because"]
        assert scenarios.peer_status(lab)["transport"] == "udp"
        assert "relays" not in scenarios.status(lab)
        assert ps.wait_reply_after(t_back, 10 * SCALE) is not None
        assert lab.wait_for(lambda: cap.tunnel_packets(t_back), 5)
        assert not lab.run("router", "wg", "show", lab.router_wg, "endpoints").stdout.split()[-1].startswith(
            "127.0.0.1:")
        # the relay's connection is closed, and stays so (no flapping)
        assert lab.wait_for(lambda: ": closed" in open(lab.relay_server_log).read(), 5)
        time.sleep(8)
        assert scenarios.peer_status(lab)["transport"] == "udp"
        assert not relay_packets(cap, time.time() - 5)
        print("back on UDP %.1f s after UDP passed again" % (t_back - t_open))
        assert cap.leaks() == []
    finally:
        ps.stop()
        cap.stop()


_PROBER = r"""
import json, os, socket, struct, sys
relay, port, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def frame(d):
    return struct.pack(">H", len(d)) + d
def wg(kind, size):
    return bytes([kind, 0, 0, 0]) + os.urandom(size - 4)
def session(frames):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    s.settimeout(5)
    s.connect((relay, port))
    s.sendall(b"".join(frames))
    try:
        closed = s.recv(100) == b""
    except socket.timeout:
        closed = False
    s.close()
    return closed
out = {}
# a SOCKS5 UDP request naming the lab resolver: not a WireGuard message
socks = b"\x00\x00\x00\x01" + socket.inet_aton("192.0.2.53") + struct.pack(">H", 53) + b"\x12\x34"
out["socks"] = session([frame(wg(1, 148)), frame(socks)])
out["named_target"] = session([frame(b"192.0.2.53:53 " + bytes(40))])
out["too_long"] = session([struct.pack(">H", 40000) + b"x" * 100])
out["wireguard"] = session([frame(wg(4, 32 + 16 * i)) for i in range(20)])
print(json.dumps(out))
"""


def test_relay_server_forwards_to_its_target_only(lab_factory):
    lab = lab_factory(relay_server=True)  # no tunnel: the server's WireGuard sends nothing
    on_lo = observe.Capture(lab, devices=("lo",), ns="vpn")
    out = observe.Capture(lab, devices=("inet",), ns="vpn")
    try:
        t = time.time()
        r = lab.run("router", sys.executable, "-c", _PROBER, VPN_A, topology.RELAY_PORT, "wan")
        closed = json.loads(r.stdout)
        # anything that is no WireGuard message closes that client; WireGuard-shaped
        # datagrams do not (the recv waited 5 s for a close that did not come)
        assert closed == {"socks": True, "named_target": True, "too_long": True, "wireguard": False}
        time.sleep(1)
        udp_lo = [p for p in on_lo.packets(t) if p["proto"] == 17]
        # all 1 + 20 WireGuard-shaped datagrams, each to the server's WireGuard port
        assert len(udp_lo) == 21
        assert {(p["dst"], p["dport"]) for p in udp_lo} == {("127.0.0.1", topology.VPN_PORT)}
        # and no UDP at all left the server
        assert [p for p in out.packets(t) if p["proto"] == 17] == []
        with open(lab.relay_server_log) as f:
            log = f.read()
        assert "no WireGuard message" in log and "longer than the largest WireGuard packet" in log
        assert lab.relay_server_proc.poll() is None  # bad clients did not end the server
    finally:
        on_lo.stop()
        out.stop()
