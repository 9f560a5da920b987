"""WireGuard over TCP against direct UDP, on the same lab, with iperf3.

The tunnel carries iperf3 (TCP, lan -> the server's remote subnet, then
reversed) first over UDP on wan, then with UDP blocked on every WAN over
`wgrouter relay-client` (its own process here, so that its CPU time and
memory are its own) to `wgrouter relay-server` on the VPN server.  Both
ends of the tunnel are wireguard-go, and everything shares the machine's
cores: the figures compare the two paths, they are no router's.

    python3 -m bench.run --only relay_throughput --skip-memory --merge
"""

import json
import os
import shutil
import subprocess
import sys
import time

from tests.lab import faults
from tests.lab import topology

NAME = "relay_throughput"
SECONDS = 10


def _ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime of the process itself


def _memory(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out["VmRSS"], out["VmHWM"]


def _iperf(lab, seconds, reverse):
    argv = ["iperf3", "-c", topology.PROBE_TARGET, "-t", str(seconds), "-J"] + (["-R"] if reverse else [])
    r = lab.run("lan", *argv, check=False, timeout=seconds + 30)
    data = json.loads(r.stdout or "{}")
    if "error" in data or "end" not in data:
        raise RuntimeError("iperf3: %s" % (data.get("error") or r.stderr.strip()))
    return round(data["end"]["sum_received"]["bits_per_second"] / 1e6, 1)


def _client(lab, device):
    env = dict(os.environ, PYTHONPATH=topology.REPO)
    p = subprocess.Popen(lab.cmd("router", sys.executable, "-m", "wgrouter", "relay-client", "--relay",
                                 "%s:%d" % (topology.VPN_ADDRESSES[0], topology.RELAY_PORT), "--device", device),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=env, cwd=topology.REPO)
    with lab._lock:
        lab.procs.append(p)
    port = json.loads(p.stdout.readline())["port"]
    return p, port


def _status(p):
    p.stdin.write("status\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline())


# The relay as the daemon runs it: a thread in a process that already has
# what the daemon imports.  RSS before the relay module is imported, and
# after one relay carried 20,000 datagrams of 1,400 bytes each way (through
# a relay server in a process of its own, on loopback).
_THREAD_COST = r"""
import argparse, dataclasses, json, os, random, selectors, socket, struct, subprocess, sys, threading, time
sys.path.insert(0, sys.argv[1])
def rss():
    with open("/proc/self/status") as f:
        return int([l for l in f if l.startswith("VmRSS:")][0].split()[1])
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sink.bind(("127.0.0.1", 0))
probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()
server = subprocess.Popen([sys.executable, "-m", "wgrouter", "relay-server", "--listen", "127.0.0.1:%d" % port,
                           "--forward", "127.0.0.1:%d" % sink.getsockname()[1]], cwd=sys.argv[1],
                          stderr=subprocess.DEVNULL)
time.sleep(1.0)
before = rss()
from wgrouter import relay
relays = relay.Relays(log=lambda m: None)
local = ("127.0.0.1", relays.start("p", ("127.0.0.1", port), None))
while not relays.status("p").connected:
    time.sleep(0.01)
wg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
wg.bind(("127.0.0.1", 0))
wg.settimeout(2)
sink.settimeout(2)
msg = bytes([4, 0, 0, 0]) + bytes(1396)
back = None
for i in range(20000):
    wg.sendto(msg, local)
    _, back = sink.recvfrom(65535)
    sink.sendto(msg, back)
    wg.recvfrom(65535)
after = rss()
relays.close()
server.terminate()
server.wait()
print(json.dumps({"before": before, "after": after}))
"""


# The decision loop beside a busy relay thread: the main thread sleeps in
# select() for 10 ms again and again (as the daemon's loop waits for its
# next deadline) and records how late it wakes, first with the relay idle,
# then while another process floods it with 1,400-byte datagrams that come
# back through a relay server (a process of its own).
_LOOP_LATENCY = r"""
import json, selectors, socket, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from wgrouter import relay
seconds = float(sys.argv[2])
probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()
flood = subprocess.Popen([sys.executable, "-c", sys.argv[3]], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
sink_port = int(flood.stdout.readline())
server = subprocess.Popen([sys.executable, "-m", "wgrouter", "relay-server", "--listen", "127.0.0.1:%d" % port,
                           "--forward", "127.0.0.1:%d" % sink_port], cwd=sys.argv[1], stderr=subprocess.DEVNULL)
time.sleep(1.0)
if sys.argv[4] == "thread":
    relays = relay.Relays(log=lambda m: None)
    local = relays.start("p", ("127.0.0.1", port), None)
    while not relays.status("p").connected:
        time.sleep(0.01)
    status = lambda: relays.status("p")
else:  # the relay in a process of its own: CPU contention without the GIL
    child = subprocess.Popen([sys.executable, "-m", "wgrouter", "relay-client", "--relay", "127.0.0.1:%d" % port],
                             cwd=sys.argv[1], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             stderr=subprocess.DEVNULL)
    local = json.loads(child.stdout.readline())["port"]
    def status():
        child.stdin.write("status\n")
        child.stdin.flush()
        return relay.RelayStatus(**json.loads(child.stdout.readline()))
    time.sleep(0.5)
sel = selectors.DefaultSelector()
def lateness():
    late = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        sel.select(0.01) if sel.get_map() else time.sleep(0.01)
        late.append((time.monotonic() - t - 0.01) * 1000.0)
    late.sort()
    return {"median_ms": round(late[len(late) // 2], 3), "p99_ms": round(late[int(len(late) * 0.99)], 3),
            "max_ms": round(late[-1], 3)}
r, w = socket.socketpair()
sel.register(r, selectors.EVENT_READ)
idle = lateness()
s0 = status()
flood.stdin.write("%d\n" % local)
flood.stdin.flush()
time.sleep(0.5)
busy = lateness()
s1 = status()
flood.kill()
if sys.argv[4] == "thread":
    relays.close()
else:
    child.kill()
server.terminate()
server.wait()
mbit = ((s1.tx_bytes - s0.tx_bytes) + (s1.rx_bytes - s0.rx_bytes)) * 8 / 1e6 / (seconds + 0.5)
print(json.dumps({"idle": idle, "busy": busy, "busy_mbit_s": round(mbit, 1)}))
"""
_FLOOD = r"""
import socket, sys, threading
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sink.bind(("127.0.0.1", 0))
print(sink.getsockname()[1], flush=True)
local = ("127.0.0.1", int(sys.stdin.readline()))
wg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
wg.bind(("127.0.0.1", 0))
def echo():
    while True:
        data, addr = sink.recvfrom(65535)
        sink.sendto(data, addr)
def drain():
    while True:
        wg.recv(65535)
threading.Thread(target=echo, daemon=True).start()
threading.Thread(target=drain, daemon=True).start()
msg = bytes([4, 0, 0, 0]) + bytes(1396)
while True:
    wg.sendto(msg, local)
"""


def loop_latency(seconds=5.0, mode="thread"):
    """How late a 10 ms select() in the main thread wakes, relay idle and
    busy; the relay a thread of that process, or (mode "process") a child."""
    r = subprocess.run([sys.executable, "-I", "-c", _LOOP_LATENCY, topology.REPO, str(seconds), _FLOOD, mode],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError("loop latency: %s" % r.stderr.strip()[-500:])
    return json.loads(r.stdout)


def thread_cost():
    """RSS (kB) a relay thread adds to a process that has the daemon's imports."""
    r = subprocess.run([sys.executable, "-I", "-c", _THREAD_COST, topology.REPO], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise RuntimeError("thread cost: %s" % r.stderr.strip()[-500:])
    m = json.loads(r.stdout)
    return m["after"] - m["before"]


def bench(seconds=SECONDS, log=print):
    if shutil.which("iperf3") is None:
        raise RuntimeError("iperf3 is not installed (apt-get install iperf3)")
    from bench import run as bench_run
    hz = os.sysconf("SC_CLK_TCK")
    res = {"seconds_per_run": seconds, "iperf3": "TCP, lan -> %s and back (-R)" % topology.PROBE_TARGET}
    with topology.Lab(relay_server=True) as lab:
        lab.write_network_config(nohostroute=True)
        lab.netifd.configure(mode="wgrouter")
        lab.netifd.setup_tunnel()
        lab.popen("vpn", "iperf3", "-s", "-B", topology.PROBE_TARGET, stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
        if not lab.tunnel_works(10):
            raise RuntimeError("the tunnel does not work over UDP")
        time.sleep(0.5)
        res["udp_up_mbit_s"] = _iperf(lab, seconds, False)
        res["udp_down_mbit_s"] = _iperf(lab, seconds, True)
        log("  direct UDP: %.1f Mbit/s up, %.1f down" % (res["udp_up_mbit_s"], res["udp_down_mbit_s"]))

        faults.udp_blocked_everywhere(lab)
        client, port = _client(lab, "wan")
        lab.run("router", "wg", "set", lab.router_wg, "peer", lab.keys["vpn"]["public"],
                "endpoint", "127.0.0.1:%d" % port)
        if not lab.tunnel_works(15):
            raise RuntimeError("the tunnel does not work over the relay")
        server = lab.relay_server_proc
        s0 = _status(client)
        c0, v0 = _ticks(client.pid), _ticks(server.pid)
        res["tcp_relay_up_mbit_s"] = _iperf(lab, seconds, False)
        res["tcp_relay_down_mbit_s"] = _iperf(lab, seconds, True)
        c1, v1 = _ticks(client.pid), _ticks(server.pid)
        s1 = _status(client)
        carried = (s1["tx_bytes"] - s0["tx_bytes"]) + (s1["rx_bytes"] - s0["rx_bytes"])
        gb = carried / 1e9
        res["relay_bytes_carried"] = carried
        res["client_cpu_s_per_gb"] = round((c1 - c0) / hz / gb, 2)
        res["server_cpu_s_per_gb"] = round((v1 - v0) / hz / gb, 2)
        res["client_rss_kb"], res["client_peak_rss_kb"] = _memory(client.pid)
        res["server_rss_kb"], res["server_peak_rss_kb"] = _memory(server.pid)
        res["dropped_datagrams"] = s1["dropped"] - s0["dropped"]
        lab.stop_process(client)
    bare_rss, _ = bench_run.bare_python_rss()
    res["bare_python_rss_kb"] = bare_rss
    # In the daemon the relay is a thread: it costs what the relay-client
    # process has beyond a bare interpreter, at most (the process also
    # imports argparse and json, which the daemon has anyway); measured
    # directly in a process with the daemon's imports:
    res["thread_rss_kb_at_most"] = res["client_rss_kb"] - bare_rss
    res["thread_rss_kb"] = thread_cost()
    res["decision_loop_lateness"] = {mode: loop_latency(mode=mode) for mode in ("thread", "process")}
    for key in ("up", "down"):
        res["relay_over_udp_%s" % key] = round(res["tcp_relay_%s_mbit_s" % key] / res["udp_%s_mbit_s" % key], 2)
    log("  TCP relay: %.1f Mbit/s up, %.1f down; client %.2f CPU s/GB, RSS %d kB (bare python %d kB; "
        "as a thread %d kB); server %.2f CPU s/GB, RSS %d kB" % (
            res["tcp_relay_up_mbit_s"], res["tcp_relay_down_mbit_s"], res["client_cpu_s_per_gb"],
            res["client_rss_kb"], bare_rss, res["thread_rss_kb"], res["server_cpu_s_per_gb"],
            res["server_rss_kb"]))
    return res


def rows(r):
    """Lines for bench/results.md."""
    return [
        "| relay throughput, iperf3 up / down | TCP relay %.1f / %.1f Mbit/s, direct UDP %.1f / %.1f Mbit/s |" % (
            r["tcp_relay_up_mbit_s"], r["tcp_relay_down_mbit_s"], r["udp_up_mbit_s"], r["udp_down_mbit_s"]),
        "| relay CPU per GB carried | client %.2f s, server %.2f s |" % (
            r["client_cpu_s_per_gb"], r["server_cpu_s_per_gb"]),
        "| relay RSS | as a thread in the daemon +%d kB; as its own process %d kB (bare python %d kB); "
        "server %d kB |" % (r["thread_rss_kb"], r["client_rss_kb"], r["bare_python_rss_kb"], r["server_rss_kb"]),
    ]


if __name__ == "__main__":
    print(json.dumps(bench(), indent=2, sort_keys=True))
