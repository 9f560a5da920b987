"""luci-app-wgrouter: the view's syntax and behaviour, the menu and the ACL.

The view runs in node against a stand-in for the part of LuCI's client API
it uses (HARNESS below).  Its rpc calls are not answered by canned replies:
each JSON-RPC request the stand-in of rpc.js builds goes to fakebus.Uhttpd,
which adds the session argument as uhttpd does and calls the daemon's real
UbusService on a FakeBus.
"""

import json
import os
import re
import shutil
import subprocess
import threading

import pytest

from tests import fakebus
from wgrouter import ubusobj

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(ROOT, "openwrt-feed", "luci-app-wgrouter")
VIEW = os.path.join(APP, "htdocs/luci-static/resources/view/wgrouter/status.js")
MENU = os.path.join(APP, "root/usr/share/luci/menu.d/luci-app-wgrouter.json")
ACL = os.path.join(APP, "root/usr/share/rpcd/acl.d/luci-app-wgrouter.json")
CONTRACT = fakebus.load_contract()
LUCI = CONTRACT["luci_object"]["name"]
GROUP = "luci-app-wgrouter"

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")


def load(path):
    with open(path) as f:
        return json.load(f)


def view_source():
    with open(VIEW) as f:
        return f.read()


def declared():
    """{method: (object, params, body)} of the view's rpc.declare calls."""
    found = {}
    for body in re.findall(r"rpc\.declare\(\{(.*?)\}\);", view_source(), re.S):
        obj = re.search(r"object:\s*'([^']+)'", body).group(1)
        method = re.search(r"method:\s*'([^']+)'", body).group(1)
        params = re.search(r"params:\s*\[([^\]]*)\]", body)
        found[method] = (obj, re.findall(r"'([^']+)'", params.group(1)) if params else [], body)
    return found


@needs_node
def test_view_syntax():
    r = subprocess.run([NODE, "--check", VIEW], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_view_header():
    lines = view_source().splitlines()
    assert lines[0] == "'use strict';"
    requires = {line.split()[1].rstrip("';") for line in lines if line.startswith("'require ")}
    assert {"view", "rpc", "poll", "ui", "dom"} <= requires


def test_declared_calls_name_the_luci_object_and_reject():
    calls = declared()
    assert set(calls) == set(CONTRACT["methods"])
    for method, (obj, params, body) in calls.items():
        assert obj == LUCI, "LuCI's calls carry ubus_rpc_session: only %s declares it" % LUCI
        assert params == list(CONTRACT["methods"][method]["args"])
        # a refused call must reject, not resolve with the expect default
        assert re.search(r"reject:\s*true", body), method


def test_acl_shape_and_split():
    acl = load(ACL)
    assert list(acl) == [GROUP]
    entry = acl[GROUP]
    assert isinstance(entry["description"], str)
    assert list(entry["read"]["ubus"]) == [LUCI] and list(entry["write"]["ubus"]) == [LUCI]
    read = entry["read"]["ubus"][LUCI]
    write = entry["write"]["ubus"][LUCI]
    contract = CONTRACT["methods"]
    # read access never includes a method that changes anything
    assert sorted(read) == sorted(m for m, s in contract.items() if s["access"] == "read")
    assert sorted(write) == sorted(m for m, s in contract.items() if s["access"] == "write")
    assert not set(read) & {"reapply", "switch"}
    # everything the view calls is granted
    assert set(declared()) <= set(read) | set(write)


def test_menu_shape():
    menu = load(MENU)
    # the page and its tabs (tests/test_luci_config.py checks the tabs)
    assert list(menu)[0] == "admin/status/wgrouter"
    assert all(k.startswith("admin/status/wgrouter/") for k in list(menu)[1:])
    entry = menu["admin/status/wgrouter"]
    assert isinstance(entry["title"], str) and entry["title"]
    assert entry["action"] == {"type": "view", "path": "wgrouter/status"}
    assert entry["depends"]["acl"] == list(load(ACL))
    # the view path names the file
    view = os.path.join(APP, "htdocs/luci-static/resources/view", entry["action"]["path"] + ".js")
    assert os.path.isfile(view)


# A stand-in for the part of LuCI's client API the view uses, each piece
# modelled on luci-base (htdocs/luci-static/resources):
# - rpc.declare: rpc.js `declare` (params by name, the "call" message with
#   the session id) and `handleCallReply` (a JSON-RPC error rejects with
#   "RPC call to O/M failed with error C: MSG"; with `reject: true` a
#   non-zero ubus status rejects with "... failed with ubus code N: TEXT";
#   the data is result[1], or result[0] when there is none; `expect` swaps
#   in its default when the type differs).  Real LuCI's error messages may
#   carry the stack after the first line (observed in issue 13: the page
#   showed a JavaScript stack line), so the stand-in appends one.
# - cbi_update_table: cbi.js (one row per data row, each cell with the
#   data-title of its column, the placeholder row when there is none).
# - L.hasViewPermission(): false for a read-only page (luci.js).
# - E(), dom.content, ui.addNotification, ui.createHandlerFn, poll.add:
#   just enough to build and walk the tree.
# Requests go out on stdout ("RPC <json>"), answers come back on stdin.
HARNESS = r"""
const fs = require('fs');
const readline = require('readline');
const src = fs.readFileSync(process.argv[2], 'utf8');
const sid = process.argv[3];
const writable = process.argv[4] === 'rw';
const out = { notes: [], polls: [], errors: [] };

const rl = readline.createInterface({ input: process.stdin });
const waiting = [];
rl.on('line', line => waiting.shift()(JSON.parse(line)));
function post(msg) {
  return new Promise(resolve => { waiting.push(resolve); process.stdout.write('RPC ' + JSON.stringify(msg) + '\n'); });
}

String.prototype.format = function() {
  let args = Array.from(arguments);
  return this.replace(/%(\d*\.?\d*m?)([sdB])/g, function(m, f, t) {
    const v = args.shift();
    return t === 'd' ? String(Math.floor(v)) : String(v);
  });
};
function E(tag, attrs, children) {
  if (Array.isArray(tag)) return { tag: 'fragment', attrs: {}, children: attrs };
  if (typeof attrs !== 'object' || Array.isArray(attrs) || attrs === null || attrs.tag) {
    children = attrs; attrs = {};
  }
  if (children === undefined || children === null) children = [];
  if (!Array.isArray(children)) children = [children];
  return { tag: tag, attrs: attrs, children: children };
}
function text(node) {
  if (node == null) return '';
  if (typeof node !== 'object') return String(node);
  return node.children.map(text).join('');
}
function find(node, pred, acc) {
  acc = acc || [];
  if (node && typeof node === 'object') {
    if (pred(node)) acc.push(node);
    (node.children || []).forEach(c => find(c, pred, acc));
  }
  return acc;
}
function cls(node) { return String(node.attrs['class'] || '').split(/\s+/); }

function cbi_update_table(table, data, placeholder) {
  const head = find(table, n => n.tag === 'tr' && cls(n).includes('table-titles'))[0];
  const titles = head.children.map(th => text(th).trim());
  table.children = [ head ];
  data.forEach(row => {
    table.children.push(E('tr', { 'class': 'tr' }, titles.map((t, i) =>
      E('td', { 'class': 'td', 'data-title': t !== '' ? t : null }, row[i] != null ? row[i] : ''))));
  });
  if (!data.length && placeholder)
    table.children.push(E('tr', { 'class': 'tr placeholder' }, E('td', { 'class': 'td' }, placeholder)));
}

const _ = s => s;
const L = { bind: (fn, self, ...a) => fn.bind(self, ...a), hasViewPermission: () => writable };
const view = { extend: o => o };
let rpcId = 1;
const statusText = { 0: 'Command OK', 1: 'Invalid command', 2: 'Invalid argument',
  3: 'Method not found', 4: 'Resource not found', 5: 'No data received',
  6: 'Permission denied', 7: 'Request timeout', 8: 'Not supported', 9: 'Unspecified error',
  10: 'Connection lost' };
function rpcError(msg) {
  const e = new Error(msg + '\n    at handleCallReply (https://192.168.1.1/luci-static/resources/rpc.js:1:2)');
  e.name = 'RPCError';
  return e;
}
const rpc = { declare: function(d) {
  return function() {
    const args = Array.from(arguments), params = {};
    (d.params || []).forEach((p, i) => { params[p] = args[i]; });
    return post({ jsonrpc: '2.0', id: rpcId++, method: 'call',
                  params: [ sid, d.object, d.method, params ] }).then(msg => {
      if (msg.error && msg.error.code)
        throw rpcError('RPC call to %s/%s failed with error %d: %s'.format(d.object, d.method, msg.error.code, msg.error.message));
      let ret = null;
      if (Array.isArray(msg.result)) {
        if (d.reject && msg.result[0] !== 0)
          throw rpcError('RPC call to %s/%s failed with ubus code %d: %s'.format(d.object, d.method, msg.result[0], statusText[msg.result[0]]));
        ret = msg.result.length > 1 ? msg.result[1] : msg.result[0];
      }
      if (d.expect) {
        for (const key in d.expect) {
          if (ret != null && key != '') ret = ret[key];
          const type = Object.prototype.toString;
          if (ret == null || type.call(ret) != type.call(d.expect[key])) ret = d.expect[key];
          break;
        }
      }
      return ret;
    });
  };
} };
let pollFn = null;
const poll = { add: (fn, interval) => { pollFn = fn; out.polls.push(interval); } };
const ui = {
  createHandlerFn: (self, name, ...a) => () => self[name].apply(self, a),
  addNotification: (t, node, c) => out.notes.push([c, text(node)]),
};
let page = null;
const dom = { content: (node, content) => { node.children = [content]; } };
const document = { getElementById: id => find(page, n => n.attrs.id === id)[0] };

const v = new Function('view', 'rpc', 'poll', 'ui', 'dom', 'E', '_', 'L', 'cbi_update_table', 'document', src)(
  view, rpc, poll, ui, dom, E, _, L, cbi_update_table, document);

function tables() {
  return find(page, n => n.tag === 'table').map(t => {
    const head = find(t, n => cls(n).includes('table-titles'))[0];
    const rows = t.children.filter(r => r !== head);
    return { head: head.children.map(text),
             rows: rows.map(r => r.children.map(text)),
             titles: rows.map(r => r.children.map(c => c.attrs['data-title'] === undefined ? '?' : c.attrs['data-title'])),
             placeholder: rows.some(r => cls(r).includes('placeholder')) };
  });
}
function buttons() {
  return find(page, n => n.tag === 'button').map(b => ({
    label: text(b), disabled: b.attrs.disabled != null, cls: cls(b), click: b.attrs.click }));
}

(async () => {
  const st = await v.load();
  page = v.render(st);
  out.first = { tables: tables(), text: text(page) };
  out.buttons = buttons().map(b => ({ label: b.label, disabled: b.disabled, cls: b.cls }));
  for (const b of buttons())
    if (!b.disabled && b.label !== 'Run diagnosis') await b.click();
  const diag = buttons().find(b => b.label === 'Run diagnosis');
  if (diag) await diag.click();
  await pollFn();
  out.after = { tables: tables(), text: text(page) };
  /* what a stale page (buttons from before a permission change) gets */
  await v.handleReapply();
  await v.handleSwitch('wanb');
  console.log('OUT ' + JSON.stringify(out));
  process.exit(0);
})().catch(e => { console.log('OUT ' + JSON.stringify({ crash: String(e.stack) })); process.exit(1); });
"""

PEER = {"state": "up", "wan": "wan", "endpoint": "192.0.2.1:51820", "endpoint_source": "netifd",
        "keepalive": 25, "handshake_age": 12, "rx": 2048, "tx": 4096, "last_step": None}
STATUS = {
    "tunnels": {
        "wg0": {"peers": {
            "office": dict(PEER),
            "backup": {"state": "recovering", "wan": "wanb", "endpoint": None,
                       "endpoint_source": None, "keepalive": 0, "handshake_age": None,
                       "rx": 0, "tx": 0, "last_step": "reapply"}}},
        "wg1": {"peers": {
            "B" * 43 + "=": dict(PEER, label="cloud", endpoint="198.51.100.7:443",
                                 endpoint_source="relay", handshake_age=3, rx=1, tx=1,
                                 transport="tcp-relay", relay="relay.example.net:443")}},
    },
    "wans": {"wan": {"up": True, "healthy": True, "active": True, "families": ["ipv4", "ipv6"]},
             "wanb": {"up": True, "healthy": False, "active": False},
             "wanc": {"up": False, "healthy": False, "active": False}},
    "events": [{"time": 1700000000, "text": "wg0 peer office: was wanb, now wan, because failback"},
               {"time": 1700000100, "text": "wg0 peer backup: was up, now recovering, because x"}],
    "version": "0.1.0",
}

DIAGNOSIS = {"worst": "warn", "findings": [
    {"check": "handshake", "status": "ok", "tunnel": "wg0", "peer": "office",
     "summary": "handshake 12 s ago", "evidence": "latest handshake 12 s", "fix": None},
    {"check": "mtu", "status": "warn", "tunnel": "wg0", "peer": None,
     "summary": "tunnel MTU too large for wanb", "evidence": "wg0 1420, wanb 1400",
     "fix": "set option mtu '1340' on wg0"}]}


class Daemon:
    """What the daemon's Handlers answer (the real ones read its snapshot)."""

    def __init__(self):
        self.calls = []

    def status(self):
        self.calls.append(("status",))
        return STATUS

    def reapply(self):
        self.calls.append(("reapply",))
        return {"ok": True}

    def switch(self, wan):
        self.calls.append(("switch", wan))
        if wan not in ("auto", "wan", "wanb", "wanc"):
            return {"error": "unknown WAN %r" % wan}
        return {"ok": True, "wan": wan}

    def diagnose(self):
        self.calls.append(("diagnose",))
        return DIAGNOSIS


@pytest.fixture
def ubusd(monkeypatch):
    monkeypatch.setattr(ubusobj, "LOOP_MS", 20)
    monkeypatch.setattr(ubusobj, "TICK", 0.01)
    return fakebus.Ubusd()


@pytest.fixture
def daemon(ubusd):
    handlers = Daemon()
    svc = ubusobj.UbusService(handlers, backend=fakebus.FakeBus(ubusd), log=lambda m: None,
                              socket_path=ubusd.path)
    assert svc.start()
    assert svc.registered.wait(10)
    handlers.calls.clear()  # the state sent on registration
    yield handlers
    svc.stop()


def run_view(tmp_path, web, sid, writable=True):
    """Run the view in node; its rpc calls go through ``web`` (a Uhttpd)."""
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    proc = subprocess.Popen([NODE, str(harness), VIEW, sid, "rw" if writable else "ro"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    killer = threading.Timer(60, proc.kill)
    killer.start()
    try:
        for line in proc.stdout:
            if line.startswith("RPC "):
                answer = web.post(json.loads(line[4:]))
                proc.stdin.write(json.dumps(answer) + "\n")
                proc.stdin.flush()
            elif line.startswith("OUT "):
                out = json.loads(line[4:])
                break
        else:
            raise AssertionError("the view said nothing: %s" % proc.stderr.read())
    finally:
        killer.cancel()
        proc.stdin.close()
        proc.wait()
    assert "crash" not in out, out.get("crash")
    return out


def no_stack(text):
    assert not re.search(r"\bat \w+ \(|\.js:\d+|RPCError|ubus code|error -?\d{3,}", text), text


@needs_node
def test_view_through_uhttpd_with_full_access(tmp_path, ubusd, daemon):
    fakebus.check_reply("status", STATUS)  # the fixtures themselves follow the contract
    fakebus.check_reply("diagnose", DIAGNOSIS)
    web = fakebus.Uhttpd(ubusd, [ACL])
    out = run_view(tmp_path, web, web.login(write=[GROUP]))
    assert out["polls"] == [5]
    peers, wans = out["first"]["tables"]
    assert [row[:2] for row in peers["rows"]] == [["wg0", "backup"], ["wg0", "office"],
                                                  ["wg1", "cloud"]]
    assert peers["rows"][0][7] == "never" and peers["rows"][0][6] == "off"
    # the transport: direct UDP shows the endpoint, the last rung its relay
    assert [row[4] for row in peers["rows"]] == ["-", "192.0.2.1:51820",
                                                 "TCP relay relay.example.net:443 (198.51.100.7:443)"]
    assert [row[3] for row in wans["rows"]] == ["IPv4 + IPv6", "-", "-"]  # what each WAN carries
    # LuCI's table: every cell carries its column's title for narrow screens
    for t in (peers, wans):
        for titles in t["titles"]:
            assert titles == t["head"], t
    # "Use" only where it does something; the active and the down WAN say so
    assert [row[5] for row in wans["rows"]] == ["in use", "Use", "down"]
    labels = [b["label"] for b in out["buttons"]]
    assert labels == ["Run diagnosis", "Re-apply", "Automatic WAN", "Use"]
    assert not any(b["disabled"] for b in out["buttons"])
    # every call went through uhttpd, which added the session, to the daemon
    assert all(obj == LUCI and args["ubus_rpc_session"] for obj, _, args in web.calls)
    assert daemon.calls.count(("reapply",)) == 2
    assert ("switch", "auto") in daemon.calls and ("switch", "wanb") in daemon.calls
    assert ("switch", "wan") not in daemon.calls
    assert ("diagnose",) in daemon.calls
    assert out["notes"] and {c for c, _ in out["notes"]} == {"info"}
    diag = out["after"]["tables"][2]
    assert diag["head"] == ["Result", "Tunnel / peer", "Finding", "Evidence", "Fix"]
    assert diag["rows"][1] == ["warning", "wg0", "tunnel MTU too large for wanb",
                               "wg0 1420, wanb 1400", "set option mtu '1340' on wg0"]
    assert diag["titles"][1] == diag["head"]
    assert len(out["after"]["tables"][0]["rows"]) == 3  # the poll re-rendered the page


@needs_node
def test_view_for_a_read_only_login(tmp_path, ubusd, daemon):
    """LuCI marks the page read-only (rpcd grants read, not write): no button
    that would be refused; the diagnosis still runs; a stale action is
    refused by rpcd and says so in words."""
    web = fakebus.Uhttpd(ubusd, [ACL])
    out = run_view(tmp_path, web, web.login(read=[GROUP]), writable=False)
    assert [b["label"] for b in out["buttons"]] == ["Run diagnosis"]
    assert "Read-only access" in out["first"]["text"]
    wans = out["first"]["tables"][1]
    assert wans["head"] == ["WAN", "Up", "Healthy", "Carries", "Active"]
    assert all(c[0] in ("status",) or c[0] == "diagnose" for c in daemon.calls)
    assert ("diagnose",) in daemon.calls
    assert [c for c, _ in out["notes"]] == ["danger", "danger"]
    for _, note in out["notes"]:
        assert "read-only access" in note
        no_stack(note)


@needs_node
def test_view_when_wgrouter_is_not_on_the_bus(tmp_path, ubusd):
    """No daemon (or one without python3-ubus): the page says so instead of
    showing empty tables, and Re-apply does not claim a success."""
    web = fakebus.Uhttpd(ubusd, [ACL])
    out = run_view(tmp_path, web, web.login(write=[GROUP]))
    assert out["first"]["tables"] == []
    assert "wgrouter is not running" in out["first"]["text"]
    no_stack(out["first"]["text"])
    assert "No diagnosis from wgrouter: wgrouter is not running" in out["after"]["text"]
    assert out["notes"] and {c for c, _ in out["notes"]} == {"danger"}
    for _, note in out["notes"]:
        no_stack(note)


@needs_node
def test_view_when_the_object_refuses_the_call(tmp_path, ubusd):
    """A daemon whose object does not declare the session (an older
    wgrouter): ubus status 2 is an error in the page, not an empty table."""
    bus = fakebus.FakeBus(ubusd)
    bus.connect(socket_path=ubusd.path)
    bus.add(LUCI, {m: {"method": lambda h, d: h.reply({}), "signature": {}}
                   for m in CONTRACT["methods"]})
    web = fakebus.Uhttpd(ubusd, [ACL])
    out = run_view(tmp_path, web, web.login(write=[GROUP]))
    assert out["first"]["tables"] == []
    assert "do not match" in out["first"]["text"]
    no_stack(out["first"]["text"])
    assert {c for c, _ in out["notes"]} == {"danger"}


@needs_node
def test_daemon_error_reply_is_shown_as_the_daemons_words(tmp_path, ubusd, daemon):
    daemon.switch = lambda wan: {"error": "unknown WAN 'wanb' (configured: wan)"}
    web = fakebus.Uhttpd(ubusd, [ACL])
    out = run_view(tmp_path, web, web.login(write=[GROUP]))
    assert ["danger", "unknown WAN 'wanb' (configured: wan)"] in out["notes"]
