"""Watching the lab: a probe stream, packet captures and small helpers.

ProbeStream runs a tiny ICMP (or ICMPv6) echo prober (raw socket, root) in
the lan namespace; it prints one line per send and per reply with time.time(), which
the parent collects in a thread.  Capture runs tcpdump on the router's WAN
devices and reads the pcap files back with a minimal parser.
"""

import ipaddress
import signal
import struct
import subprocess
import sys
import threading
import time

from tests.lab import topology

PROBE_INTERVAL = 0.02  # 50 probes a second: 20 ms resolution on outages

_PROBER = r"""
import os, select, socket, struct, sys, time
target, interval = sys.argv[1], float(sys.argv[2])
ident = os.getpid() & 0xffff
v6 = ':' in target
# ICMPv6: the kernel fills in the checksum, and a raw socket reads no IP header
s = (socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) if v6
     else socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
request, reply = (128, 129) if v6 else (8, 0)
def csum(b):
    if len(b) % 2:
        b += b'\0'
    n = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    n = (n >> 16) + (n & 0xffff)
    n += n >> 16
    return ~n & 0xffff
seq = 0
nxt = time.monotonic()
out = sys.stdout
while True:
    now = time.monotonic()
    if now >= nxt:
        seq = (seq + 1) & 0xffff
        hdr = struct.pack('!BBHHH', request, 0, 0, ident, seq)
        pkt = struct.pack('!BBHHH', request, 0, 0 if v6 else csum(hdr + b'wglab'), ident, seq) + b'wglab'
        try:
            s.sendto(pkt, (target, 0))
            out.write('S %d %.6f\n' % (seq, time.time()))
        except OSError as e:
            out.write('E %d %.6f %s\n' % (seq, time.time(), e.errno))
        out.flush()
        nxt += interval
        if nxt < now:
            nxt = now + interval
        continue
    r, _, _ = select.select([s], [], [], nxt - now)
    if r:
        data = s.recv(2048)
        ihl = 0 if v6 else (data[0] & 15) * 4
        t, _, _, rid, rseq = struct.unpack('!BBHHH', data[ihl:ihl + 8])
        if t == reply and rid == ident:
            out.write('R %d %.6f\n' % (rseq, time.time()))
            out.flush()
"""


class ProbeStream:
    """ICMP echo from lan to ``target`` every ``interval`` s; records times.

    ``sends``: {n: send time}, ``replies``: {n: reply time}; n counts sends
    (the 16-bit ICMP sequence is unwrapped).
    """

    def __init__(self, lab, target=topology.PROBE_TARGET, interval=PROBE_INTERVAL):
        self.lab = lab
        self.target = target
        self.interval = interval
        self.sends = {}
        self.replies = {}
        self.errors = {}
        self._wrap = 0
        self._last_seq = 0
        self._lock = threading.Lock()
        self.proc = lab.popen("lan", sys.executable, "-u", "-c", _PROBER, target, interval,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True, name="probes")
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            parts = line.split()
            if len(parts) < 3:
                continue
            kind, seq, t = parts[0], int(parts[1]), float(parts[2])
            with self._lock:
                if kind in ("S", "E"):
                    if seq < self._last_seq:
                        self._wrap += 0x10000
                    self._last_seq = seq
                    n = self._wrap + seq
                    self.sends[n] = t
                    if kind == "E":
                        self.errors[n] = t
                else:
                    # a reply belongs to the latest send with that sequence
                    n = self._wrap + seq
                    if n not in self.sends:
                        n -= 0x10000
                    self.replies.setdefault(n, t)

    def stop(self):
        self.lab.stop_process(self.proc)
        self._reader.join(5)

    def _snapshot(self):
        with self._lock:
            return dict(self.sends), dict(self.replies)

    def first_reply_after(self, t):
        """Seconds from t to the first reply to a probe sent at or after t."""
        sends, replies = self._snapshot()
        times = [replies[n] for n, st in sends.items() if st >= t and n in replies]
        return min(times) - t if times else None

    def replied_between(self, t0, t1):
        """How many probes sent in [t0, t1) got a reply."""
        sends, replies = self._snapshot()
        return sum(1 for n, st in sends.items() if t0 <= st < t1 and n in replies)

    def sent_between(self, t0, t1):
        sends, _ = self._snapshot()
        return sum(1 for st in sends.values() if t0 <= st < t1)

    def outage(self, since=None, settle=1.0):
        """Longest run of unanswered probes, in seconds (send of the first
        lost to send of the next answered, or to the last send).  Probes of
        the last ``settle`` seconds are ignored: their replies may be in flight."""
        sends, replies = self._snapshot()
        order = sorted(sends)
        last = max(sends.values()) if sends else 0
        longest, start = 0.0, None
        for n in order:
            st = sends[n]
            if since is not None and st < since:
                continue
            if st > last - settle:
                break
            if n in replies:
                if start is not None:
                    longest = max(longest, st - start)
                    start = None
            elif start is None:
                start = st
        if start is not None:
            longest = max(longest, last - settle - start)
        return longest

    def wait_reply_after(self, t, timeout):
        """Block until a probe sent after t is answered; return its delay or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = self.first_reply_after(t)
            if d is not None:
                return d
            time.sleep(0.05)
        return None


# ------------------------------------------------------------ capture


def read_pcap(path):
    """Yield (time, ethernet frame bytes) from a pcap file, stopping at a
    truncated record (tcpdump may be in the middle of writing one)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return
    if len(data) < 24:
        return
    magic = struct.unpack("<I", data[:4])[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        endian = "<"
    else:
        endian = ">"
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    i = 24
    while i + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(endian + "IIII", data[i:i + 16])
        i += 16
        if i + incl > len(data):
            return
        frame = data[i:i + incl]
        i += incl
        yield sec + frac / (1e9 if nano else 1e6), linktype, frame


_ETHERTYPES = {4: b"\x08\x00", 6: b"\x86\xdd"}
# IPv6 extension headers a packet may carry before its transport header
_IPV6_EXTENSIONS = (0, 43, 60)  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44


def _ip_payload(linktype, frame, version):
    """The IP packet of version ``version`` inside a captured frame, or None."""
    if linktype == 1:  # Ethernet
        if len(frame) < 14 or frame[12:14] != _ETHERTYPES[version]:
            return None
        ip = frame[14:]
    elif linktype == 113:  # Linux cooked
        if len(frame) < 16 or frame[14:16] != _ETHERTYPES[version]:
            return None
        ip = frame[16:]
    elif linktype in (12, 101):  # raw IP
        ip = frame
    else:
        return None
    if not ip or ip[0] >> 4 != version:
        return None
    return ip


def parse_ipv4(linktype, frame):
    """(src, dst, proto, sport, dport) of an IPv4 frame, or None."""
    ip = _ip_payload(linktype, frame, 4)
    if ip is None or len(ip) < 20:
        return None
    ihl = (ip[0] & 15) * 4
    proto = ip[9]
    src = str(ipaddress.IPv4Address(ip[12:16]))
    dst = str(ipaddress.IPv4Address(ip[16:20]))
    sport = dport = None
    if proto in (6, 17) and len(ip) >= ihl + 4:
        sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
    return src, dst, proto, sport, dport


def parse_ipv6(linktype, frame):
    """(src, dst, proto, sport, dport) of an IPv6 frame, or None.  proto is
    the upper-layer protocol after any extension headers (17 UDP, 58 ICMPv6);
    ports are None for a non-first fragment or a header cut by the snap length."""
    ip = _ip_payload(linktype, frame, 6)
    if ip is None or len(ip) < 40:
        return None
    src = str(ipaddress.IPv6Address(ip[8:24]))
    dst = str(ipaddress.IPv6Address(ip[24:40]))
    proto = ip[6]
    i = 40
    first = True
    while proto in _IPV6_EXTENSIONS + (_IPV6_FRAGMENT,) and i + 8 <= len(ip):
        nxt = ip[i]
        if proto == _IPV6_FRAGMENT:
            offset = struct.unpack("!H", ip[i + 2:i + 4])[0] >> 3
            first = offset == 0
            length = 8
        else:
            length = (ip[i + 1] + 1) * 8
        proto = nxt
        i += length
    sport = dport = None
    if first and proto in (6, 17) and len(ip) >= i + 4:
        sport, dport = struct.unpack("!HH", ip[i:i + 4])
    return src, dst, proto, sport, dport


def parse_ip(linktype, frame):
    """(version, (src, dst, proto, sport, dport)) of an IPv4 or IPv6 frame, or None."""
    p = parse_ipv4(linktype, frame)
    if p:
        return 4, p
    p = parse_ipv6(linktype, frame)
    if p:
        return 6, p
    return None


class Capture:
    """tcpdump on router devices (default wan and wanb), one pcap each."""

    def __init__(self, lab, devices=("wan", "wanb"), ns="router"):
        self.lab = lab
        self.files = {}
        self.procs = {}
        for dev in devices:
            path = lab.log("capture-%s-%s.pcap" % (ns, dev))
            self.files[dev] = path
            # --immediate-mode: without it packets reach the file up to ~1 s late
            self.procs[dev] = lab.popen(ns, "tcpdump", "-i", dev, "-n", "-U", "--immediate-mode",
                                        "-s", "128", "-w", path, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        # tcpdump prints "listening on ..." once the capture is live
        for dev, p in self.procs.items():
            line = p.stderr.readline()
            if "listening" not in line:
                raise topology.LabError("tcpdump on %s: %s" % (dev, line.strip()))

    def stop(self):
        for p in self.procs.values():
            self.lab.stop_process(p, sig=signal.SIGINT)

    def packets(self, since=None):
        """All IPv4 and IPv6 packets: dicts time, dev, family (4 or 6), src,
        dst, proto, sport, dport."""
        out = []
        for dev, path in self.files.items():
            for t, linktype, frame in read_pcap(path):
                if since is not None and t < since:
                    continue
                parsed = parse_ip(linktype, frame)
                if parsed:
                    family, p = parsed
                    out.append(dict(time=t, dev=dev, family=family, src=p[0], dst=p[1],
                                    proto=p[2], sport=p[3], dport=p[4]))
        out.sort(key=lambda p: p["time"])
        return out

    def leaks(self, since=None, networks=(topology.REMOTE_NET, topology.REMOTE_NET6)):
        """Packets to the tunnel's AllowedIPs that left a WAN in clear."""
        nets = [ipaddress.ip_network(n) for n in networks]
        return [p for p in self.packets(since)
                if any(ipaddress.ip_address(p["dst"]) in n for n in nets)]

    def tunnel_packets(self, since=None):
        """WireGuard UDP from the router to the server (any address/port, over
        IPv4 or IPv6; a packet's ``family`` says which)."""
        ports = (topology.VPN_PORT, topology.VPN_ALT_PORT)
        servers = topology.VPN_ADDRESSES + topology.VPN_ADDRESSES6
        return [p for p in self.packets(since) if p["proto"] == 17
                and p["dst"] in servers and p["dport"] in ports]

    def tunnel_wan(self, since=None, family=None):
        """Device that carried the latest tunnel packet (after since; of IP
        version ``family`` if given), or None."""
        pk = [p for p in self.tunnel_packets(since) if family in (None, p["family"])]
        return pk[-1]["dev"] if pk else None

    def tunnel_devices(self, since=None, family=None):
        return sorted({p["dev"] for p in self.tunnel_packets(since)
                       if family in (None, p["family"])})


# ------------------------------------------------------------ helpers


def handshake_age(lab, ns="router", dev=None, peer=None):
    """Seconds since the latest handshake (None if none or no device)."""
    dev = dev or (lab.router_wg if ns == "router" else lab.vpn_wg)
    r = lab.run(ns, "wg", "show", dev, "latest-handshakes", check=False)
    if r.returncode != 0:
        return None
    for line in r.stdout.splitlines():
        key, _, ts = line.partition("\t")
        if peer and key != peer:
            continue
        if int(ts or 0):
            return time.time() - int(ts)
    return None


def tunnel_works(lab, timeout=5.0, target=topology.PROBE_TARGET):
    """True if lan reaches target (through the tunnel) within timeout."""
    deadline = time.monotonic() + timeout
    while True:
        r = lab.run("lan", "ping", "-n", "-c", "1", "-W", "1", target, check=False)
        if r.returncode == 0:
            return True
        if time.monotonic() >= deadline:
            return False


def route_device(lab, address, ns="router"):
    """The device ``ip route get`` picks in ns for address."""
    r = lab.ip(ns, "route", "get", address, check=False)
    words = r.stdout.split()
    return words[words.index("dev") + 1] if "dev" in words else None


def tunnel_present(lab):
    """True if the router's WireGuard device exists."""
    return lab.ip("router", "link", "show", lab.router_wg, check=False).returncode == 0
