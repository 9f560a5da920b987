"""luci-app-wgrouter: the view's syntax and behaviour, the menu and the ACL."""

import json
import os
import re
import shutil
import subprocess

import pytest

from tests import fakebus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(ROOT, "openwrt-feed", "luci-app-wgrouter")
VIEW = os.path.join(APP, "htdocs/luci-static/resources/view/wgrouter/status.js")
MENU = os.path.join(APP, "root/usr/share/luci/menu.d/luci-app-wgrouter.json")
ACL = os.path.join(APP, "root/usr/share/rpcd/acl.d/luci-app-wgrouter.json")
CONTRACT = fakebus.load_contract()

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")


def load(path):
    with open(path) as f:
        return json.load(f)


def view_source():
    with open(VIEW) as f:
        return f.read()


def declared():
    """{method: params} of the view's rpc.declare calls on object wgrouter."""
    found = {}
    for body in re.findall(r"rpc\.declare\(\{(.*?)\}\);", view_source(), re.S):
        obj = re.search(r"object:\s*'([^']+)'", body).group(1)
        method = re.search(r"method:\s*'([^']+)'", body).group(1)
        params = re.search(r"params:\s*\[([^\]]*)\]", body)
        assert obj == "wgrouter"
        found[method] = re.findall(r"'([^']+)'", params.group(1)) if params else []
    return found


@needs_node
def test_view_syntax():
    r = subprocess.run([NODE, "--check", VIEW], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_view_header():
    lines = view_source().splitlines()
    assert lines[0] == "'use strict';"
    requires = {line.split()[1].rstrip("';") for line in lines if line.startswith("'require ")}
    assert {"view", "rpc", "poll"} <= requires


def test_declared_methods_are_in_contract_with_their_args():
    calls = declared()
    assert set(calls) == {"status", "reapply", "switch"}
    for method, params in calls.items():
        assert method in CONTRACT["methods"]
        assert params == list(CONTRACT["methods"][method]["args"])


def test_acl_shape_and_split():
    acl = load(ACL)
    assert list(acl) == ["luci-app-wgrouter"]
    entry = acl["luci-app-wgrouter"]
    assert isinstance(entry["description"], str)
    read = entry["read"]["ubus"]["wgrouter"]
    write = entry["write"]["ubus"]["wgrouter"]
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


# A minimal stand-in for the LuCI runtime: E() builds plain objects, rpc
# calls resolve with canned replies and are recorded.
HARNESS = r"""
const fs = require('fs');
const src = fs.readFileSync(process.argv[2], 'utf8');
const status = JSON.parse(process.argv[3]);
const out = { declared: [], calls: [], polls: [], notes: [] };

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
  if (children === undefined) children = [];
  if (!Array.isArray(children)) children = [children];
  return { tag: tag, attrs: attrs, children: children };
}
const _ = s => s;
const L = { bind: (fn, self, ...a) => fn.bind(self, ...a) };
const view = { extend: o => o };
const rpc = { declare: function(d) {
  out.declared.push(d);
  return function() {
    const args = Array.from(arguments);
    out.calls.push([d.method, args]);
    return Promise.resolve(d.method === 'status' ? status
      : (d.method === 'switch' ? { ok: true, wan: args[0] } : { ok: true }));
  };
} };
const poll = { add: (fn, interval) => out.polls.push(interval) };
const ui = {
  createHandlerFn: (self, name, ...a) => () => self[name].apply(self, a),
  addNotification: (t, node, cls) => out.notes.push(cls),
};
const dom = { content: () => null };

const v = new Function('view', 'rpc', 'poll', 'ui', 'dom', 'E', '_', 'L', src)(
  view, rpc, poll, ui, dom, E, _, L);

function find(node, pred, acc) {
  acc = acc || [];
  if (node && typeof node === 'object') {
    if (pred(node)) acc.push(node);
    (node.children || []).forEach(c => find(c, pred, acc));
  }
  return acc;
}

(async () => {
  const st = await v.load();
  const page = v.render(st);
  const tables = find(page, n => n.tag === 'table');
  out.rows = tables.map(t => find(t, n => n.tag === 'tr' && n.attrs['class'] === 'tr').length);
  out.cells = tables.length ? find(tables[0], n => n.tag === 'tr' && n.attrs['class'] === 'tr')
    .map(r => r.children.map(c => c.children.map(x => typeof x === 'string' ? x : '').join(''))) : [];
  out.wancells = tables.length > 1 ? find(tables[1], n => n.tag === 'tr' && n.attrs['class'] === 'tr')
    .map(r => r.children.map(c => c.children.map(x => typeof x === 'string' ? x : '').join(''))) : [];
  out.events = find(page, n => n.tag === 'li').length;
  const buttons = find(page, n => n.tag === 'button' && n.attrs.click);
  out.buttons = buttons.length;
  for (const b of buttons) if (b.attrs.disabled === null || b.attrs.disabled === undefined) await b.attrs.click();
  await v.handleReapply();
  const failed = v.renderBody({ error: 'Object not found' });
  out.error = JSON.stringify(failed).includes('Object not found');
  console.log(JSON.stringify(out));
})();
"""

STATUS = {
    "tunnels": {
        "wg0": {"peers": {
            "office": {"state": "up", "wan": "wan", "endpoint": "192.0.2.1:51820",
                       "endpoint_source": "netifd", "keepalive": 25, "handshake_age": 12,
                       "rx": 2048, "tx": 4096, "last_step": None},
            "backup": {"state": "recovering", "wan": "wanb", "endpoint": None,
                       "endpoint_source": None, "keepalive": 0, "handshake_age": None,
                       "rx": 0, "tx": 0, "last_step": "reapply"}}},
        "wg1": {"peers": {
            "B" * 43 + "=": {"label": "cloud", "state": "up", "wan": "wan", "endpoint": "198.51.100.7:51820",
                      "endpoint_source": "dns", "keepalive": 25, "handshake_age": 3,
                      "rx": 1, "tx": 1, "last_step": None}}},
    },
    "wans": {"wan": {"up": True, "healthy": True, "active": True, "families": ["ipv4", "ipv6"]},
             "wanb": {"up": True, "healthy": False, "active": False}},
    "events": [{"time": 1700000000, "text": "wg0 peer office: was wanb, now wan, because failback"},
               {"time": 1700000100, "text": "wg0 peer backup: was up, now recovering, because x"}],
    "version": "0.1.0",
}


@needs_node
def test_view_renders_status_and_calls_methods(tmp_path):
    fakebus.check_reply("status", STATUS)  # the fixture itself follows the contract
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    r = subprocess.run([NODE, str(harness), VIEW, json.dumps(STATUS)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert sorted(d["method"] for d in out["declared"]) == ["reapply", "status", "switch"]
    assert out["polls"] == [5]
    assert out["rows"] == [3, 2]  # one row per peer, one per WAN
    assert [row[:2] for row in out["cells"]] == [["wg0", "backup"], ["wg0", "office"],
                                                 ["wg1", "cloud"]]
    assert out["cells"][0][7] == "never" and out["cells"][0][6] == "off"
    assert out["events"] == 2
    assert [row[3] for row in out["wancells"]] == ["IPv4 + IPv6", "-"]  # what each WAN carries
    calls = [c for c in out["calls"] if c[0] != "status"]
    # the buttons: re-apply, automatic WAN, "Use" on the WAN not active
    assert ["switch", ["auto"]] in calls and ["switch", ["wanb"]] in calls
    assert ["switch", ["wan"]] not in calls  # active WAN: button disabled
    assert calls.count(["reapply", []]) == 2
    assert out["notes"] and set(out["notes"]) == {"info"}
    assert out["error"] is True
