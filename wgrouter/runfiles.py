"""Everything under /var/run/wgrouter (and the pid file beside it): the
paths, atomic writes and bounded reads, the pid file, the hotplug spool,
the interface list the hotplug script filters on.  The daemon, the CLI and
the shell use these; the shell scripts (files/etc/hotplug.d/iface/,
files/etc/init.d/) name the same paths.
"""

import json
import os

import wgrouter
from wgrouter import model

# The hotplug script appends "ACTION INTERFACE [DEVICE]" lines to SPOOL and
# then sends SIGUSR1 to the pid in PIDFILE (files/etc/hotplug.d/iface/).
SPOOL = "var/run/wgrouter/events"
# The netifd interfaces the daemon manages (WANs and tunnels), one per line:
# the hotplug script passes on only events of these.
IFACES = "var/run/wgrouter/ifaces"
PIDFILE = "var/run/wgrouter.pid"
CONTROL = "var/run/wgrouter/control.sock"
STATE = "var/run/wgrouter/applied.json"
# Devices learned for WANs configured without one (a Wi-Fi client uplink),
# from netifd's ifup events (shell.Shell): kept so that a respawned daemon
# knows them.
DEVICES = "var/run/wgrouter/devices.json"


class AlreadyRunning(wgrouter.Error):
    """another wgrouter daemon is running"""


def is_device_name(name):
    """A name Linux could give a device (net/core/dev.c dev_valid_name: under
    IFNAMSIZ (16) bytes, not "." or "..", no "/", ":" or white space)."""
    return (0 < len(name.encode("utf-8", "replace")) < 16 and name not in (".", "..")
            and name.isprintable() and not any(c in name for c in "/: "))


def path(root, rel):
    return os.path.join(root, rel)


# A run file is a few kilobytes (a record per host route, a name per WAN):
# one this big is not one we wrote, and is not read.
RUN_FILE_MAX = 1024 * 1024


def read_json(target):
    """A run file's JSON.  OSError (FileNotFoundError when there is none),
    or ValueError for one that is too big, not UTF-8 or not JSON."""
    with open(target, "rb") as f:
        data = f.read(RUN_FILE_MAX + 1)
    if len(data) > RUN_FILE_MAX:
        raise ValueError("over %d bytes" % RUN_FILE_MAX)
    return loads(data)


def loads(data):
    """JSON from bytes; ValueError for anything that is not UTF-8 JSON
    (UnicodeDecodeError is one; json's recursion limit, hit by deep nesting,
    is made one)."""
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


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


def pid_alive(pid):
    """A live wgrouter process (a pid reused by something else is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"wgrouter" in f.read()
    except OSError:
        return True


def read_pid(root):
    try:
        with open(path(root, PIDFILE)) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


# The hotplug script appends one short line per event (a few dozen bytes):
# a spool this big is junk, or events nobody took for a long time.  Only its
# newest part is read (the last events of an interface decide its state),
# so that no spool makes the daemon read and hold more than this.
SPOOL_MAX = 64 * 1024
# The actions the hotplug script passes on (files/etc/hotplug.d/iface/).
HOTPLUG_ACTIONS = ("ifup", "ifdown", "ifupdate", "connected", "disconnected")


def spool_event(line):
    """One spool line ("ACTION INTERFACE [DEVICE]", bytes) as an
    model.Hotplug; None for a blank line.  ValueError says what is wrong
    with a bad one."""
    words = line.split()
    if not words:
        return None
    try:
        words = [w.decode("utf-8") for w in words]
    except UnicodeDecodeError:
        raise ValueError("not UTF-8: %r" % line[:80]) from None
    if not 2 <= len(words) <= 3 or words[0] not in HOTPLUG_ACTIONS \
            or not all(w.isprintable() for w in words):
        raise ValueError("not ACTION INTERFACE [DEVICE]: %r" % line[:80])
    device = None
    if len(words) > 2:
        if not is_device_name(words[2]):
            raise ValueError("not a device name: %r" % words[2][:80])
        device = words[2]
    return model.Hotplug(action=words[0], interface=words[1], device=device)


def read_spool(root, log=wgrouter.log):
    """Take every pending hotplug line; return model.Hotplug events.

    Each line stands alone: a bad one is skipped (and the bad lines of one
    read are logged once, with where the first one was), the others are
    taken.  A spool over SPOOL_MAX is cut to its newest lines, and the cut
    is logged."""
    spool = path(root, SPOOL)
    taken = "%s.%d" % (spool, os.getpid())
    try:
        os.rename(spool, taken)
    except FileNotFoundError:
        return []
    except OSError as e:
        log("hotplug spool %s not taken: %s" % (spool, e))
        return []
    cut = 0
    try:
        with open(taken, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > SPOOL_MAX:
                # from the byte before the cut: a cut just after a newline
                # keeps the whole line that follows it
                f.seek(size - SPOOL_MAX - 1)
                data = f.read(SPOOL_MAX + 1)
                start = data.find(b"\n") + 1 if b"\n" in data else len(data)
                data = data[start:]
                cut = size - len(data)
            else:
                data = f.read(SPOOL_MAX)
    except OSError as e:
        log("hotplug spool %s not read: %s" % (spool, e))
        return []
    finally:
        try:
            os.unlink(taken)
        except OSError:
            pass
    if cut:
        log("hotplug spool %s: %d bytes, the oldest %d cut unread (kept the last %d)"
            % (spool, size, cut, len(data)))
    events = []
    bad = []
    for number, line in enumerate(data.split(b"\n"), 1):
        try:
            event = spool_event(line)
        except ValueError as e:
            bad.append("line %d%s: %s" % (number, " after the cut" if cut else "", e))
            continue
        if event is not None:
            events.append(event)
    if bad:
        log("hotplug spool %s: %d bad line(s) skipped (first: %s)" % (spool, len(bad), bad[0]))
    return events


def write_ifaces(root, cfg):
    """Tell the hotplug script which interfaces' events to pass on: the ones
    this configuration manages, as config.load read them (so quoting and
    comments in /etc/config/wgrouter never make the two disagree)."""
    names = [w.name for w in cfg.wans] + [t.name for t in cfg.tunnels]
    write_atomic(path(root, IFACES), "".join(n + "\n" for n in dict.fromkeys(names)))


def unlink(root, rel):
    try:
        os.unlink(path(root, rel))
    except OSError:
        pass


def refuse_if_running(root):
    """AlreadyRunning if the pid file names another live daemon."""
    pid = read_pid(root)
    if pid and pid != os.getpid() and pid_alive(pid):
        raise AlreadyRunning("another wgrouter daemon is running (pid %d)" % pid)


def claim_pidfile(root):
    """Publish our pid, unless another live daemon owns the pid file."""
    refuse_if_running(root)
    write_atomic(path(root, PIDFILE), "%d\n" % os.getpid())
