"""Start the lab daemon with the soak's test hooks, then run wgrouter as usual.

    python3 tests/lab/soakhook.py HOOKDIR wgrouter run --root ROOT

The wall clock cannot be stepped on a shared test machine (every other lab's
timings use it), and Linux time namespaces shift only the monotonic and
boot-time clocks.  So the step is made for this one process: ``time.time()``
adds the steps listed in HOOKDIR/clock (lines ``REAL_TIME DELTA``: from REAL_TIME
on, wall time is DELTA seconds off).  WireGuard stamps a handshake with the
wall clock of that moment (kernel: drivers/net/wireguard/noise.c,
ktime_get_real_ts64 into walltime_last_handshake; wireguard-go:
device/noise-protocol.go, time.Now() into lastHandshakeNano), so on a router
a handshake made after a step carries the stepped time and one from before
keeps its old stamp.  The lab's wireguard-go runs on the real clock, so both
ways the daemon reads stamps are shifted the same way: in process
(``wgrouter.wg.Client.read``, UAPI or generic netlink) and, for the `wg`
fallback, HOOKDIR/bin, first on PATH, holds a ``wg`` whose
``show all dump`` does the same.  Nothing of wgrouter's logic is changed: it
reads ``time.time()`` and the peers' stamps as on a router.
"""

import dataclasses
import os
import runpy
import sys
import time

import wgrouter.wg

hookdir = sys.argv[1]
clock_file = os.path.join(hookdir, "clock")
_real_time = time.time
_state = {"mtime": None, "steps": ()}


def _steps():
    try:
        mtime = os.stat(clock_file).st_mtime_ns
    except OSError:
        return ()
    if mtime != _state["mtime"]:
        steps = []
        try:
            with open(clock_file) as f:
                for line in f:
                    words = line.split()
                    if len(words) == 2:
                        steps.append((float(words[0]), float(words[1])))
        except (OSError, ValueError):
            return _state["steps"]
        _state["mtime"], _state["steps"] = mtime, tuple(steps)
    return _state["steps"]


def stepped_time():
    now = _real_time()
    return now + sum(delta for at, delta in _steps() if at <= now)


def stepped_stamp(stamp):
    """A handshake stamp (whole unix seconds, real clock) as the stepped
    clock made it.  The stamp is cut to the second: one in the step's own
    second is taken as made after it (a small age either way, where the
    other guess would show a step's worth of age)."""
    if not stamp:
        return stamp
    return stamp + int(sum(delta for at, delta in _steps() if at < stamp + 1))


def _stepped_read(read):
    def stepped(self, names):
        found, failed = read(self, names)
        for name, rows in found.items():
            found[name] = [dataclasses.replace(r, latest_handshake=stepped_stamp(r.latest_handshake))
                           for r in rows]
        return found, failed
    return stepped


time.time = stepped_time
wgrouter.wg.Client.read = _stepped_read(wgrouter.wg.Client.read)
os.environ["PATH"] = os.path.join(hookdir, "bin") + os.pathsep + os.environ.get("PATH", "")
# tests/lab/standin_ubus (the stand-in python3-ubus binding), when the soak asks for it
if os.path.isdir(os.path.join(hookdir, "ubus")):
    sys.path.insert(0, os.path.join(hookdir, "ubus"))
    if os.environ.get("WGROUTER_STANDIN_UBUS"):
        # on a router the daemon's socket (ubusobj.DEFAULT_SOCKET, which it
        # passes to connect() and watches) is where ubusd listens; in the lab
        # the stand-in ubusd listens in the lab's directory
        import wgrouter.ubusobj
        wgrouter.ubusobj.DEFAULT_SOCKET = os.environ["WGROUTER_STANDIN_UBUS"]

module = sys.argv[2]
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
