"""Demo: cut the primary WAN under a running tunnel and print what happened.

    python3 -m tests.lab.demo [--mode baseline|wgrouter] [--wan dhcp|static]
                              [--mwan3] [--watch 20] [--return-after 15]

Builds the lab, starts the tunnel (stock baseline or wgrouter), streams
probes lan -> 10.99.0.1 every 20 ms, cuts wan's carrier, later gives it
back, and prints one timeline: faults, netifd's log and its hotplug events
(the scripts' runs too where there are scripts), probe
loss and recovery, which WAN carries the WireGuard UDP, clear-text leaks.
Needs root.  Everything is torn down at the end, also on Ctrl-C.
"""

import argparse
import os
import subprocess
import sys
import time

from tests.lab import faults
from tests.lab import observe
from tests.lab import topology


def wgrouter_available():
    try:
        r = subprocess.run([sys.executable, "-m", "wgrouter", "--help"], cwd=topology.REPO,
                           capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def timeline(lab, ps, cap, t0):
    """Rows (time, text) from everything the lab recorded."""
    rows = []
    for t, name, detail in lab.faults:
        rows.append((t, "FAULT    %s %s" % (name, detail)))
    for t, text in lab.netifd.events:
        rows.append((t, "netifd   %s" % text))
    for ev in lab.netifd.hotplug_events:
        rows.append((ev["time"], "event    %s %s%s" % (
            ev["action"], ev["interface"], " DEVICE=%s" % ev["device"] if ev["device"] else "")))
    for run in lab.netifd.hotplug_runs:
        rows.append((run["time"], "hotplug  %s %s %s -> rc %s (%.2fs)" % (
            run["script"], run["action"], run["interface"], run["rc"], run["duration"])))
    if lab.watchdog is not None:
        for t, iface, _, ep, rc in lab.watchdog.actions:
            rows.append((t, "watchdog wg set %s endpoint %s -> rc %s" % (iface, ep, rc)))
    # probe state changes
    sends, replies = ps._snapshot()
    state = None
    for n in sorted(sends):
        ok = n in replies
        if ok != state:
            if state is not None or not ok:
                rows.append((sends[n], "probes   %s" % ("answered" if ok else "LOST")))
            state = ok
    # which WAN carries the tunnel
    dev = None
    for p in cap.tunnel_packets():
        if p["dev"] != dev:
            dev = p["dev"]
            rows.append((p["time"], "tunnel   WireGuard UDP leaves via %s (%s -> %s:%s)" % (
                dev, p["src"], p["dst"], p["dport"])))
    # leaks, in bursts
    burst = []
    for p in cap.leaks() + [None]:
        if burst and (p is None or p["time"] - burst[-1]["time"] > 0.5
                      or p["dev"] != burst[-1]["dev"]):
            rows.append((burst[0]["time"],
                         "LEAK     %d clear packets to %s out of %s over %.2fs" % (
                             len(burst), burst[0]["dst"], burst[0]["dev"],
                             burst[-1]["time"] - burst[0]["time"])))
            burst = []
        if p is not None:
            burst.append(p)
    rows.sort(key=lambda r: r[0])
    return [(t - t0, text) for t, text in rows]


def run(mode, mwan3, watch, return_after, wan="dhcp", out=sys.stdout):
    def say(text):
        print(text, file=out, flush=True)

    with topology.Lab(mwan3=mwan3, force_link=(wan == "static")) as lab:
        say("lab %s built (mwan3=%s, %s WANs: force_link %d); router wg device %s" % (
            lab.prefix, mwan3, wan, wan == "static", lab.router_wg))
        cap = observe.Capture(lab)
        if mode == "wgrouter":
            lab.start_wgrouter()
            say("wgrouter started, log %s" % lab.wgrouter_log)
        else:
            lab.start_baseline()
            say("stock baseline: netifd host dependency + wireguard_watchdog")
        ps = observe.ProbeStream(lab)
        t_start = time.time()
        d = ps.wait_reply_after(t_start, 20)
        say("tunnel %s" % ("works after %.2fs" % d if d is not None else "DID NOT COME UP"))
        time.sleep(2)
        t0 = faults.carrier_loss(lab, "wan")
        say("cut wan at %s" % time.strftime("%H:%M:%S", time.localtime(t0)))
        t_ret = None
        end = t0 + watch + (return_after or 0)
        while time.time() < end:
            if return_after and t_ret is None and time.time() >= t0 + return_after:
                t_ret = faults.carrier_return(lab, "wan")
                say("wan back at +%.2fs" % (t_ret - t0))
            time.sleep(0.2)
        ps.stop()
        cap.stop()
        if mode == "wgrouter":
            lab.stop_wgrouter()
        say("")
        say("timeline (seconds from the cut):")
        for dt, text in timeline(lab, ps, cap, t0):
            if dt >= -2.5:
                say("  %+8.3f  %s" % (dt, text))
        say("")
        first = ps.first_reply_after(t0)
        say("summary:")
        say("  first reply after the cut: %s" % ("%.2fs" % first if first is not None else "none"))
        say("  longest outage: %.2fs" % ps.outage(since=t0))
        say("  tunnel WAN after the cut: %s" % (", ".join(cap.tunnel_devices(t0)) or "none"))
        if t_ret is not None:
            after = cap.tunnel_wan(t_ret + 1)
            say("  tunnel WAN at the end (wan back at +%.1fs): %s" % (t_ret - t0, after))
        say("  clear-text leaks to %s: %d" % (topology.REMOTE_NET, len(cap.leaks(t0))))
        if mode == "wgrouter" and os.path.exists(lab.wgrouter_log):
            with open(lab.wgrouter_log) as f:
                tail = f.read().splitlines()[-15:]
            say("")
            say("wgrouter log (last lines):")
            for line in tail:
                say("  " + line)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tests.lab.demo",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("baseline", "wgrouter"), default=None,
                    help="default: wgrouter if 'python3 -m wgrouter --help' works, else baseline")
    ap.add_argument("--mwan3", action="store_true",
                    help="mwan3-style policy routing on the router")
    ap.add_argument("--watch", type=float, default=20, help="seconds to watch after the cut")
    ap.add_argument("--return-after", type=float, default=15,
                    help="give wan back this many seconds after the cut (0: never)")
    ap.add_argument("--wan", choices=("dhcp", "static"), default="dhcp",
                    help="dhcp: WANs with force_link 0, as dhcp and pppoe have it (netifd "
                         "takes a WAN down on carrier loss); static: proto static's "
                         "force_link 1 (the WAN stays up, its routes marked linkdown)")
    args = ap.parse_args(argv)
    reason = topology.can_run()
    if reason:
        print("demo cannot run: %s" % reason, file=sys.stderr)
        return 2
    mode = args.mode or ("wgrouter" if wgrouter_available() else "baseline")
    return run(mode, args.mwan3, args.watch, args.return_after, args.wan)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
