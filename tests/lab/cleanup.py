"""Remove what a lab left behind, by prefix.

    python3 -m tests.lab.cleanup            # labs whose creating process is dead
    python3 -m tests.lab.cleanup PREFIX...  # these labs, alive or not

A lab's prefix is ``t<pid><letters>``; its namespaces are ``<prefix>-<name>``,
its WireGuard devices ``wg<pid><letters>r|v`` (UAPI sockets in
/var/run/wireguard), its resolv.conf dir /etc/netns/<prefix>-router and its
temp dir /tmp/wglab-<prefix>-*.
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tests.lab import topology

PREFIX_RE = re.compile(r"^(t(\d+)[a-z]+)-(%s)$" % "|".join(topology.NAMESPACES))


def namespaces():
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def leftovers(prefix):
    """Everything of the lab PREFIX that still exists (for tests and humans)."""
    ident = prefix[1:]
    found = [n for n in namespaces() if n.startswith(prefix + "-")
             and PREFIX_RE.match(n) and PREFIX_RE.match(n).group(1) == prefix]
    found += [p for p in (os.path.join(topology.WG_RUN_DIR, "wg%s%s.sock" % (ident, s))
                          for s in "rv") if os.path.exists(p)]
    found += [d for d in glob.glob(os.path.join(topology.NETNS_ETC, prefix + "-*"))]
    found += glob.glob(os.path.join(tempfile.gettempdir(), "%s%s-*" % (topology.TMP_PREFIX,
                                                                      prefix)))
    found += ["pid %d" % pid for pid in _wg_pids(ident)]
    return found


def _wg_pids(ident):
    """wireguard-go processes of the lab's devices (they outlive a netns)."""
    pids = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(os.path.join(d, "cmdline"), "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"wireguard-go") and \
                any(a in (("wg%sr" % ident).encode(), ("wg%sv" % ident).encode()) for a in argv):
            pids.append(int(os.path.basename(d)))
    return pids


def _kill(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 3
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def cleanup(prefix, keep_tmp=False):
    """Remove the lab PREFIX: processes in its namespaces, wireguard-go, the
    namespaces, UAPI sockets, /etc/netns entries, temp dirs."""
    ident = prefix[1:]
    nss = [n for n in namespaces() if (PREFIX_RE.match(n) or [None, None])[1] == prefix]
    pids = []
    for n in nss:
        r = subprocess.run(["ip", "netns", "pids", n], capture_output=True, text=True)
        pids += [int(p) for p in r.stdout.split() if p.isdigit()]
    pids += _wg_pids(ident)
    _kill(sorted(set(pids)))
    for n in nss:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
    for s in "rv":
        try:
            os.unlink(os.path.join(topology.WG_RUN_DIR, "wg%s%s.sock" % (ident, s)))
        except FileNotFoundError:
            pass
    for d in glob.glob(os.path.join(topology.NETNS_ETC, prefix + "-*")):
        shutil.rmtree(d, ignore_errors=True)
    if not keep_tmp:
        for d in glob.glob(os.path.join(tempfile.gettempdir(), "%s%s-*" % (topology.TMP_PREFIX,
                                                                          prefix))):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def dead_prefixes():
    """Prefixes of labs whose creating process no longer exists."""
    out = set()
    candidates = [(m.group(1), int(m.group(2))) for m in map(PREFIX_RE.match, namespaces()) if m]
    for d in glob.glob(os.path.join(tempfile.gettempdir(), topology.TMP_PREFIX + "t*-*")):
        m = re.match(r"^(t(\d+)[a-z]+)-", os.path.basename(d)[len(topology.TMP_PREFIX):])
        if m:
            candidates.append((m.group(1), int(m.group(2))))
    for prefix, pid in candidates:
        if not _alive(pid):
            out.add(prefix)
    return sorted(out)


def cleanup_dead():
    gone = dead_prefixes()
    for prefix in gone:
        cleanup(prefix)
    return gone


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if os.geteuid() != 0:
        print("cleanup needs root", file=sys.stderr)
        return 1
    prefixes = argv or cleanup_dead()
    for prefix in argv:
        cleanup(prefix)
    for prefix in prefixes:
        print("removed lab %s" % prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
