"""Start the lab daemon with the soak's test hooks, then run wgrouter as usual.

    python3 tests/lab/soakhook.py HOOKDIR wgrouter run --root ROOT

The wall clock cannot be stepped on a shared test machine (every other lab's
timings use it), and Linux time namespaces shift only the monotonic and
boot-time clocks.  So the step is made for this one process: ``time.time()``
adds the steps listed in HOOKDIR/clock (lines ``REAL_TIME DELTA``: from REAL_TIME
on, wall time is DELTA seconds off), and HOOKDIR/bin, first on PATH, holds a
``wg`` that shows a handshake made after a step with the stepped time:
WireGuard (kernel and wireguard-go) stamps a handshake with the wall clock
of that moment, and ``wg show`` prints that stamp as unix time, so
handshakes from before a step keep their old stamp.  Nothing of wgrouter
is changed: it reads ``time.time()`` and ``wg show all dump`` as on a router.
"""

import os
import runpy
import sys
import time

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


time.time = stepped_time
os.environ["PATH"] = os.path.join(hookdir, "bin") + os.pathsep + os.environ.get("PATH", "")
# tests/lab/standin_ubus (the stand-in python3-ubus binding), when the soak asks for it
if os.path.isdir(os.path.join(hookdir, "ubus")):
    sys.path.insert(0, os.path.join(hookdir, "ubus"))

module = sys.argv[2]
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
