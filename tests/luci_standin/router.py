"""The router behind a LuCI page in the Chromium harness.

A fakebus.Ubusd with the daemon's own UbusService on it (its `wgrouter` and
`luci.wgrouter` objects, answering from ``handlers``), and fakebus.Uhttpd in
front, which holds the rules of uhttpd's /ubus handler and rpcd's session
ACL (the session argument added to every call, -32002 for a call the login
may not make, the ubus status first in the answer).  A loopback HTTP server
serves the page and passes each JSON-RPC POST the page's rpc.js stand-in
sends to Uhttpd.post, so the page and /ubus are one origin, as on a router.
"""

import http.server
import json
import os
import threading

from tests import fakebus
from wgrouter import ubusobj

APP = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                   "openwrt-feed", "luci-app-wgrouter")
ACL = os.path.join(APP, "root/usr/share/rpcd/acl.d/luci-app-wgrouter.json")
GROUP = "luci-app-wgrouter"
# rpc.js posts to L.url('admin/ubus') + '/OBJECT.METHOD'
UBUS_PATH = "/ubus"


class Handlers:
    """What the daemon's handlers answer: the status snapshot and diagnosis
    given, reapply and switch accepted for the WANs the snapshot names (the
    daemon's own words otherwise, daemon.py Daemon.handle)."""

    def __init__(self, status, diagnosis):
        self.snapshot = status
        self.diagnosis = diagnosis
        self.calls = []

    def status(self):
        self.calls.append(("status",))
        return self.snapshot

    def reapply(self):
        self.calls.append(("reapply",))
        return {"ok": True}

    def switch(self, wan):
        self.calls.append(("switch", wan))
        wans = sorted(self.snapshot.get("wans", {}))
        if wan != "auto" and wan not in wans:
            return {"error": "unknown WAN %r (configured: %s)" % (wan, ", ".join(wans))}
        return {"ok": True, "wan": wan}

    def diagnose(self):
        self.calls.append(("diagnose",))
        return self.diagnosis


class Router:
    """``handlers`` None: wgrouter is not on the bus.  ``legacy``: an object
    named luci.wgrouter whose methods declare no session argument (what an
    older wgrouter would have), so every call LuCI makes is ubus status 2."""

    def __init__(self, handlers=None, legacy=False):
        self.ubusd = fakebus.Ubusd()
        self.handlers = handlers
        self.service = None
        self.log = []
        if handlers is not None:
            self.service = ubusobj.UbusService(handlers, backend=fakebus.FakeBus(self.ubusd),
                                               log=self.log.append, socket_path=self.ubusd.path)
            if not self.service.start() or not self.service.registered.wait(10):
                raise RuntimeError("the daemon's ubus objects did not register: %s" % self.log)
            handlers.calls.clear()  # the state sent on registration
        if legacy:
            self._legacy = fakebus.FakeBus(self.ubusd)
            self._legacy.connect(socket_path=self.ubusd.path)
            self._legacy.add(ubusobj.LUCI_OBJECT, {
                m: {"method": lambda h, d: h.reply({}), "signature": {}}
                for m in fakebus.load_contract()["methods"]})
        self.web = fakebus.Uhttpd(self.ubusd, [ACL])
        self.page = ""
        self.server = http.server.HTTPServer(("127.0.0.1", 0), self._handler())
        self.url = "http://127.0.0.1:%d" % self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, name="luci-standin-http",
                                        daemon=True)
        self._thread.start()

    def login(self, write=True):
        """A session of a login with read (and write) access to the app's
        ACL group, as rpcd grants it."""
        return self.web.login(read=[GROUP], write=[GROUP] if write else [])

    def _handler(self):
        router = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, body, ctype):
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(router.page, "text/html; charset=utf-8")

            def do_POST(self):
                if not self.path.startswith(UBUS_PATH + "/"):
                    self.send_error(404)
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._send(json.dumps(router.web.post(json.loads(body))), "application/json")

            def log_message(self, *args):
                pass

        return Handler

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        if self.service is not None:
            self.service.stop()
        self.ubusd.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
