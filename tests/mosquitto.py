"""A real mosquitto broker on a free loopback port, for tests and benchmarks.

``Broker`` writes a config into its own directory, optionally a password file
(``mosquitto_passwd``) and a TLS listener with a CA and server certificate
made on the spot with ``openssl``; ``start``/``stop``/``restart`` run it.
``Subscriber`` runs ``mosquitto_sub`` so that what the broker delivers is
checked by an independent client.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

WAIT = 10.0  # s: longest wait for the broker to listen or to exit


def available(tls=False) -> bool:
    tools = ("mosquitto", "mosquitto_passwd", "mosquitto_sub", "mosquitto_pub") + (("openssl",) if tls else ())
    return all(shutil.which(b) for b in tools)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, **kw):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def make_certs(where: str) -> dict:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client
    certificate, all signed by the CA.  Returns their paths by name."""
    p = {n: os.path.join(where, n) for n in ("ca.key", "ca.crt", "server.key", "server.crt", "client.key", "client.crt")}
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
          "-subj", "/CN=wgrouter test CA", "-keyout", p["ca.key"], "-out", p["ca.crt"]])
    for who, cn, ext in (("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                         ("client", "router1", "extendedKeyUsage=clientAuth")):
        csr = os.path.join(where, who + ".csr")
        extfile = os.path.join(where, who + ".ext")
        with open(extfile, "w") as f:
            f.write(ext + "\n")
        _run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + cn,
              "-keyout", p[who + ".key"], "-out", csr])
        _run(["openssl", "x509", "-req", "-in", csr, "-CA", p["ca.crt"], "-CAkey", p["ca.key"],
              "-CAcreateserial", "-days", "2", "-extfile", extfile, "-out", p[who + ".crt"]])
    return p


class Broker:
    """One mosquitto process; the port stays the same across restarts."""

    def __init__(self, users=None, tls=False, require_certificate=False, port=None, directory=None, extra=()):
        self._own_dir = directory is None
        self.dir = directory or tempfile.mkdtemp(prefix="t%d-mosq-" % os.getpid())
        self.port = port or free_port()
        self.users = dict(users or {})
        self.tls = tls
        self.require_certificate = require_certificate
        self.extra = list(extra)  # more mosquitto.conf lines
        self.certs = make_certs(self.dir) if tls else {}
        self.log = os.path.join(self.dir, "mosquitto.log")
        self.proc = None
        self._write_config()

    def _write_config(self):
        lines = [
            "persistence false",
            "log_dest file %s" % self.log,
            "connection_messages true",
            "listener %d 127.0.0.1" % self.port,
            "allow_anonymous %s" % ("false" if self.users or self.require_certificate else "true"),
        ]
        if os.geteuid() == 0:
            # mosquitto drops root to user "mosquitto", which cannot read the
            # test's private directory.
            lines.insert(0, "user root")
        if self.users:
            pwfile = os.path.join(self.dir, "passwd")
            first = True
            for name, password in self.users.items():
                _run(["mosquitto_passwd", "-b"] + (["-c"] if first else []) + [pwfile, name, password])
                first = False
            lines.append("password_file %s" % pwfile)
        if self.tls:
            lines += [
                "cafile %s" % self.certs["ca.crt"],
                "certfile %s" % self.certs["server.crt"],
                "keyfile %s" % self.certs["server.key"],
            ]
            if self.require_certificate:
                lines += ["require_certificate true", "use_identity_as_username true"]
        lines += self.extra
        self.config = os.path.join(self.dir, "mosquitto.conf")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self):
        self.proc = subprocess.Popen(["mosquitto", "-c", self.config], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mosquitto exited: %s" % self.read_log()[-2000:])
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen on %d" % self.port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def read_log(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def close(self):
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def client_args(self, user=None, password=None, cert=False):
        """mosquitto_sub/pub arguments to reach this broker."""
        args = ["-h", "127.0.0.1", "-p", str(self.port)]
        if user:
            args += ["-u", user, "-P", password]
        if self.tls:
            args += ["--cafile", self.certs["ca.crt"]]
            if cert:
                args += ["--cert", self.certs["client.crt"], "--key", self.certs["client.key"]]
        return args


class Subscriber:
    """``mosquitto_sub`` on a topic filter, collecting (retain, topic, payload)."""

    def __init__(self, broker, topic="#", user=None, password=None, cert=False, protocol="mqttv311"):
        client = broker.client_args(user, password, cert)
        self.marker = "wgrouter-test/ready/%d-%d" % (os.getpid(), id(self))
        args = ["mosquitto_sub"] + client + [
            "-V", protocol, "-t", topic, "-t", self.marker, "-F", "%r %t %p", "-q", "1"]
        self.messages = []
        self.ready = False
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # Subscribing is asynchronous: wait until a marker message comes
        # back, so that nothing published after __init__ is missed.
        deadline = time.monotonic() + WAIT
        while not self.ready and time.monotonic() < deadline:
            subprocess.run(["mosquitto_pub"] + client + ["-t", self.marker, "-m", "x"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=WAIT)
            with self._cond:
                self._cond.wait_for(lambda: self.ready, 0.3)
        if not self.ready:
            self.close()
            raise RuntimeError("mosquitto_sub did not subscribe")

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            retain, _, rest = line.partition(" ")
            topic, _, payload = rest.partition(" ")
            with self._cond:
                if topic == self.marker:
                    self.ready = True
                else:
                    self.messages.append((retain == "1", topic, payload))
                self._cond.notify_all()

    def wait(self, predicate, timeout=WAIT):
        """Wait until predicate(messages) is true; returns the final value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(list(self.messages))
                left = deadline - time.monotonic()
                if value or left <= 0:
                    return value
                self._cond.wait(min(left, 0.2))

    def on(self, topic):
        with self._cond:
            return [m for m in self.messages if m[1] == topic]

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(WAIT)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
