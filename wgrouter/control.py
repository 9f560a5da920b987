"""The daemon's run files and its control socket, shared by daemon and CLI."""

import json
import os
import socket

import wgrouter

# The hotplug script appends "ACTION INTERFACE [DEVICE]" lines to SPOOL and
# then sends SIGUSR1 to the pid in PIDFILE (files/etc/hotplug.d/iface/).
SPOOL = "var/run/wgrouter/events"
# The netifd interfaces the daemon manages (WANs and tunnels), one per line:
# the hotplug script passes on only events of these.
IFACES = "var/run/wgrouter/ifaces"
PIDFILE = "var/run/wgrouter.pid"
CONTROL = "var/run/wgrouter/control.sock"
STATE = "var/run/wgrouter/applied.json"


class ControlError(wgrouter.Error):
    """wgrouter daemon unreachable"""


def path(root, rel):
    return os.path.join(root, rel)


def write_atomic(target, text):
    """Replace the file ``target`` with ``text`` in one step: a reader (the
    hotplug script, a respawned daemon) sees the old file or the new one,
    never half of one, even across a power cut."""
    directory = os.path.dirname(target)
    if directory:
        os.makedirs(directory, exist_ok=True)
    tmp = "%s.%d.tmp" % (target, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def request(root, req, timeout=5.0):
    """Send one JSON request line to the running daemon, return its reply."""
    where = path(root, CONTROL)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(where)
        except OSError:
            raise ControlError("wgrouter is not running (no control socket at %s)" % where)
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return json.loads(buf.decode())
    except (OSError, ValueError) as e:
        raise ControlError("no answer from wgrouter: %s" % e)
    finally:
        s.close()
