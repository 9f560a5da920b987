"""Junk on every input the lab daemon reads, for the chaos soak (tests/lab/soak.py).

None of it is a valid request or event for a managed interface, so the
daemon must refuse it, say so, and change nothing: malformed hotplug lines
and random bytes in the spool, bad and oversized control requests with
silent clients and one that never reads, calls the object's signatures
refuse (through the stand-in bus), a broken configuration reloaded, and a
damaged applied.json for the next start.
"""

import os
import signal
import socket
import threading

from wgrouter import runfiles


def _lines(rng):
    iface_words = ["wan", "wanb", "nosuch", "", "wan\xff", "../../etc"]
    lines = [
        b"ifup wan\xff\n",
        b"ifdown nosuchwan\n",
        b"frobnicate wanb\n",
        b"\x00\x01\x02\n",
        b"ifup\n",
        b" ".join([b"ifupdate", b"nosuch"] + [b"x" * rng.randrange(1, 40)] * 200) + b"\n",
        b"ifdown \xc3\x28 \xed\xa0\x80\n",
        ("ifup %s\n" % rng.choice(iface_words[2:])).encode("utf-8", "surrogateescape"),
    ]
    rng.shuffle(lines)
    return lines


def spool(lab, daemon, rng):
    """Malformed hotplug lines and a block of random bytes (none is a valid
    event of a managed interface), then SIGUSR1, as the hotplug script does."""
    spool = runfiles.path(lab.root, runfiles.SPOOL)
    blob = bytes(rng.getrandbits(8) for _ in range(rng.choice((512, 4096, 65536))))
    with open(spool, "ab") as f:
        for line in _lines(rng):
            f.write(line)
        f.write(blob)
        f.write(b"\n")
    daemon.signal(signal.SIGUSR1)


def control_socket(lab, rng, hold=1.0):
    """Bad requests, an oversized one, clients that say nothing and one
    that never reads its reply.  Returns the idle sockets (close them)."""
    path = runfiles.path(lab.root, runfiles.CONTROL)
    payloads = [b"[1, 2]\n", b"\"status\"\n", b"{not json\n", b"\xff\xfe\n",
                b"{\"method\": \"frobnicate\"}\n", b"{\"method\": \"switch\", \"wan\": \"nosuch\"}\n",
                b"{\"method\": " + b"[" * 5000 + b"\n", b"x" * 70000 + b"\n"]
    rng.shuffle(payloads)
    held = []
    for payload in payloads:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect(path)
            s.sendall(payload)
        except OSError:
            pass
        s.close()
    for _ in range(rng.randrange(1, 4)):  # silent clients, closed after ``hold``
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            held.append(s)
        except OSError:
            s.close()
    # a client that asks and never reads (tiny receive buffer)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    try:
        s.connect(path)
        s.sendall(b"{\"method\": \"status\"}\n")
        held.append(s)
    except OSError:
        s.close()
    timer = threading.Timer(hold, lambda: [x.close() for x in held])
    timer.daemon = True
    timer.start()
    return timer


def bus_calls(bus, rng):
    """Calls to the object that its signatures refuse (missing, extra and
    mistyped arguments, unknown methods): each is refused, nothing done."""
    calls = [("switch", {}), ("switch", {"wan": 5}), ("switch", {"wan": ["wan"]}),
             ("switch", {"wan": "nosuch"}), ("status", {"verbose": True}),
             ("reapply", {"now": "yes"}), ("frobnicate", {}),
             ("switch", {"wan": "x" * 70000})]
    rng.shuffle(calls)
    for method, args in calls:
        bus.call("wgrouter", method, args, timeout=2.0)


BROKEN_CONFIGS = (
    # whatever the lab wrote ('1', '1.0'): the value gets a word in front
    ("option check_interval '", "option check_interval 'soon"),
    ("config wgrouter 'main'", "config wgrouter 'main'\n\toption frobnicate '1'"),
    ("config wan 'wanb'", "config wan 'wanb\n"),
)


def config(lab, daemon, rng):
    """A broken /etc/config/wgrouter and a reload: refused, the running
    configuration kept.  Returns the good text (put it back with restore)."""
    path = os.path.join(lab.root, "etc/config/wgrouter")
    with open(path) as f:
        good = f.read()
    old, new = rng.choice([b for b in BROKEN_CONFIGS if b[0] in good])
    with open(path, "w") as f:
        f.write(good.replace(old, new, 1))
    daemon.signal(signal.SIGHUP)
    return good


def applied(lab, rng):
    """Garbage in applied.json while the daemon is down (read at start)."""
    path = runfiles.path(lab.root, runfiles.STATE)
    with open(path, "wb") as f:
        f.write(rng.choice((b"{\"peers\": [", b"\xff\xfe\x00garbage", b"[]", b"null",
                            b"{\"wg0\": {\"route\": 17}}")))
