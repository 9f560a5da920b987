"""Chaos soak: a seeded random schedule of the lab's faults against wgrouter.

One lab (IPv6 on both WANs by default, so leaks of both families are looked
for), one daemon, ``seconds`` of episodes.  An episode injects one fault or
several at once, holds them, clears them and measures; between episodes the
tunnel must be steady again.  The schedule comes from ``random.Random(seed)``
alone, so a seed replays the same faults in the same order (timings differ
with the machine's load, the choices do not).

Checked all the time:

* no clear-text packet for the tunnel's AllowedIPs leaves a WAN (a tcpdump
  on each WAN that captures only such packets, both families);
* where a path exists during a fault, the tunnel passes traffic within the
  fault's bound; after the faults clear, within the bound again;
* the daemon is alive (unless the schedule killed it), its status answers
  and its peer is ``up`` again; one host route per endpoint address;
* fds, threads and RSS of the daemon, sampled after each episode;
* after the final stop: no route or rule left that was not there before the
  daemon started, and no conntrack entry that still maps the tunnel's flow
  to a WAN the kernel no longer routes it through.

Faults: see KINDS.  The daemon is started through tests/lab/soakhook.py,
which gives it a wall clock that can be stepped (this process only) and,
with ``ubus=True``, the stand-in bus binding.
"""

import dataclasses
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from tests.lab import faults
from tests.lab import junk
from tests.lab import observe
from tests.lab import scenarios
from tests.lab import topology

SCALE = float(os.environ.get("WGROUTER_LAB_SCALE", "1"))
CHECK = scenarios.LAB_CHECK_INTERVAL
HOLDDOWN = scenarios.LAB_HOLDDOWN

# Bounds, as the scenario tests use them (tests/test_scenarios.py): a
# carrier loss within 2.5 s, a silent failure within three checks plus 2 s,
# each plus 3 s for a WireGuard handshake on the new path.  The soak adds
# to them only what its own faults add: procd's respawn delay, and 3 s per
# further fault at once (two faults may need two rungs of the ladder).
HANDSHAKE_SLACK = 3.0
CARRIER_BOUND = 2.5 + HANDSHAKE_SLACK
SILENT_BOUND = 3 * CHECK + 2.0 + HANDSHAKE_SLACK
# the ladder's second rung (another endpoint, port 443); bench: 5.85 s
LADDER_BOUND = SILENT_BOUND + 4.0
# No path at all for a while (both WANs dead): WireGuard retries its
# handshake every 5 s (REKEY_TIMEOUT) and the ladder has backed off, so the
# first reply may take one more handshake retry.
NO_PATH_BOUND = SILENT_BOUND + 5.0
EXTRA_FAULT = 3.0
# procd respawns a dead instance after respawn_timeout seconds (procd
# service/instance.c, instance_exit: uloop_timeout_set(respawn_timeout *
# 1000)); the init script sets 'respawn 3600 5 0', so 5 s.
RESPAWN_DELAY = 5.0
# a respawned daemon imports, reads its config and steps: a few seconds on
# a loaded 2-core machine
STARTUP_BOUND = 5.0
# The peer must be reported up this long after its tunnel passes traffic.
STATE_BOUND = 3 * CHECK + 5.0
# Flat resources, judged over the longest-lived daemon: fds and threads
# compared as the minimum of the first and last three samples (a probe in
# flight holds a pipe or two).  RSS: CPython's heap settles in the first
# minutes; more than this is a leak worth a look.
FD_DRIFT_MAX = 2
THREAD_DRIFT_MAX = 0
RSS_DRIFT_MAX_KB = 4096

WEIGHTS = {
    "carrier_loss": 6, "silent_drop": 3, "silent_udp": 3, "nat_reset": 3, "dns_move": 2,
    "flap": 2, "both_down": 2, "sigkill": 2, "reload_mid_failover": 2, "clock_step": 2,
    "junk": 3, "ubusd_restart": 2,
}
# what may go with a first fault at the same time
COMPANIONS = ("carrier_loss", "silent_drop", "silent_udp", "nat_reset", "dns_move", "sigkill",
              "clock_step", "junk", "ubusd_restart")
# The loop never blocks on a peer it does not control: a status call made
# while silent clients hold connections is answered at once (1 s leaves room
# for a loaded machine; a blocking read waits for each silent client in turn).
CONTROL_LATENCY_MAX = 1.0
# faults that must change nothing the tunnel does
HARMLESS = {"junk", "clock_step"}
# WireGuard rekeys every 120 s (REKEY_AFTER_TIME) while traffic flows, and
# the probe stream never stops: a handshake is never much older than that.
HANDSHAKE_AGE_MAX = 180
WAN_KINDS = ("carrier_loss", "silent_drop", "silent_udp", "flap")
# A failing soak's logs are copied here, out of the lab's temp dir: the
# lab's teardown, and cleanup_dead() when the next lab starts, remove every
# /tmp/wglab-* dir (tests/lab/cleanup.py), this one they never match.
KEEP_PREFIX = "wgrouter-soak-"
assert not KEEP_PREFIX.startswith(topology.TMP_PREFIX)


class SoakError(topology.LabError):
    """soak check failed"""


@dataclasses.dataclass
class Fault:
    kind: str
    wan: str = None
    detail: str = ""
    hit: bool = True  # it struck the path the tunnel was using


@dataclasses.dataclass
class Episode:
    index: int
    faults: list
    hold: float
    started: float = 0.0
    failover: float = None  # s from injection to a reply, where a path existed
    recovery: float = None  # s from clearing to a reply
    bound_during: float = None
    bound_after: float = 0.0
    control_latency: float = None  # s for a status call behind junk and silent clients
    ubus_back: float = None  # s from a ubusd restart until the object answered again
    problems: list = dataclasses.field(default_factory=list)

    @property
    def name(self):
        return " + ".join(f.kind + (":" + f.wan if f.wan else "") for f in self.faults)


class TrimmedProbes(observe.ProbeStream):
    """A ProbeStream that forgets old probes, so a long soak's look-ups stay cheap."""

    def forget_before(self, t):
        with self._lock:
            for n in [n for n, st in self.sends.items() if st < t]:
                del self.sends[n]
                self.replies.pop(n, None)
                self.errors.pop(n, None)


class LeakCapture:
    """tcpdump on both WANs, capturing only packets to the tunnel's AllowedIPs
    (both families): any packet in these files left a WAN in clear."""

    FILTER = "dst net %s or dst net %s" % (topology.REMOTE_NET, topology.REMOTE_NET6)

    def __init__(self, lab):
        self.lab = lab
        self.files = {}
        self.procs = []
        for dev in topology.WANS:
            path = lab.log("soak-leaks-%s.pcap" % dev)
            self.files[dev] = path
            p = lab.popen("router", "tcpdump", "-i", dev, "-n", "-U", "--immediate-mode",
                          "-s", "128", "-w", path, self.FILTER, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
            line = p.stderr.readline()
            if "listening" not in line:
                raise topology.LabError("tcpdump on %s: %s" % (dev, line.strip()))
            self.procs.append(p)

    def leaks(self):
        out = []
        for dev, path in self.files.items():
            for t, linktype, frame in observe.read_pcap(path):
                parsed = observe.parse_ip(linktype, frame)
                if parsed:
                    family, p = parsed
                    out.append(dict(time=t, dev=dev, family=family, src=p[0], dst=p[1]))
        return sorted(out, key=lambda p: p["time"])

    def stop(self):
        for p in self.procs:
            self.lab.stop_process(p, sig=signal.SIGINT)


# ------------------------------------------------------------ the daemon


_WG_WRAPPER = r"""#!/bin/sh
# wg as the soak's stepped wall clock shows it (see tests/lab/soakhook.py)
if [ "$1 $2 $3" = "show all dump" ] && [ $# -eq 3 ]; then
    out=$(%(wg)s show all dump) || exit $?
    [ -n "$out" ] || exit 0
    printf '%%s\n' "$out" | awk -F'\t' -v OFS='\t' -v steps="$(cat %(clock)s 2>/dev/null)" '
        BEGIN { n = split(steps, lines, "\n") }
        NF == 9 && $6 > 0 {
            add = 0
            for (i = 1; i <= n; i++) { split(lines[i], w, " "); if (w[1] < $6 + 1) add += w[2] }
            $6 = sprintf("%%d", $6 + add)
        }
        { print }'
    exit 0
fi
exec %(wg)s "$@"
"""


class Daemon:
    """The lab's wgrouter, started as procd would (through soakhook.py)."""

    def __init__(self, lab, hookdir, ubus_socket=None):
        self.lab = lab
        self.hookdir = hookdir
        self.ubus_socket = ubus_socket
        os.makedirs(os.path.join(hookdir, "bin"), exist_ok=True)
        self.clock_file = os.path.join(hookdir, "clock")
        wrapper = os.path.join(hookdir, "bin", "wg")
        with open(wrapper, "w") as f:
            f.write(_WG_WRAPPER % {"wg": shutil.which("wg"), "clock": self.clock_file})
        os.chmod(wrapper, 0o755)
        self.steps = []
        self.incarnations = []  # pids, in order
        self.spawned_at = None  # wall time (real clock) of the running one's start
        self.killed_at = None

    def argv(self):
        return [sys.executable, os.path.join(topology.REPO, "tests/lab/soakhook.py"),
                self.hookdir, "wgrouter", "run", "--root", self.lab.root]

    def spawn(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = topology.REPO + os.pathsep + env.get("PYTHONPATH", "")
        env["WGROUTER_ROOT"] = self.lab.root
        if self.ubus_socket:
            env["WGROUTER_STANDIN_UBUS"] = self.ubus_socket
        lab = self.lab
        lab.wgrouter = lab.popen("router", *self.argv(), cwd=topology.REPO, env=env,
                                 stdout=open(lab.wgrouter_log, "a"), stderr=subprocess.STDOUT)
        self.incarnations.append(lab.wgrouter.pid)
        self.spawned_at = time.time()
        return lab.wgrouter

    def start(self, **config):
        """What lab.start_wgrouter does, with this process's argv and env."""
        lab = self.lab
        config.setdefault("check_interval", CHECK)
        config.setdefault("failback_holddown", HOLDDOWN)
        config.setdefault("probe_timeout", scenarios.LAB_PROBE_TIMEOUT)
        lab.write_network_config(nohostroute=True)
        lab.write_wgrouter_config(**config)
        lab.netifd.configure(mode="wgrouter",
                             hotplug_dir=os.path.join(topology.REPO, "files/etc/hotplug.d/iface"))
        lab.netifd.setup_tunnel()
        lab.wgrouter_log = lab.log("wgrouter.log")
        return self.spawn()

    @property
    def proc(self):
        return self.lab.wgrouter

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        p = self.proc
        p.send_signal(signal.SIGKILL)
        p.wait(5)
        self.lab.stop_process(p)
        self.lab.wgrouter = None
        self.killed_at = time.monotonic()

    def respawn_when_due(self):
        """procd: start it again RESPAWN_DELAY after it died."""
        if self.lab.wgrouter is None and self.killed_at is not None:
            time.sleep(max(0.0, self.killed_at + RESPAWN_DELAY - time.monotonic()))
            self.killed_at = None
            self.spawn()

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def step_clock(self, delta):
        self.steps.append((time.time(), delta))
        tmp = self.clock_file + ".new"
        with open(tmp, "w") as f:
            f.writelines("%.6f %g\n" % s for s in self.steps)
        os.replace(tmp, self.clock_file)

    def unseen_forward_steps(self):
        """Seconds of forward clock steps made before the running daemon
        started.  The kernel gives a handshake only as the wall time it was
        made (drivers/net/wireguard/netlink.c, WGPEER_A_LAST_HANDSHAKE_TIME, a
        timespec of walltime_last_handshake), so a process started after a
        step reads a handshake from before it that much older, until the next
        one: on a router as here, nothing tells it the step happened."""
        if self.spawned_at is None:
            return 0
        return sum(delta for at, delta in self.steps if at < self.spawned_at and delta > 0)

    def sample(self):
        """(pid, fds, threads, rss_kb) of the running daemon, or None."""
        if not self.alive():
            return None
        pid = self.proc.pid
        try:
            fds = len(os.listdir("/proc/%d/fd" % pid))
            fields = {}
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    key, _, value = line.partition(":")
                    fields[key] = value.split()
            return pid, fds, int(fields["Threads"][0]), int(fields["VmRSS"][0])
        except (OSError, KeyError, IndexError, ValueError):
            return None

    def log_text(self):
        try:
            with open(self.lab.wgrouter_log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


# ------------------------------------------------------------ kernel state


def _routes(lab):
    out = set()
    for family in ("-4", "-6"):
        r = lab.ip("router", family, "-j", "route", "show", "table", "all")
        for route in json.loads(r.stdout or "[]"):
            if route.get("table") == "local" or route.get("protocol") == "kernel":
                continue  # the kernel's own, with the addresses
            out.add((family, route.get("table", "main"), route.get("type", "unicast"),
                     route.get("dst"), route.get("gateway"), route.get("dev"),
                     route.get("metric"), route.get("prefsrc")))
    return out


def _rules(lab):
    out = set()
    for family in ("-4", "-6"):
        r = lab.ip("router", family, "rule", "show")
        out.update((family, line.strip()) for line in r.stdout.splitlines() if line.strip())
    return out


def _endpoint_addresses():
    return set(topology.VPN_ADDRESSES) | set(topology.VPN_ADDRESSES6)


def host_routes(lab):
    """Host routes to the server's addresses: {address: [route lines]}."""
    found = {}
    for family in ("-4", "-6"):
        r = lab.ip("router", family, "route", "show", "table", "all")
        for line in r.stdout.splitlines():
            words = line.split()
            if not words:
                continue
            dst = words[1] if words[0] in ("unicast", "blackhole") and len(words) > 1 else words[0]
            dst = dst.split("/")[0]
            if dst in _endpoint_addresses():
                found.setdefault(dst, []).append(line.strip())
    return found


def current_endpoint(lab):
    """(address, port) the router's WireGuard sends to now, or None."""
    r = lab.run("router", "wg", "show", lab.router_wg, "endpoints", check=False)
    for line in r.stdout.splitlines():
        _, _, ep = line.partition("\t")
        host, _, port = ep.rpartition(":")
        if host and port.isdigit():
            return host.strip("[]"), port
    return None


def _tunnel_conntrack(lab):
    """{orig tuple: (timeout, line)} of the tunnel's flow (UDP to the
    endpoint WireGuard uses now), and the source the kernel would use now."""
    endpoint = current_endpoint(lab)
    if endpoint is None:
        return {}, None
    address, port = endpoint
    r = lab.ip("router", "route", "get", address, check=False)
    words = r.stdout.split()
    src = words[words.index("src") + 1] if "src" in words else None
    family = "ipv6" if topology.is_ipv6(address) else "ipv4"
    found = {}
    ct = lab.run("router", "conntrack", "-L", "-f", family, "-p", "udp", "-d", address,
                 check=False)
    for line in ct.stdout.splitlines():
        words = line.split()
        orig = [w for w in words if "=" in w][:4]
        if "dport=" + port in orig and len(words) > 2 and words[2].isdigit():
            found[tuple(orig)] = (int(words[2]), line.strip())
    return found, src


def stale_conntrack(lab, settle=3.0):
    """Conntrack entries that still carry the tunnel's flow (refreshed
    within ``settle`` s) from a source the kernel would not use now, i.e.
    through a WAN the tunnel should have left.  An entry of the old path
    that only counts down carries nothing and expires: not counted."""
    first, _ = _tunnel_conntrack(lab)
    time.sleep(settle)
    second, src = _tunnel_conntrack(lab)
    stale = []
    for orig, (timeout, line) in second.items():
        refreshed = orig in first and timeout >= first[orig][0]
        if refreshed and src and "src=" + src not in orig:
            stale.append("%s (the kernel would send from %s)" % (line, src))
    return stale


def keep_logs(seed, logdir, daemon_log, base=None):
    """Copy the lab's ``logdir`` and the daemon's log text to
    <base>/wgrouter-soak-<seed>/ (base: the temp dir), or -2, -3 ... after it
    when a run of the same seed kept one there before; returns that path."""
    base = base or tempfile.gettempdir()
    path = os.path.join(base, "%s%d" % (KEEP_PREFIX, seed))
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(base, "%s%d-%d" % (KEEP_PREFIX, seed, n))
    if logdir and os.path.isdir(logdir):
        shutil.copytree(logdir, path)
    else:
        os.makedirs(path)
    with open(os.path.join(path, "daemon.log"), "w") as f:
        f.write(daemon_log or "")
    return path


# ------------------------------------------------------------ the soak


class Soak:
    """Run ``seconds`` of seeded episodes on one lab; ``result()`` has the figures."""

    def __init__(self, seed=None, seconds=180.0, ipv6=True, ubus=True, log=None,
                 kinds=None):
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1 << 32)
        self.rng = random.Random(self.seed)
        self.seconds = seconds
        self.ipv6 = ipv6
        self.ubus = ubus
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.kinds = dict(WEIGHTS if kinds is None else {k: WEIGHTS[k] for k in kinds})
        if not ubus:
            self.kinds.pop("ubusd_restart", None)
        self.episodes = []
        self.samples = []  # (monotonic, pid, fds, threads, rss_kb)
        self.leaks = []
        self.final = {}
        self.dns_current = topology.VPN_ADDRESSES[0]
        self.bus = None
        self.lab = None

    # ---------------------------------------------------------- schedule

    def _pick(self, choices):
        names = sorted(choices)
        return self.rng.choices(names, [self.kinds.get(n, 0) for n in names])[0]

    def plan(self, index):
        """The next episode's faults, from the seeded generator alone."""
        rng = self.rng
        first = self._pick(self.kinds)
        fs = [Fault(first, rng.choice(sorted(topology.WANS)) if first in WAN_KINDS else None)]
        if first == "reload_mid_failover":
            fs = [Fault(rng.choice(("carrier_loss", "silent_drop")), "wan"), Fault(first)]
        if first != "both_down" and rng.random() < 0.4:
            companions = [k for k in COMPANIONS if k in self.kinds and k != first
                          and not (first == "sigkill" and k == "junk")
                          and not (first == "junk" and k == "sigkill")
                          and not (first == "flap" and k in WAN_KINDS)]
            if companions:
                second = self._pick(companions)
                used = {f.wan for f in fs if f.wan}
                wan = None
                if second in WAN_KINDS:
                    free = sorted(set(topology.WANS) - used)
                    if not free:
                        second = "nat_reset"
                    else:
                        wan = rng.choice(free)
                fs.append(Fault(second, wan))
        for f in fs:
            if f.kind == "clock_step":
                f.detail = "%+d" % rng.choice((3600, -3600, 86400 * 30, -600, 7 * 86400))
            elif f.kind == "flap":
                f.detail = "%.1f" % rng.uniform(0.5, 1.5)
            elif f.kind == "nat_reset":
                f.detail = rng.choice(("ispa", "ispb", "ispb"))
            elif f.kind == "sigkill":
                f.detail = "applied.json junk" if rng.random() < 0.3 else ""
            elif f.kind == "junk":
                f.detail = rng.choice(("spool", "control", "config", "all"))
        return Episode(index, fs, hold=round(rng.uniform(2.0, 6.0), 1))

    # ---------------------------------------------------------- paths

    def _bounds(self, ep):
        """(bound while the faults hold, or None: no path then; bound after clearing)."""
        dead, degraded = set(), set()
        for f in ep.faults:
            if f.kind in ("carrier_loss", "silent_drop"):
                dead.add(f.wan)
            elif f.kind == "silent_udp":
                degraded.add(f.wan)
            elif f.kind == "both_down":
                dead.update(topology.WANS)
        kinds = {f.kind for f in ep.faults}
        extra = EXTRA_FAULT * (len(ep.faults) - 1)
        if "sigkill" in kinds:
            extra += RESPAWN_DELAY + STARTUP_BOUND
        during = None
        if "flap" in kinds:
            during = None  # measured after it ends
        elif not dead >= set(topology.WANS):
            base = CARRIER_BOUND
            if kinds & {"silent_drop", "reload_mid_failover", "dns_move"}:
                base = SILENT_BOUND
            if degraded:
                base = LADDER_BOUND
            during = (base + extra) * SCALE
        after = (NO_PATH_BOUND if during is None else max(CARRIER_BOUND, SILENT_BOUND)) + extra
        if degraded and dead:
            after = max(after, LADDER_BOUND + extra)
        return during, after * SCALE

    # ---------------------------------------------------------- faults

    def _inject(self, f, ep):
        lab, d = self.lab, self.daemon
        if f.kind == "carrier_loss":
            faults.carrier_loss(lab, f.wan)
        elif f.kind == "silent_drop":
            faults.silent_failure(lab, f.wan)
        elif f.kind == "silent_udp":
            faults.silent_failure(lab, f.wan, udp_port=topology.VPN_PORT)
        elif f.kind == "nat_reset":
            faults.nat_reset(lab, f.detail)
        elif f.kind == "dns_move":
            new = [a for a in topology.VPN_ADDRESSES if a != self.dns_current][0]
            faults.dns_move(lab, "vpn", new)
            faults.vpn_address_down(lab, self.dns_current)
            self.dns_current = new
        elif f.kind == "flap":
            f.thread = faults.flap(lab, f.wan, period=float(f.detail), duration=ep.hold)
        elif f.kind == "both_down":
            faults.both_down(lab)
        elif f.kind == "sigkill":
            d.kill()
            if f.detail:
                junk.applied(lab, self.rng)
        elif f.kind == "reload_mid_failover":
            time.sleep(self.rng.uniform(0.0, 0.3))
            d.signal(signal.SIGHUP)
        elif f.kind == "clock_step":
            d.step_clock(int(f.detail))
        elif f.kind == "junk":
            what = f.detail
            if self.bus is not None and what in ("control", "all"):
                junk.bus_calls(self.bus, self.rng)
            if what in ("spool", "all"):
                junk.spool(lab, d, self.rng)
            if what in ("control", "all"):
                f.timer = junk.control_socket(lab, self.rng, hold=min(ep.hold, 1.5))
                f.asker = threading.Thread(target=self._ask_status, args=(ep,), daemon=True)
                f.asker.start()
            if what in ("config", "all"):
                f.good_config = junk.config(lab, d, self.rng)
        elif f.kind == "ubusd_restart":
            self.bus.restart()
        lab.faults.append((time.time(), "soak:" + f.kind, f.wan or f.detail))

    def _ask_status(self, ep):
        """A CLI status call behind the junk and the silent clients."""
        from wgrouter import control
        t = time.monotonic()
        try:
            control.request(self.lab.root, {"method": "status"}, timeout=10.0)
        except control.ControlError as e:
            ep.problems.append("status during a junk burst: %s" % e)
            return
        ep.control_latency = time.monotonic() - t
        if ep.control_latency > CONTROL_LATENCY_MAX * SCALE:
            ep.problems.append("status took %.2fs behind silent control clients (bound %gs)"
                               % (ep.control_latency, CONTROL_LATENCY_MAX * SCALE))

    def _clear(self, f):
        lab = self.lab
        if f.kind == "carrier_loss":
            faults.carrier_return(lab, f.wan)
        elif f.kind in ("silent_drop", "silent_udp"):
            faults.restore_upstream(lab, f.wan)
        elif f.kind == "dns_move":
            faults.vpn_address_up(lab)
        elif f.kind == "flap":
            f.thread.join(60)
        elif f.kind == "both_down":
            for wan in self.rng.sample(sorted(topology.WANS), 2):
                faults.carrier_return(lab, wan)
        elif f.kind == "junk":
            if getattr(f, "good_config", None) is not None:
                with open(os.path.join(lab.root, "etc/config/wgrouter"), "w") as fh:
                    fh.write(f.good_config)
                self.daemon.signal(signal.SIGHUP)

    # ---------------------------------------------------------- checks

    def _wait_reply(self, t, bound):
        d = self.probes.wait_reply_after(t, bound)
        if d is not None and self.probes6 is not None:
            d6 = self.probes6.wait_reply_after(t, bound)
            return None if d6 is None else max(d, d6)
        return d

    def _check_steady(self, ep):
        lab = self.lab
        if not self.daemon.alive():
            rc = self.daemon.proc.returncode if self.daemon.proc is not None else None
            ep.problems.append("daemon not running (exit %r)" % (rc,))
            self.daemon.killed_at = time.monotonic() - RESPAWN_DELAY
            self.daemon.lab.wgrouter = None
            self.daemon.respawn_when_due()
            return
        if not lab.wait_for(lambda: scenarios.peer_status(lab).get("state") == "up",
                            STATE_BOUND * SCALE, step=0.2):
            ep.problems.append("peer not up %gs after recovery: %r" % (
                STATE_BOUND * SCALE, scenarios.peer_status(lab)))
        routes = host_routes(lab)
        dup = {a: r for a, r in routes.items() if len(r) > 1}
        if dup:
            ep.problems.append("more than one host route to an endpoint: %r" % dup)
        # the object must be back after the faults that take it off the bus
        # (checked there only, so one lost object is one finding, not many)
        if self.ubus and {f.kind for f in ep.faults} & {"ubusd_restart", "sigkill"}:
            if self.bus.wait_object("wgrouter", STATE_BOUND * SCALE):
                if "ubusd_restart" in {f.kind for f in ep.faults}:
                    ep.ubus_back = time.time() - self.bus.restarted_at
            else:
                ep.problems.append("object 'wgrouter' not back on the (stand-in) bus within "
                                   "%gs" % (STATE_BOUND * SCALE))
        new = self.leak_cap.leaks()[len(self.leaks):]
        if new:
            ep.problems.append("%d packets for the tunnel's AllowedIPs left a WAN in clear, "
                               "first %r" % (len(new), new[0]))
            self.leaks.extend(new)

    def _check_unmoved(self, ep, log):
        """Junk and a clock step alone must not move the tunnel (a failback
        whose hold-down ran out meanwhile is fine), and after a step the
        handshake age must still be sane."""
        lab = self.lab
        moves = [line for line in log.splitlines()
                 if line.startswith("wgrouter: %s: was " % lab.router_wg) and "hold-down" not in line]
        if moves:
            ep.problems.append("%s alone moved the tunnel: %s" % (ep.name, moves))
        if any(f.kind == "clock_step" for f in ep.faults):
            # a daemon that ran across the step converted the handshake when
            # it first saw it, so the age stays true; one respawned after the
            # step (sigkill in the same episode) cannot know of it
            age = scenarios.peer_status(lab).get("handshake_age")
            limit = HANDSHAKE_AGE_MAX + self.daemon.unseen_forward_steps()
            if age is not None and not 0 <= age <= limit:
                ep.problems.append("handshake_age %r after a step of the wall clock (at most %g)"
                                   % (age, limit))

    def _sample(self):
        s = self.daemon.sample()
        if s:
            self.samples.append((time.monotonic(),) + s)

    def run_episode(self, ep):
        lab = self.lab
        ep.bound_during, ep.bound_after = self._bounds(ep)
        self.log("soak seed %d: episode %d: %s (hold %.1fs)" % (self.seed, ep.index, ep.name,
                                                                  ep.hold))
        ep.started = time.time()
        active = scenarios.peer_status(lab).get("wan")
        for f in ep.faults:
            # a fault on the WAN (or ISP) the tunnel does not use has nothing
            # to recover from: its figures are kept apart
            if f.kind in WAN_KINDS:
                f.hit = f.wan == active
            elif f.kind == "nat_reset":
                f.hit = active is not None and topology.WANS[active]["isp"] == f.detail
            else:
                f.hit = True
        log_before = len(self.daemon.log_text())
        t0 = time.time()
        for f in ep.faults:
            self._inject(f, ep)
        t_injected = time.time()
        kill = any(f.kind == "sigkill" for f in ep.faults)
        if kill:
            # procd's respawn runs beside the fault
            threading.Thread(target=self.daemon.respawn_when_due, daemon=True).start()
        if ep.bound_during is not None:
            ep.failover = self._wait_reply(t0, ep.bound_during)
            if ep.failover is None:
                ep.problems.append("no reply through the tunnel within %.1fs of the fault"
                                   % ep.bound_during)
        rest = ep.hold - (time.time() - t_injected)
        if rest > 0:
            time.sleep(rest)
        t1 = time.time()
        for f in reversed(ep.faults):
            self._clear(f)
        if kill:
            lab.wait_for(lambda: self.daemon.lab.wgrouter is not None, RESPAWN_DELAY + 5)
        ep.recovery = self._wait_reply(t1, ep.bound_after)
        if ep.recovery is None:
            ep.problems.append("no reply through the tunnel within %.1fs of clearing"
                               % ep.bound_after)
        for f in ep.faults:
            for waiter in ("timer", "asker"):
                if getattr(f, waiter, None) is not None:
                    getattr(f, waiter).join(15)
        self._check_steady(ep)
        if {f.kind for f in ep.faults} <= HARMLESS:
            self._check_unmoved(ep, self.daemon.log_text()[log_before:])
        self._sample()
        if ep.problems:
            self.log("soak seed %d: episode %d FAILED: %s" % (self.seed, ep.index,
                                                               "; ".join(ep.problems)))
        # let probes go back to 50 Hz answering before the next one
        time.sleep(self.rng.uniform(0.5, 2.0))

    def run(self):
        # the lab's logs (daemon, captures) are kept when a check failed or
        # the run broke off (_keep copies them out of the lab's temp dir)
        lab = topology.Lab(ipv6=self.ipv6, keep_tmp=True)
        try:
            self._run(lab)
        except BaseException:
            if lab.logdir:
                self._keep(lab)
                shutil.rmtree(lab.tmp, ignore_errors=True)
            raise
        res = self.result()
        if res["problems"]:
            res["logs"] = self._keep(lab)
        shutil.rmtree(lab.tmp, ignore_errors=True)
        return res

    def _keep(self, lab):
        path = keep_logs(self.seed, lab.logdir, getattr(self, "daemon_log", None))
        self.log("soak seed %d: logs kept in %s" % (self.seed, path))
        return path

    def _run(self, lab):
        if self.ubus:
            from tests.lab import standin_bus
        with lab:
            self.lab = lab
            hookdir = os.path.join(lab.tmp, "soakhook")
            if self.ubus:
                self.bus = standin_bus.BusProcess(lab, os.path.join(lab.tmp, "ubus.sock"))
                self.bus.start()
                os.makedirs(hookdir, exist_ok=True)
                shutil.copytree(os.path.join(os.path.dirname(__file__), "standin_ubus"),
                                os.path.join(hookdir, "ubus"))
            self.daemon = Daemon(lab, hookdir, self.bus.path if self.bus else None)
            before = None
            try:
                self.daemon.start()
                if not observe.tunnel_works(lab, timeout=15):
                    raise SoakError("the tunnel never came up (see %s)" % lab.logdir)
                scenarios.wait_state(lab, lambda p: p.get("state") == "up"
                                     and p.get("wan") == "wan", 15)
                before = (_routes_without_wgrouter(lab), _rules(lab))
                self.probes = TrimmedProbes(lab)
                self.probes6 = (TrimmedProbes(lab, target=topology.PROBE_TARGET6)
                                if lab.ipv6_wans else None)
                self.leak_cap = LeakCapture(lab)
                scenarios.steady(self.probes)
                self._sample()
                start = time.monotonic()
                self.started = time.time()
                index = 0
                while time.monotonic() - start < self.seconds:
                    index += 1
                    ep = self.plan(index)
                    self.episodes.append(ep)
                    self.run_episode(ep)
                    for p in (self.probes, self.probes6):
                        if p is not None:
                            p.forget_before(time.time() - 120)
                self.duration = time.time() - self.started
                self._final_stop(before)
            finally:
                for w in ("probes", "probes6", "leak_cap"):
                    obj = getattr(self, w, None)
                    if obj is not None:
                        try:
                            obj.stop()
                        except Exception:
                            pass
                if self.bus is not None:
                    self.bus.stop()
                self.daemon_log = self.daemon.log_text()

    def _final_stop(self, before):
        lab = self.lab
        self.final["leaks_total"] = len(self.leak_cap.leaks())
        p = self.daemon.proc
        rc = lab.stop_wgrouter()
        self.final["exit_code"] = rc
        # netifd's tunnel stays and must still pass traffic on its own
        self.final["tunnel_works_after_stop"] = observe.tunnel_works(lab, timeout=10)
        routes, rules = _routes(lab), _rules(lab)
        extra_routes = sorted(map(str, routes - before[0]))
        missing_routes = sorted(map(str, before[0] - routes))
        self.final["routes_left"] = extra_routes
        self.final["routes_missing"] = missing_routes
        self.final["rules_left"] = sorted(map(str, rules - before[1]))
        self.final["rules_missing"] = sorted(map(str, before[1] - rules))
        self.final["conntrack_stale"] = stale_conntrack(lab)
        self.final["pid"] = p.pid if p is not None else None

    # ---------------------------------------------------------- figures

    def resources(self):
        """Drift of fds, threads and RSS over the longest-lived daemon."""
        by_pid = {}
        for s in self.samples:
            by_pid.setdefault(s[1], []).append(s)
        if not by_pid:
            return {}
        pid, ss = max(by_pid.items(), key=lambda kv: kv[1][-1][0] - kv[1][0][0])
        head, tail = ss[:3], ss[-3:]
        out = {
            "pid_span_s": round(ss[-1][0] - ss[0][0], 1),
            "samples": len(ss),
            "incarnations": len(self.daemon.incarnations),
            "fds_start": min(s[2] for s in head), "fds_end": min(s[2] for s in tail),
            "fds_max": max(s[2] for s in ss),
            "threads_start": min(s[3] for s in head), "threads_end": min(s[3] for s in tail),
            "rss_kb_start": ss[0][4], "rss_kb_end": ss[-1][4], "rss_kb_max": max(s[4] for s in ss),
        }
        out["rss_drift_kb"] = out["rss_kb_end"] - out["rss_kb_start"]
        return out

    def result(self):
        per_kind = {}
        for ep in self.episodes:
            for f in ep.faults:
                k = per_kind.setdefault(f.kind, {"injected": 0, "survived": 0, "recovery": [],
                                                 "failover": [], "object_back": [],
                                                 "control_latency": []})
                k["injected"] += 1
                k["survived"] += not ep.problems
                if not f.hit:
                    k["unaffected"] = k.get("unaffected", 0) + 1
                    continue
                if ep.recovery is not None:
                    k["recovery"].append(ep.recovery)
                if ep.failover is not None:
                    k["failover"].append(ep.failover)
                if f.kind == "ubusd_restart" and ep.ubus_back is not None:
                    k["object_back"].append(ep.ubus_back)
                if f.kind == "junk" and ep.control_latency is not None:
                    k["control_latency"].append(ep.control_latency)
        kinds = {}
        for name, k in sorted(per_kind.items()):
            row = {"injected": k["injected"], "survived": k["survived"],
                   "on_idle_path": k.get("unaffected", 0)}
            for what in ("recovery", "failover", "object_back", "control_latency"):
                if k[what]:
                    row[what + "_median_s"] = round(statistics.median(k[what]), 3)
                    row[what + "_worst_s"] = round(max(k[what]), 3)
            kinds[name] = row
        res = self.resources()
        problems = self.problems()
        return {
            "legend": "failover: s from injecting the faults to the first reply through the "
                      "tunnel, where another path existed; recovery: s from clearing them to "
                      "the first reply; on_idle_path: faults that struck a WAN or ISP the "
                      "tunnel was not using (not in the figures); object_back: s from a ubusd "
                      "restart until the object answered; control_latency: a status call "
                      "behind junk and silent control clients",
            "seed": self.seed,
            "duration_s": round(getattr(self, "duration", 0.0), 1),
            "ipv6_lab": self.ipv6,
            "ubus_standin": self.ubus,
            "episodes": len(self.episodes),
            "faults_injected": sum(len(ep.faults) for ep in self.episodes),
            "faults_survived": sum(len(ep.faults) for ep in self.episodes if not ep.problems),
            "concurrent_episodes": sum(1 for ep in self.episodes if len(ep.faults) > 1),
            "kinds": kinds,
            "leaks": self.final.get("leaks_total", len(self.leaks)),
            "resources": res,
            "rss_drift_kb": res.get("rss_drift_kb"),
            "final": self.final,
            "failures": [{"episode": ep.index, "faults": ep.name, "problems": ep.problems}
                         for ep in self.episodes if ep.problems],
            "problems": problems,
        }

    def problems(self):
        """Everything the run found wrong, one line each (empty: passed)."""
        out = ["episode %d (%s): %s" % (ep.index, ep.name, p)
               for ep in self.episodes for p in ep.problems]
        res = self.resources()
        if res:
            if res["fds_end"] - res["fds_start"] > FD_DRIFT_MAX:
                out.append("fds grew from %d to %d" % (res["fds_start"], res["fds_end"]))
            if res["threads_end"] - res["threads_start"] > THREAD_DRIFT_MAX:
                out.append("threads grew from %d to %d" % (res["threads_start"],
                                                           res["threads_end"]))
            if res["rss_drift_kb"] > RSS_DRIFT_MAX_KB:
                out.append("RSS grew by %d kB over %gs" % (res["rss_drift_kb"],
                                                          res["pid_span_s"]))
        f = self.final
        if f.get("tunnel_works_after_stop") is False:
            out.append("after the final stop, the tunnel passes no traffic")
        if f.get("exit_code") not in (0, None):
            out.append("daemon exited %r on SIGTERM" % f["exit_code"])
        for key in ("routes_left", "rules_left", "conntrack_stale", "routes_missing",
                    "rules_missing"):
            if f.get(key):
                out.append("after the final stop, %s: %s" % (key.replace("_", " "), f[key]))
        return out


def _routes_without_wgrouter(lab):
    """The router's routes as they would be without the daemon: today's
    minus its host routes to the server."""
    return {r for r in _routes(lab)
            if (r[3] or "").split("/")[0] not in _endpoint_addresses()}


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--ipv4-only", action="store_true")
    ap.add_argument("--no-ubus", action="store_true")
    args = ap.parse_args(argv)
    soak = Soak(args.seed, args.minutes * 60, ipv6=not args.ipv4_only, ubus=not args.no_ubus)
    print("soak seed %d" % soak.seed, flush=True)
    res = soak.run()
    print(json.dumps(res, indent=2, sort_keys=True))
    return 1 if res["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
