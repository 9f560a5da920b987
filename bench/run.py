"""make bench: what users feel, wgrouter beside the stock baseline, in one run.

Writes bench/results.json (layout in the README) and bench/results.md (the
table the README quotes).  Needs root and the lab's tools, like make test.

    python3 -m bench.run [--runs N] [--baseline-runs N] [--idle-seconds S] [--only NAME,...]

--only takes scenario names (those ending in _defaults run wgrouter at its
shipped defaults), check_cost (one healthy check, forked wg against the
in-process read) and idle_defaults (idle CPU and wake-ups at the shipped
defaults, with the ubus object registered and without).
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

from tests.lab import observe
from tests.lab import scenarios
from tests.lab import topology

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# Scenario limits: how long a run may take before it counts as "not
# recovered".  The stock watchdog needs a handshake older than 150 s before it
# acts at all, so 45 s is enough to show that stock does not recover on its
# own in these cases without making the benchmark take an hour.
# The stock carrier-loss limit is 45 s too: with force_link 1 (a static WAN)
# netifd never leaves the dead WAN, and 45 s is what the VM run gave it.
LIMITS = {
    "carrier_loss_dhcp": 30.0,
    "carrier_loss_static": 45.0,
    "silent_failure": 45.0,
    "udp_blocked_backup_dhcp": 45.0,
    "dns_move": 45.0,
    "cgnat_nat_loss": 30.0,
    "failback_dhcp": 45.0,
    "ipv6_carrier_loss_dhcp": 30.0,
    # the relay comes after every UDP path failed, each after its backoff
    "udp_blocked_everywhere": 150.0,
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def _median(xs):
    return round(statistics.median(xs), 3) if xs else None


def _runs(name, who, count, limit, start_kwargs=None):
    """Run one scenario ``count`` times for ``who``; (seconds, recovered, leaks)."""
    seconds, recovered, leaks = [], [], 0
    for i in range(count):
        out = scenarios.run(name, who, limit=limit, start_kwargs=start_kwargs)
        log("  %s %s run %d: %s %.3f s, leaks %d" % (
            name, who, i + 1, "recovered" if out.recovered else "NOT recovered", out.seconds,
            out.notes.get("leaks", 0)))
        seconds.append(out.seconds)
        recovered.append(out.recovered)
        leaks += out.notes.get("leaks", 0)
    return seconds, recovered, leaks


def bench_scenario(name, runs, baseline_runs, base=None, wgrouter_kwargs=None):
    """``name`` (a scenario of tests/lab/scenarios.py, or a DEFAULTS_SCENARIOS
    key run as its ``base`` scenario with ``wgrouter_kwargs``), wgrouter
    beside the stock baseline."""
    base = base or name
    limit = LIMITS[base]
    w, w_ok, w_leaks = _runs(base, "wgrouter", runs, limit, start_kwargs=wgrouter_kwargs)
    b, b_ok, b_leaks = _runs(base, "baseline", baseline_runs, limit,
                             start_kwargs={"watchdog_interval": 60, "stale_after": 150})
    leaks = {"wgrouter": w_leaks, "baseline": b_leaks}
    baseline_recovered = bool(b_ok) and all(b_ok)
    res = {
        "wgrouter_s": _median(w),
        "wgrouter_recovered": all(w_ok),
        "baseline_s": _median(b) if baseline_recovered else None,
        "baseline_recovered": baseline_recovered,
        "baseline_median_or_limit_s": _median(b),
        "runs": runs,
        "baseline_runs": baseline_runs,
        "min_s": round(min(w), 3),
        "max_s": round(max(w), 3),
        "limit_s": limit,
        "leaked_packets": leaks,
    }
    extra = scenarios.WGROUTER_SETUP.get(base)
    if base == name and extra:  # lab settings of its own (tests/lab/scenarios.py)
        res["settings"] = {k: v for k, v in extra.items() if k != "relays"}
        if "relays" in extra:
            res["settings"]["relay"] = "lab relay-server on %d/TCP" % topology.RELAY_PORT
    if base != name:
        from wgrouter import model
        settings = model.Settings()
        res["scenario"] = base
        res["settings"] = {k: getattr(settings, k) for k in wgrouter_kwargs}
        res["wgrouter_runs_s"] = [round(x, 3) for x in w]
    if res["baseline_median_or_limit_s"] and res["wgrouter_s"]:
        res["ratio_baseline_over_wgrouter"] = round(res["baseline_median_or_limit_s"] / res["wgrouter_s"], 1)
    return res


# Scenarios run again with wgrouter at its shipped defaults (model.Settings:
# check_interval, probe_timeout, failback_holddown left out of the config)
# instead of tests/lab/scenarios.py's LAB_* settings; stock beside them.
DEFAULTS_SCENARIOS = {
    "silent_failure_defaults": "silent_failure",
    "carrier_loss_defaults": "carrier_loss_dhcp",
}
SHIPPED = {"check_interval": None, "probe_timeout": None, "failback_holddown": None}

# An idle tunnel (nothing sent through it, the server without keepalive) at
# the shipped defaults: tests/lab/scenarios.py's silent_failure_idle, the
# fault right after a probe's answer, timed to the server's first packet on
# the backup.  Target: the keepalive (25 s on
# the lab's wan) plus 5 s.  Stock acts only on a handshake older than 150 s.
IDLE_SILENT = "silent_failure_idle_defaults"
IDLE_SILENT_LIMIT = 60.0


def bench_silent_failure_idle(runs, baseline_runs):
    limit = IDLE_SILENT_LIMIT
    keepalive = set()

    def one(mode, start_kwargs):
        with topology.Lab() as lab:
            keepalive.add(lab.keepalive)
            scenarios.start(lab, mode, **start_kwargs)
            cap = observe.Capture(lab)
            try:
                # stock never probes: its fault comes a keepalive interval and 8 s into the quiet
                out = scenarios.silent_failure_idle(lab, cap, limit=limit,
                                                    idle=None if mode == "wgrouter" else lab.keepalive + 8.0)
                leaks = len(cap.leaks(since=out.fault_time))
            finally:
                cap.stop()
        log("  %s %s: %s %.3f s, leaks %d (fault %s s after a probe's answer)" % (
            IDLE_SILENT, mode, "recovered" if out.recovered else "NOT recovered", out.seconds, leaks,
            out.notes.get("fault_after_answer_s")))
        return out, leaks

    w = [one("wgrouter", dict(SHIPPED)) for _ in range(runs)]
    b = [one("baseline", {"watchdog_interval": 60, "stale_after": 150}) for _ in range(baseline_runs)]
    seconds = [o.seconds for o, _ in w]
    baseline_recovered = bool(b) and all(o.recovered for o, _ in b)
    from wgrouter import model
    settings = model.Settings()
    res = {
        "scenario": "silent_failure_idle",
        "settings": {k: getattr(settings, k) for k in SHIPPED},
        "keepalive_s": sorted(keepalive)[0] if keepalive else None,
        "wgrouter_s": _median(seconds),
        "wgrouter_recovered": all(o.recovered for o, _ in w),
        "wgrouter_runs_s": [round(x, 3) for x in seconds],
        "baseline_s": _median([o.seconds for o, _ in b]) if baseline_recovered else None,
        "baseline_recovered": baseline_recovered,
        "baseline_median_or_limit_s": _median([o.seconds for o, _ in b]),
        "runs": runs,
        "baseline_runs": baseline_runs,
        "min_s": round(min(seconds), 3),
        "max_s": round(max(seconds), 3),
        "limit_s": limit,
        "leaked_packets": {"wgrouter": sum(n for _, n in w), "baseline": sum(n for _, n in b)},
    }
    return res


# ------------------------------------------------------------------ memory


def _smaps(pid):
    rss = pss = 0
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def _cpu_seconds(pid):
    """CPU seconds of ``pid`` (all its threads) and of its reaped children.

    Its own time comes from the kernel's per-process CPU clock, exact to the
    nanosecond: /proc's utime and stime are sampled in ticks of 10 ms, which
    over a 5-minute idle run is 0.12 CPU s/hour a tick, too coarse for a bound
    of 2.  The clock id is what clock_getcpuclockid(3) returns, encoded by
    Linux as MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) = (~pid << 3) | 2
    (torvalds/linux include/linux/posix-timers_types.h).  Children (forked
    tools, none in steady state) are only in /proc's cutime and cstime."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # cutime cstime (fields 16-17, counted after the comm)
    children = sum(int(x) for x in fields[13:15]) / float(os.sysconf("SC_CLK_TCK"))
    return time.clock_gettime((~pid << 3) | 2) + children


def _ctx_switches(pid):
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def bare_python_rss():
    p = subprocess.Popen([sys.executable, "-I", "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(2)
        return _smaps(p.pid)
    finally:
        p.kill()
        p.wait()


def shipped_site(tmp):
    """Install the wgrouter and wgrouter-mqtt ipks (.pyc only, as on the
    router) under ``tmp``; returns their site-packages directory."""
    subprocess.run([sys.executable, os.path.join(REPO, "openwrt-feed/mkipk.py"), "--out", tmp],
                   check=True, stdout=subprocess.DEVNULL)
    root = os.path.join(tmp, "root")
    for name in sorted(os.listdir(tmp)):
        if name.startswith("wgrouter") and name.endswith(".ipk"):
            with tarfile.open(os.path.join(tmp, name)) as outer:
                data = outer.extractfile("./data.tar.gz")
                with tarfile.open(fileobj=data) as tar:
                    tar.extractall(root)
    site = os.path.join(root, "usr/lib/python%d.%d/site-packages" % sys.version_info[:2])
    if not os.path.isdir(os.path.join(site, "wgrouter")):
        raise RuntimeError("no wgrouter package in the built ipk")
    return site


def shipped_cmd(site, lab):
    """`wgrouter run` from the shipped bytecode: isolated (-I), so neither
    this checkout nor PYTHONPATH can lend it the .py sources."""
    code = "import sys; sys.path.insert(0, %r); from wgrouter import cli; sys.exit(cli.main())" % site
    return [sys.executable, "-I", "-c", code, "run", "--root", lab.root]


def daemon_pid(lab):
    # lab.wgrouter is the `ip netns exec` child; it execs python, same pid
    return lab.wgrouter.pid


def bench_memory_and_idle(idle_seconds):
    tmp = tempfile.mkdtemp(prefix="wgrouter-bench-site-")
    try:
        return _memory_and_idle(idle_seconds, shipped_site(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _memory_and_idle(idle_seconds, site):
    """The daemon runs the package as the ipk ships it; the bare interpreter
    runs with the same -I."""
    res = {}
    bare_rss, bare_pss = bare_python_rss()
    res["bare_python_rss_kb"] = bare_rss
    res["bare_python_pss_kb"] = bare_pss

    # default config, IP-literal endpoints only: no DNS work at all
    with topology.Lab() as lab:
        lab.start_wgrouter(check_interval=10, endpoint_host=topology.VPN_ADDRESSES[0],
                           endpoints=["%s:%d" % (topology.VPN_ADDRESSES[1], 443)],
                           cmd=shipped_cmd(site, lab))
        time.sleep(12)  # warm-up: first checks, probes, the handshake
        res["rss_kb"], res["pss_kb"] = _smaps(daemon_pid(lab))
        log("  memory (default config): rss %d kB, pss %d kB (bare python %d kB)" % (
            res["rss_kb"], res["pss_kb"], bare_rss))
        pid = daemon_pid(lab)
        # wake-ups: the daemon's own count of loop iterations (select()
        # returns); context switches from /proc include its children's
        # fork/exec/wait and are reported beside it
        l0 = scenarios.status(lab)["wakeups"]
        c0, w0, t0 = _cpu_seconds(pid), _ctx_switches(pid), time.time()
        time.sleep(idle_seconds)
        c1, w1, t1 = _cpu_seconds(pid), _ctx_switches(pid), time.time()
        l1 = scenarios.status(lab)["wakeups"] - 1  # the status request itself
        res["idle_seconds"] = round(t1 - t0, 1)
        res["cpu_s_per_hour"] = round((c1 - c0) * 3600.0 / (t1 - t0), 3)
        res["wakeups_per_min"] = round((l1 - l0) * 60.0 / (t1 - t0), 1)
        res["context_switches_per_min"] = round((w1 - w0) * 60.0 / (t1 - t0), 1)
        log("  idle: %.3f CPU s/hour, %.1f wake-ups/min (%.1f context switches/min) over %.0f s" % (
            res["cpu_s_per_hour"], res["wakeups_per_min"], res["context_switches_per_min"], t1 - t0))

    # DNS endpoints (the lab's default: vpn.lab.test), resolved through the WAN
    with topology.Lab() as lab:
        lab.start_wgrouter(check_interval=10, cmd=shipped_cmd(site, lab))
        time.sleep(12)
        res["rss_kb_dns"], res["pss_kb_dns"] = _smaps(daemon_pid(lab))
        log("  memory with DNS endpoints: rss %d kB" % res["rss_kb_dns"])

    # MQTT on: a real mosquitto in the router namespace
    if shutil.which("mosquitto"):
        with topology.Lab() as lab:
            conf = os.path.join(lab.logdir, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write("listener 1883 127.0.0.1\nallow_anonymous true\n")
            lab.popen("router", "mosquitto", "-c", conf, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            lab.start_wgrouter(check_interval=10, extra=(
                "\nconfig mqtt 'mqtt'\n\toption enabled '1'\n\toption host '127.0.0.1'\n"
                "\toption port '1883'\n"), cmd=shipped_cmd(site, lab))
            time.sleep(12)
            res["rss_kb_mqtt"], res["pss_kb_mqtt"] = _smaps(daemon_pid(lab))
            log("  memory with MQTT on: rss %d kB" % res["rss_kb_mqtt"])
    res["rss_ratio_to_bare"] = round(res["rss_kb"] / float(bare_rss), 2)
    return res


# ---------------------------------------------------- idle at the defaults

IDLE_DEFAULTS = "idle_defaults"  # an --only name beside the scenarios
# The binding stand-in the daemon imports as `ubus` (tests/lab/standin_ubus),
# served by the stand-in ubusd tests/lab/standin_bus.py.
STANDIN_UBUS = os.path.join(REPO, "tests/lab/standin_ubus")
# What luci.wgrouter's methods need besides their own arguments (uhttpd adds it)
LUCI_ARGS = {"ubus_rpc_session": "bench"}


def _voluntary(pid):
    """{thread id: voluntary context switches} of every thread of ``pid``."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    out[tid] = int(line.split()[1])
    return out


def _sys_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[12])  # stime


def _idle_at_defaults(site, idle_seconds, with_ubus):
    """One healthy, idle tunnel; the daemon as the ipk ships it, with the
    shipped defaults (IP-literal endpoints: no DNS work), with or without
    the ubus object registered on the stand-in bus."""
    res = {}
    with topology.Lab() as lab:
        bus = None
        code = "import sys; sys.path.insert(0, %r); " % site
        if with_ubus:
            from tests.lab import standin_bus
            path = os.path.join(lab.tmp, "ubus.sock")
            bus = standin_bus.BusProcess(lab, path)
            bus.start()
            # -I keeps PYTHONPATH out: the stand-in binding goes on the path
            # here, and the repository after the shipped site (the binding
            # imports tests/ubusrules.py; wgrouter still comes from the site);
            # the socket ubusobj watches is the stand-in's
            code += ("sys.path += [%r, %r]; from wgrouter import ubusobj; "
                     "ubusobj.DEFAULT_SOCKET = %r; " % (STANDIN_UBUS, REPO, path))
        code += "from wgrouter import cli; sys.exit(cli.main())"
        cmd = [sys.executable, "-I", "-c", code, "run", "--root", lab.root]
        lab.start_wgrouter(endpoint_host=topology.VPN_ADDRESSES[0],
                           endpoints=["%s:%d" % (topology.VPN_ADDRESSES[1], 443)], cmd=cmd,
                           **SHIPPED)
        if not lab.wait_for(lab.tunnel_works, 30):
            raise RuntimeError("idle at defaults: the tunnel never came up")
        if bus is not None and not bus.wait_object("luci.wgrouter", 15, LUCI_ARGS):
            raise RuntimeError("idle at defaults: the ubus object was never registered")
        time.sleep(12)  # warm-up: first checks, the handshake
        pid = daemon_pid(lab)
        st = scenarios.status(lab)
        res["rss_kb"], res["pss_kb"] = _smaps(pid)
        hz = os.sysconf("SC_CLK_TCK")
        l0 = st["wakeups"]
        c0, v0, t0, s0 = _cpu_seconds(pid), _voluntary(pid), time.time(), _sys_ticks(pid)
        time.sleep(idle_seconds)
        c1, v1, t1, s1 = _cpu_seconds(pid), _voluntary(pid), time.time(), _sys_ticks(pid)
        l1 = scenarios.status(lab)["wakeups"] - 1  # the status request itself
        minutes = (t1 - t0) / 60.0
        res["idle_seconds"] = round(t1 - t0, 1)
        res["threads"] = len(v1)
        res["cpu_s_per_hour"] = round((c1 - c0) * 3600.0 / (t1 - t0), 3)
        res["cpu_sys_s_per_hour"] = round((s1 - s0) / hz * 3600.0 / (t1 - t0), 3)
        res["loop_wakeups_per_min"] = round((l1 - l0) / minutes, 1)
        per_thread = sorted(round((v1[t] - v0.get(t, 0)) / minutes, 1) for t in v1)
        res["voluntary_switches_per_min"] = round(sum(per_thread), 1)
        res["voluntary_switches_per_min_by_thread"] = per_thread
        if bus is not None:
            # still on the bus, and it answers (after the measurement: a
            # call is a wake-up)
            res["ubus_registered"] = bus.wait_object("luci.wgrouter", 5, LUCI_ARGS)
            answer = bus.call("wgrouter", "status")
            res["ubus_status_answered"] = bool(answer and answer.get("status") == 0
                                               and answer.get("replies"))
            bus.stop()
        log("  idle at defaults, %s: %.3f CPU s/hour, %.1f loop wake-ups/min, %.1f voluntary "
            "context switches/min (threads %s) over %.0f s" % (
                "ubus registered" if with_ubus else "no ubus", res["cpu_s_per_hour"],
                res["loop_wakeups_per_min"], res["voluntary_switches_per_min"], per_thread, t1 - t0))
    return res


def bench_idle_defaults(idle_seconds):
    from wgrouter import model, ubusobj
    tmp = tempfile.mkdtemp(prefix="wgrouter-bench-site-")
    try:
        site = shipped_site(tmp)
        s = model.Settings()
        res = {"check_interval": s.check_interval, "probe_timeout": s.probe_timeout,
               "ubus_loop_ms": ubusobj.LOOP_MS,
               "ubus_standin": "tests/lab/standin_bus.py + tests/lab/standin_ubus/ubus.py "
                               "(loop blocks for its whole timeout, as python-ubus's)"}
        res["no_ubus"] = _idle_at_defaults(site, idle_seconds, False)
        res["ubus"] = _idle_at_defaults(site, idle_seconds, True)
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------- ipk and hotplug


def bench_ipk():
    out = tempfile.mkdtemp(prefix="wgrouter-bench-ipk-")
    try:
        subprocess.run([sys.executable, os.path.join(REPO, "openwrt-feed/mkipk.py"), "--out", out],
                       check=True, stdout=subprocess.DEVNULL)
        sizes = {f: os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".ipk")}
        main = [s for f, s in sizes.items() if f.startswith("wgrouter_")]
        return main[0] if main else None, sizes
    finally:
        shutil.rmtree(out, ignore_errors=True)


def bench_hotplug(n=50):
    """Run time of the hotplug script under busybox ash for an ifdown of a
    configured WAN, with a live daemon pid to signal (median of n)."""
    script = os.path.join(REPO, "files/etc/hotplug.d/iface/30-wgrouter")
    root = tempfile.mkdtemp(prefix="wgrouter-bench-hp-")
    try:
        os.makedirs(os.path.join(root, "etc/config"))
        os.makedirs(os.path.join(root, "var/run/wgrouter"))
        shutil.copy(os.path.join(REPO, "files/etc/config/wgrouter"), os.path.join(root, "etc/config/wgrouter"))
        # what the daemon writes for the shipped config's WANs and tunnel
        with open(os.path.join(root, "var/run/wgrouter/ifaces"), "w") as f:
            f.write("wan\nwanb\nwg0\n")
        # the script signals only a process whose command line names wgrouter
        sink = subprocess.Popen([sys.executable, "-c",
                                 "import signal,time\nsignal.signal(signal.SIGUSR1, lambda *a: None)\n"
                                 "while True: time.sleep(60)", "wgrouter-bench-sink"])
        time.sleep(0.3)
        with open(os.path.join(root, "var/run/wgrouter.pid"), "w") as f:
            f.write("%d\n" % sink.pid)
        env = dict(os.environ, ACTION="ifdown", INTERFACE="wan", WGROUTER_ROOT=root)
        times = []
        try:
            for _ in range(n):
                t = time.perf_counter()
                subprocess.run(["busybox", "ash", script], env=env, check=True)
                times.append((time.perf_counter() - t) * 1000.0)
        finally:
            sink.kill()
            sink.wait()
        lines = open(os.path.join(root, "var/run/wgrouter/events")).read().splitlines()
        if len(lines) != n:
            raise RuntimeError("hotplug script delivered %d of %d events" % (len(lines), n))
        # the cost of starting busybox itself, for scale
        base = []
        for _ in range(n):
            t = time.perf_counter()
            subprocess.run(["busybox", "true"], check=True)
            base.append((time.perf_counter() - t) * 1000.0)
        return round(statistics.median(times), 2), round(statistics.median(base), 2)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------- cost of one check

CHECK_COST = "check_cost"  # an --only name beside the scenarios
# One process, CHECKS healthy checks in a row: the shell's observe() as the
# daemon runs it, reading the peers with `wg show all dump` forked and parsed,
# or in process.  Netlink (the WANs) is dumped once before, as in steady state.
CHECK_CODE = r"""
import json, resource, sys, tempfile, time
from wgrouter import model, shell, wg
mode, n, dev = sys.argv[1], int(sys.argv[2]), sys.argv[3]
client = wg.Client(()) if mode == "fork" else wg.Client()
config = model.Config(model.Settings(), (), (model.Tunnel(dev, ()),))
s = shell.Shell(config, root=tempfile.mkdtemp(), wg=client)
_, peers, present = s.observe(True)
assert present == {dev} and peers, (present, s.wg_error)
def cpu():
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
c0, t0 = cpu(), time.perf_counter()
for _ in range(n):
    _, again, _ = s.observe(False)
    assert again.keys() == peers.keys()
c1, t1 = cpu(), time.perf_counter()
print(json.dumps({"cpu_s": c1 - c0, "wall_s": t1 - t0, "used": client.used}))
"""


def _perf_instructions():
    """Why ``perf stat -e instructions`` cannot count here, or None."""
    if not shutil.which("perf"):
        return "perf not installed"
    r = subprocess.run(["perf", "stat", "-x,", "-e", "instructions", "true"], capture_output=True, text=True)
    line = (r.stderr.strip().splitlines() or [""])[-1]
    if r.returncode != 0 or not line.split(",")[0].strip().isdigit():
        return "perf stat -e instructions: %s" % (line.split(",")[0] or r.stderr.strip() or r.returncode)
    return None


def _check_run(lab, mode, n, perf):
    argv = [sys.executable, "-c", CHECK_CODE, mode, str(n), lab.router_wg]
    if perf:
        argv = ["perf", "stat", "-x,", "-e", "instructions"] + argv
    r = subprocess.run(lab.cmd("router", *argv), capture_output=True, text=True, cwd=REPO, timeout=600)
    if r.returncode != 0:
        raise RuntimeError("check cost (%s): %s" % (mode, r.stderr.strip()[-500:]))
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if perf:
        counts = [line.split(",") for line in r.stderr.splitlines() if ",instructions" in line]
        out["instructions"] = int(counts[-1][0])
    return out


def bench_check_cost(checks=500, rounds=3):
    """CPU time (and instructions, where perf counts them) of one healthy
    check: `wg show all dump` forked against the in-process read, in the same
    lab, rounds alternating.  The forked side includes the child's CPU."""
    res = {"checks_per_round": checks, "rounds": rounds}
    why = _perf_instructions()
    res["instructions"] = "counted with perf stat" if why is None else "not counted: %s" % why
    with topology.Lab() as lab:
        lab.start_wgrouter(check_interval=10, endpoint_host=topology.VPN_ADDRESSES[0])
        lab.wait_for(lab.tunnel_works, 30)
        cpu = {"fork": [], "inprocess": []}
        ins = {"fork": [], "inprocess": []}
        for _ in range(rounds):
            for mode in ("fork", "inprocess"):
                full = _check_run(lab, mode, checks, why is None)
                if mode == "inprocess" and full["used"] != {lab.router_wg: "uapi"}:
                    raise RuntimeError("in-process read did not use the UAPI: %r" % full["used"])
                cpu[mode].append(full["cpu_s"] / checks)
                if why is None:
                    # startup and the first check cancel out against a run of none
                    empty = _check_run(lab, mode, 0, True)
                    ins[mode].append((full["instructions"] - empty["instructions"]) / checks)
    for mode in ("fork", "inprocess"):
        res["%s_cpu_ms" % mode] = round(statistics.median(cpu[mode]) * 1000.0, 4)
        if ins[mode]:
            res["%s_instructions" % mode] = int(statistics.median(ins[mode]))
    res["cpu_ratio"] = round(res["fork_cpu_ms"] / max(res["inprocess_cpu_ms"], 1e-6), 1)
    if ins["fork"]:
        res["instructions_ratio"] = round(res["fork_instructions"] / max(res["inprocess_instructions"], 1), 1)
    res["transport"] = "uapi (wireguard-go); the forked wg reads the same socket"
    log("  one check: forked wg %.3f ms CPU, in process %.3f ms CPU (%.1fx)%s" % (
        res["fork_cpu_ms"], res["inprocess_cpu_ms"], res["cpu_ratio"],
        "" if why is None else "; instructions %s" % res["instructions"]))
    return res


# ------------------------------------------------------------------ report


def table(results):
    rows = ["| scenario | wgrouter median (min-max) | stock baseline | runs |",
            "|---|---|---|---|"]
    for name, r in results["scenarios"].items():
        if r["baseline_recovered"]:
            base = "%.2f s" % r["baseline_s"]
        else:
            base = "not recovered within %.0f s" % r["limit_s"]
        w = "%.2f s (%.2f-%.2f)" % (r["wgrouter_s"], r["min_s"], r["max_s"])
        if not r.get("wgrouter_recovered", True):
            w += ", some runs NOT recovered"
        rows.append("| %s | %s | %s | %d + %d |" % (name, w, base, r["runs"], r["baseline_runs"]))
    m = results.get("memory", {})
    rows += ["", "| measure | value |", "|---|---|"]
    if m:
        rows += [
            "| RSS, default config | %d kB (%.2fx bare python %d kB) |" % (
                m["rss_kb"], m["rss_ratio_to_bare"], m["bare_python_rss_kb"]),
            "| PSS, default config | %d kB |" % m["pss_kb"],
            "| RSS with DNS endpoints | %d kB |" % m["rss_kb_dns"],
        ]
        if "rss_kb_mqtt" in m:
            rows.append("| RSS with MQTT on | %d kB |" % m["rss_kb_mqtt"])
    if "cpu_s_per_hour" in results:
        rows.append("| idle CPU | %.2f s/hour (over %.0f s) |" % (results["cpu_s_per_hour"],
                                                              results.get("idle_seconds", 0)))
        rows.append("| idle wake-ups | %.1f /min (%.1f context switches/min, children included) |" % (
            results["wakeups_per_min"], results["context_switches_per_min"]))
    c = results.get("check_cost")
    if c:
        rows.append("| one healthy check, CPU | %.3f ms forking `wg show all dump`, %.3f ms in process (%.1fx) |" % (
            c["fork_cpu_ms"], c["inprocess_cpu_ms"], c["cpu_ratio"]))
        if "instructions_ratio" in c:
            rows.append("| one healthy check, instructions | %d forking, %d in process (%.1fx) |" % (
                c["fork_instructions"], c["inprocess_instructions"], c["instructions_ratio"]))
    if results.get("relay"):
        from bench import relay as bench_relay
        rows += bench_relay.rows(results["relay"])
    d = results.get("idle_defaults")
    if d:
        for key, what in (("no_ubus", "without ubus"), ("ubus", "ubus object registered")):
            r = d[key]
            rows.append("| idle at the shipped defaults (check_interval %s), %s | %.2f CPU s/hour, "
                        "%.1f loop wake-ups/min, %.1f voluntary context switches/min (all threads; "
                        "over %.0f s) |" % (d["check_interval"], what, r["cpu_s_per_hour"],
                                             r["loop_wakeups_per_min"],
                                             r["voluntary_switches_per_min"], r["idle_seconds"]))
    if results.get("ipk_bytes"):
        rows.append("| ipk size | %d bytes |" % results["ipk_bytes"])
    if results.get("hotplug_ms") is not None:
        rows.append("| hotplug script run time | %.2f ms (busybox alone: %.2f ms) |" % (
            results["hotplug_ms"], results["busybox_true_ms"]))
    return "\n".join(rows) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="wgrouter runs per scenario")
    ap.add_argument("--baseline-runs", type=int, default=3, help="stock baseline runs per scenario")
    ap.add_argument("--idle-seconds", type=float, default=300.0, help="idle CPU measurement (>= 300 for the README)")
    ap.add_argument("--only", help="comma-separated scenario names ('' for none)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--merge", action="store_true",
                    help="update the scenarios run now in an existing results file")
    ap.add_argument("--out", default=os.path.join(HERE, "results.json"))
    args = ap.parse_args(argv)
    reason = topology.can_run()
    if reason:
        log("bench: cannot run the lab here: %s" % reason)
        return 2
    results = {"scenarios": {}, "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0],
                           "wireguard": "wireguard-go"}}
    if args.merge and os.path.exists(args.out):
        # re-run some scenarios, keep the rest of an earlier full run
        with open(args.out) as f:
            earlier = json.load(f)
        # scenarios no longer defined (renamed) go; the rest are kept
        earlier["scenarios"] = {k: v for k, v in earlier["scenarios"].items()
                                if k in scenarios.ALL or k in DEFAULTS_SCENARIOS or k == IDLE_SILENT}
        earlier["generated_partial"] = results["generated"]
        results = earlier
    names = [n for n in args.only.split(",") if n] if args.only is not None else list(scenarios.ALL)
    if args.only is None:
        names += list(DEFAULTS_SCENARIOS) + [IDLE_SILENT]
    check_cost = args.only is None or CHECK_COST in names
    idle_defaults = args.only is None or IDLE_DEFAULTS in names
    names = [n for n in names if n not in (CHECK_COST, IDLE_DEFAULTS)]
    from bench import relay as bench_relay
    run_relay = args.only is None or bench_relay.NAME in names
    names = [n for n in names if n != bench_relay.NAME]
    for name in names:
        log("scenario %s" % name)
        if name == IDLE_SILENT:
            results["scenarios"][name] = bench_silent_failure_idle(args.runs, args.baseline_runs)
            continue
        if name in DEFAULTS_SCENARIOS:
            results["scenarios"][name] = bench_scenario(name, args.runs, args.baseline_runs,
                                                        DEFAULTS_SCENARIOS[name], dict(SHIPPED))
            continue
        results["scenarios"][name] = bench_scenario(name, args.runs, args.baseline_runs)
    if run_relay:
        log("relay throughput (WireGuard over TCP against direct UDP)")
        results["relay"] = bench_relay.bench(log=log)
    if not args.skip_memory:
        log("memory and idle cost")
        m = bench_memory_and_idle(args.idle_seconds)
        for key in ("cpu_s_per_hour", "wakeups_per_min", "context_switches_per_min", "idle_seconds"):
            results[key] = m.pop(key)
        results["memory"] = m
    if check_cost:
        log("cost of one check")
        results["check_cost"] = bench_check_cost()
    if idle_defaults:
        log("idle at the shipped defaults, with and without ubus")
        results["idle_defaults"] = bench_idle_defaults(args.idle_seconds)
    if args.merge and args.skip_memory and "ipk_bytes" in results:
        return _write(results, args.out)
    log("ipk and hotplug")
    results["ipk_bytes"], results["ipk_sizes"] = bench_ipk()
    results["hotplug_ms"], results["busybox_true_ms"] = bench_hotplug()
    return _write(results, args.out)


def _write(results, out):
    with open(out, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    md = table(results)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
