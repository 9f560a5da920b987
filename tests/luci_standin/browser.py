"""Run a LuCI view in headless Chromium against the LuCI stand-in.

``Page(view_path, standin)`` writes a page with the stand-in (luci.js), the
fixture data (``standin``: uci configs, rpc replies, ACL) and the view's
source, and ``Browser`` opens it in Debian's ``chromium``, driven over the
DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages
ended by a NUL byte on fds 3 and 4).  ``evaluate`` runs JavaScript in the
page and returns its (awaited) value; ``screenshot`` writes a PNG.
"""

import base64
import json
import os
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Chromium as root in a container: no sandbox, no GPU, nothing from the network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
         "--remote-debugging-pipe", "--no-proxy-server"]


class BrowserError(RuntimeError):
    """the page or the browser failed"""


def _read(name):
    with open(os.path.join(HERE, name)) as f:
        return f.read()


def page_html(view_source, standin, title, tabs=("Status", "Configuration"), active=0):
    """The page: a header and tab row like LuCI's, #maincontent > #view,
    the stand-in, then the view loaded as luci.js would load it."""
    tab_items = "".join('<li class="%s">%s</li>' % ("active" if i == active else "", t)
                        for i, t in enumerate(tabs))
    return """<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>%(title)s</title><style>%(css)s</style></head>
<body><header><span class="brand">OpenWrt</span><span class="path">Status » %(title)s</span></header>
<div id="maincontent"><ul class="tabs">%(tabs)s</ul><div id="view"></div></div>
<script>window.STANDIN = %(standin)s;</script>
<script>%(luci)s</script>
<script>window.VIEW_READY = L.loadView(%(source)s);</script>
</body></html>""" % {
        "title": title, "css": _read("page.css"), "tabs": tab_items,
        "standin": json.dumps(standin), "luci": _read("luci.js"), "source": json.dumps(view_source),
    }


class Browser:
    """One headless Chromium with one page, driven over the DevTools pipe."""

    def __init__(self, width=1280, height=900):
        if CHROMIUM is None:
            raise BrowserError("chromium is not installed")
        self.tmp = tempfile.mkdtemp(prefix="wgrouter-luci-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds():
            # the protocol's fixed descriptors: commands on 3, replies on 4
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM] + FLAGS + ["--user-data-dir=" + os.path.join(self.tmp, "profile"),
                                  "--window-size=%d,%d" % (width, height), "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.tmp, "chromium.log"), "wb"),
            preexec_fn=fds, pass_fds=(3, 4), close_fds=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Runtime.enable", session=True)
        self.resize(width, height)

    # ------------------------------------------------ protocol

    def _message(self):
        while b"\0" not in self._buf:
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise BrowserError("chromium went away: " + self.log())
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method, params=None, session=False):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise BrowserError("%s: %s" % (method, reply["error"]))
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method):
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            ev = self._message()
            if ev.get("method") == method:
                return ev
            self.events.append(ev)

    def log(self):
        try:
            with open(os.path.join(self.tmp, "chromium.log"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    # ------------------------------------------------ page

    def open(self, html, router=None):
        """Load the page: from a file, or served by ``router`` (a
        router.Router, whose /ubus the page's rpc calls then reach)."""
        if router is not None:
            router.page = html
            url = router.url + "/cgi-bin/luci/admin/status/wgrouter"
        else:
            url = "file://" + os.path.join(self.tmp, "page.html")
            with open(url[len("file://"):], "w") as f:
                f.write(html)
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        self.send("Page.navigate", {"url": url}, session=True)
        self.wait_event("Page.loadEventFired")
        self.evaluate("window.VIEW_READY")
        errors = self.evaluate("RECORD.errors")
        if errors:
            raise BrowserError("the view failed: %s" % errors)

    def evaluate(self, expression):
        """The value of a JavaScript expression (a promise is awaited)."""
        r = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                           "returnByValue": True}, session=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise BrowserError("%s: %s" % (expression[:80], d.get("exception", {}).get("description", d.get("text"))))
        return r["result"].get("value")

    def resize(self, width, height, mobile=False):
        self.width = width
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                         "deviceScaleFactor": 1, "mobile": mobile}, session=True)

    def screenshot(self, path, mobile=False, max_height=None, start=None):
        """A PNG of the whole page at the current width, or of ``max_height``
        pixels of it from the top of the element ``start`` (a selector)."""
        for _ in range(2):
            height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
            self.resize(self.width, height, mobile)
        top = 0
        if start:
            top = int(self.evaluate("Math.floor(document.querySelector(%s).getBoundingClientRect().top"
                                    " + window.scrollY) - 8" % json.dumps(start)))
        if max_height:
            height = min(height - top, max_height)
        clip = {"x": 0, "y": top, "width": self.width, "height": height, "scale": 1}
        data = self.send("Page.captureScreenshot", {"format": "png", "clip": clip}, session=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            self.send("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
