"""luci-app-wgrouter in headless Chromium: the configuration view (and the
status view) on the LuCI stand-in of tests/luci_standin/.

The configuration view must refuse exactly what the daemon refuses, with
the daemon's message: each case below goes through the daemon's loader
(wgrouter.config) and through the view's own validate() of that field, and
both verdicts must be the same."""

import json
import os
import re

import pytest

from tests import fakebus
from tests.luci_standin import browser
from tests.luci_standin import fixtures
from tests.luci_standin import router
from tests.luci_standin import shots
from wgrouter import config
from wgrouter import model
from wgrouter import uci

needs_chromium = pytest.mark.skipif(browser.CHROMIUM is None,
                                    reason="chromium is not installed (apt-get install chromium)")

MENU = os.path.join(fixtures.APP, "root/usr/share/luci/menu.d/luci-app-wgrouter.json")
ACL = os.path.join(fixtures.APP, "root/usr/share/rpcd/acl.d/luci-app-wgrouter.json")

# the fixture's sections that the cases change: section type -> uci.js name
PEER_SID = "cfg%02x%04x" % (next(i for i, s in enumerate(uci.parse(fixtures.WGROUTER, "x")) if s.type == "peer"),
                            0x5e11)
TARGET = {"wgrouter": "main", "wan": "wanb", "tunnel": "wg0", "peer": PEER_SID, "mqtt": "mqtt"}
LISTS = {"track_ip", "dns_server", "endpoint", "relay"}

KEY = "c3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3M="

UFLOAT = ["10", "0", "0.5", "-0.5", "-1", "+5", " 2", "2 ", "0x10", "0x1p3", "0X.8P1", "0x", "1e3", "1e",
          ".5", "5.", ".", "inf", "-Infinity", "NaN", "nan(1)", "2147483647", "2147483648", "abc", "1,5", "٣"]
UINT = ["64", "1", "0", "1024", "1025", "010", "08", "0x10", "0X1f", "+5", " 2", "-1", "1.5", "abc",
        "99999999999"]
IPV4 = ["1.1.1.1", "256.1.1.1", "01.1.1.1", "1.1.1", "1.1.1.1.1", "::1", "a.b.c.d", "1.1.1.1 8.8.8.8",
        "1.1.1.1 x"]
IP = ["1.1.1.1", "2606:4700::1111", "::", "::1", "::ffff:1.2.3.4", "fe80::1%eth0", "fe80::1%", "fe80::1%a%b",
      "1::2::3", "12345::", ":1::2", "1::2:", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7::",
      "::1:2:3:4:5:6:7", "1:2:3:4:5:6:7", "g::1", "dns.google", "1:2:3:4:5:6:1.2.3.4", "::1.2.3",
      "1.2.3.4::", "::01.2.3.4"]
ENDPOINT = ["office.example.net:443", "office.example.net", "office.example.net.", "203.0.113.7:0",
            "203.0.113.7:65535", "203.0.113.7:65536", "[2001:db8::1]:51820", "[2001:db8::1]", "[2001:db8::1",
            "[2001:db8::1]x", "[1.2.3.4]:5", "2001:db8::1", "a:b:c", "10.1:51820", "-bad.example:51820",
            "bad-.example:1", "host:+443", "host:", "host:x", "a..b:1", "under_score.example:1",
            "1.2.3.4:5 6.7.8.9:10", "x" * 64 + ".example:1"]

CASES = (
    [("wgrouter", name, v) for name in ("check_interval", "handshake_timeout", "probe_timeout",
                                        "failback_holddown", "backoff_base", "dns_ttl_min") for v in UFLOAT]
    + [("wgrouter", "events", v) for v in UINT]
    + [("wgrouter", "backoff_max", v) for v in ["1", "2", "0x1", "300", "-0.5"]]
    + [("wgrouter", "dns_ttl_max", v) for v in ["10", "30", "3600", "0"]]
    + [("wan", "keepalive", v) for v in ["25", "0", "65535", "65536", "-3", "-0", "+25", " 25 ", "25s",
                                         "0x19", "1.0", "007", "99999999999999999999"]]
    + [("wan", "table", v) for v in ["1", "0", "4294967295", "4294967296", "main", "100"]]
    + [("wan", "track_ip", v) for v in IPV4]
    + [("wan", "dns_server", v) for v in IP]
    + [("tunnel", "probe", v) for v in ["10.99.0.1", "fd00::1", "x", "10.99.0.1 10.99.0.2", "10.99.0.300"]]
    + [("peer", "endpoint", v) for v in ENDPOINT]
    + [("peer", "relay", v) for v in ENDPOINT]
    + [("peer", "public_key", v) for v in [KEY, KEY[:-1], KEY[:-2] + "==", "short=", KEY[:10] + "!" + KEY[11:]]]
    + [("peer", "probe", v) for v in ["10.99.0.1", "nope", "10.99.0.300"]]
    + [("mqtt", "host", v) for v in ["broker.lan", "192.168.1.2", "::1", "bad host", "-x.lan", "1.2.3",
                                     "a" * 64 + ".lan"]]
    + [("mqtt", "port", v) for v in ["1883", "0", "65536", "+1883", "x"]]
    + [("mqtt", "heartbeat", v) for v in ["300", "0", "-5", "0.5", "inf", "1e999", " 60 ", "0x10", "abc"]]
    + [("mqtt", "queue_max", v) for v in ["100", "0", "100000", "100001"]]
    + [("mqtt", opt, v) for opt in ("prefix", "ha_prefix") for v in ["wgrouter", "a/b", "/a", "a/", "a+b", "a#", "x y"]]
    + [("mqtt", "identity", v) for v in ["router1", "a/b", "a+b", "a#b"]]
)


def with_option(kind, option, value):
    """The fixture's /etc/config/wgrouter with one option of one section set."""
    sections = fixtures.luci_sections(uci.parse(fixtures.WGROUTER, "x"))
    for s in sections:
        if s[".name"] == TARGET[kind]:
            s[option] = [value] if option in LISTS else value
    return fixtures.uci_text(sections)


def daemon_verdict(kind, option, value):
    """True, or the daemon's message for that option (the text after
    "option 'NAME': ")."""
    mark = "option '%s': " % option
    for e in fixtures.daemon_errors(with_option(kind, option, value)):
        if mark in e:
            return e.split(mark, 1)[1]
    return True


def daemon_knows(kind, option):
    return "unknown option" not in str(daemon_verdict(kind, option, "1.1.1.1:443"))


# ------------------------------------------------------------ browser


@pytest.fixture(scope="module")
def chromium():
    if browser.CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with browser.Browser() as b:
        yield b


def open_config(b, write=True, wgrouter_text=fixtures.WGROUTER):
    b.resize(1280, 900)
    b.open(browser.page_html(fixtures.view_source("config"), fixtures.standin(write=write, wgrouter_text=wgrouter_text),
                             "WireGuard uplinks", active=1))


def open_status(b, r, write=True, sid=None, width=1280, mobile=False):
    """The status page, its calls served by ``r`` (a router.Router)
    through fakebus.Uhttpd; ``write``: LuCI marks the page writable."""
    b.resize(width, 900, mobile)
    b.open(browser.page_html(fixtures.view_source("status"), fixtures.standin(write=write, router=r, sid=sid),
                             "WireGuard uplinks"), r)


SETTLE = "new Promise(function(r) { setTimeout(r, 50); })"

MAP = "L.dom.findClassInstance(document.querySelector('.cbi-map'))"

# the option object of a section type, from the form's tree (a grid's
# options have no field on the page until their editor opens)
OPTION = """function(map, type, name) {
    var found = null;
    map.children.forEach(function(s) {
        if (s.sectiontype == type)
            s.children.forEach(function(o) { if (o.option == name) found = o; });
    });
    return found;
}"""


def js_set(widget_id, value):
    """Type a value into a field as a user does (the input event validates)."""
    return ("(function() { var i = document.getElementById(%s); i.value = %s;"
            " i.dispatchEvent(new Event('input', {bubbles: true})); return i.className; })()"
            % (json.dumps(widget_id), json.dumps(value)))


def field(option, sid="main"):
    return "widget.cbid.wgrouter.%s.%s" % (sid, option)


def click(b, selector):
    b.evaluate("document.querySelector(%s).click()" % json.dumps(selector))
    b.evaluate(SETTLE)


# ------------------------------------------------------------ validation


def test_view_refuses_what_the_daemon_refuses_with_its_message(chromium):
    open_config(chromium)
    cases = [c for c in CASES if c[1] != "relay" or daemon_knows("peer", "relay")]
    expected = [daemon_verdict(*c) for c in cases]
    got = chromium.evaluate("""(function(cases) {
        var map = %s, option = %s;
        return cases.map(function(c) {
            var o = option(map, c[0], c[1]);
            return o ? o.validate(c[3], c[2]) : 'no field';
        });
    })(%s)""" % (MAP, OPTION, json.dumps([list(c) + [TARGET[c[0]]] for c in cases])))
    differ = [(c, e, g) for c, e, g in zip(cases, expected, got) if e != g]
    assert not differ, "\n".join("%s: daemon %r, view %r" % d for d in differ)
    # the table holds both verdicts for every kind of field
    for kind, option in {(c[0], c[1]) for c in cases}:
        verdicts = [e for c, e in zip(cases, expected) if (c[0], c[1]) == (kind, option)]
        assert True in verdicts and any(v is not True for v in verdicts), (kind, option)


def test_an_empty_field_is_valid_and_removes_the_option(chromium):
    # LuCI asks the option's validate() about an empty field too; empty
    # removes the option, which the daemon reads as its default
    open_config(chromium)
    got = chromium.evaluate("""(function(cases) {
        var map = %s, option = %s;
        return cases.map(function(c) { return option(map, c[0], c[1]).validate(c[2], ''); });
    })(%s)""" % (MAP, OPTION, json.dumps([[c[0], c[1], TARGET[c[0]]] for c in sorted({(c[0], c[1]) for c in CASES})])))
    assert set(got) == {True}
    cls = chromium.evaluate(js_set(field("check_interval"), ""))
    assert "cbi-input-invalid" not in cls
    assert fixtures.daemon_errors(fixtures.WGROUTER.replace("\toption failback_holddown '120'\n", "")) == []


def test_relay_is_offered_and_checked_like_an_endpoint(chromium):
    open_config(chromium)
    got = chromium.evaluate("""(function(sid) {
        var o = (%s)(%s, 'peer', 'relay');
        return [ o.validate(sid, 'relay.example.net:443'), o.validate(sid, 'relay.example.net:0') ];
    })(%s)""" % (OPTION, MAP, json.dumps(PEER_SID)))
    assert got == [True, "'relay.example.net:0' has a port that is not between 1 and 65535"]


def test_every_option_the_daemon_reads_has_a_field_and_no_other(chromium):
    open_config(chromium)
    offered = chromium.evaluate("""(function() {
        var out = {};
        %s.children.forEach(function(s) {
            out[s.sectiontype] = s.children.map(function(o) { return o.option; });
        });
        return out;
    })()""" % MAP)
    for kind, sid in TARGET.items():
        # the daemon names what it knows when it meets an option it does not
        message = daemon_verdict(kind, "no_such_option", "1")
        known = re.search(r"unknown option \(known: (.*)\)", message).group(1).split(", ")
        assert set(known) <= set(offered[kind]), (kind, sorted(set(known) - set(offered[kind])))
        # list relay: the view offers it before the daemon reads it
        assert set(offered[kind]) <= set(known) | {"relay"}, (kind, sorted(set(offered[kind]) - set(known)))


def test_flag_and_list_defaults_are_the_daemons(chromium):
    open_config(chromium)
    defaults = chromium.evaluate("""(function() {
        var out = {};
        %s.children.forEach(function(s) {
            s.children.forEach(function(o) {
                if (o.default != null) out[s.sectiontype + '.' + o.option] = o.default;
                if (o.placeholder != null) out[s.sectiontype + '.' + o.option + '#'] = o.placeholder;
            });
        });
        return out;
    })()""" % MAP)

    def uci_value(v):
        return ("1" if v else "0") if isinstance(v, bool) else config._number(v) if isinstance(v, float) else str(v)

    for f in __import__("dataclasses").fields(model.Settings):
        shown = defaults.get("wgrouter.%s" % f.name, defaults.get("wgrouter.%s#" % f.name))
        assert shown == uci_value(f.default), f.name
    for f in __import__("dataclasses").fields(model.MqttSettings):
        shown = defaults.get("mqtt.%s" % f.name, defaults.get("mqtt.%s#" % f.name))
        if f.default is not None:
            assert shown == uci_value(f.default), f.name
    assert defaults["tunnel.enabled"] == "1"


# ------------------------------------------------------------ the page


def test_config_page_shows_the_configuration(chromium):
    open_config(chromium)
    page = chromium.evaluate("""(function() {
        function rows(type) {
            return Array.prototype.map.call(document.querySelectorAll('#cbi-wgrouter-' + type + ' tr[data-sid]'),
                function(tr) { return tr.getAttribute('data-sid'); });
        }
        var titles = Array.prototype.map.call(document.querySelectorAll('#cbi-wgrouter-wan tr[data-sid="wanb"] td'),
            function(td) { return [td.getAttribute('data-title'), td.textContent]; });
        return { wans: rows('wan'), tunnels: rows('tunnel'), peers: rows('peer'),
                 holddown: document.getElementById('widget.cbid.wgrouter.main.failback_holddown').value,
                 check: document.getElementById('widget.cbid.wgrouter.main.check_interval').placeholder,
                 host: document.getElementById('widget.cbid.wgrouter.mqtt.host').value,
                 cells: titles, apply: !document.getElementById('save-apply').disabled,
                 ca_hidden: document.getElementById('cbi-wgrouter-mqtt-ca_file').classList.contains('hidden') };
    })()""")
    assert page["wans"] == ["wan", "wanb"]
    assert page["tunnels"] == ["wg0", "wg1"]
    assert page["peers"] == [PEER_SID]
    assert page["holddown"] == "120" and page["check"] == "1.5" and page["host"] == "broker.lan"
    # each cell carries its column's title, for the theme's narrow layout
    assert ["Keepalive (s)", "25"] in page["cells"] and ["Track IPs", "9.9.9.9"] in page["cells"]
    assert page["apply"] and page["ca_hidden"]


def test_invalid_value_is_refused_with_the_daemons_message_and_nothing_saved(chromium):
    open_config(chromium)
    daemon = daemon_verdict("wgrouter", "events", "0")
    assert daemon == "'0' is not an integer between 1 and 1024"
    cls = chromium.evaluate(js_set(field("events"), "0"))
    assert "cbi-input-invalid" in cls
    assert chromium.evaluate("document.getElementById(%s).getAttribute('data-tooltip')" % json.dumps(field("events"))) == daemon
    click(chromium, "#save-apply")
    record = chromium.evaluate("RECORD")
    # nothing is sent (uci save) and nothing applied; the value not even locally
    assert not [c for c in record["uci"] if c[0] == "save" or c[3:4] == ["events"]]
    assert record["applied"] == []
    errors = [u[1] for u in record["ui"] if u[0] == "save-error"]
    assert errors and daemon in errors[0]
    # in a WAN's editor the same: the modal stays, nothing is written
    click(chromium, 'tr[data-sid="wanb"] .cbi-button-edit')
    chromium.evaluate(js_set(field("keepalive", "wanb"), "-3"))
    assert chromium.evaluate("document.getElementById(%s).getAttribute('data-tooltip')"
                             % json.dumps(field("keepalive", "wanb"))) == daemon_verdict("wan", "keepalive", "-3")
    click(chromium, "#modal_overlay .cbi-button-positive")
    record = chromium.evaluate("RECORD")
    assert not [c for c in record["uci"] if c[0] == "set" and c[3] == "keepalive"]
    assert chromium.evaluate("document.body.classList.contains('modal-overlay-active')")


def test_edit_reorder_save_and_apply(chromium):
    open_config(chromium)
    chromium.evaluate(js_set(field("check_interval"), "5"))
    chromium.evaluate(js_set(field("failback_holddown"), ""))
    # a track IP for the primary, in its editor
    click(chromium, 'tr[data-sid="wan"] .cbi-button-edit')
    chromium.evaluate(js_set(field("track_ip", "wan"), "9.9.9.9"))
    chromium.evaluate("L.dom.findClassInstance(document.getElementById(%s)) || 0" % json.dumps(field("track_ip", "wan")))
    chromium.evaluate("""(function() {
        var add = document.getElementById(%s);
        add.parentNode.querySelector('.cbi-button-add').click();
    })()""" % json.dumps(field("track_ip", "wan")))
    click(chromium, "#modal_overlay .cbi-button-positive")
    # drag the backup above the primary, by its handle
    chromium.evaluate("""(function() {
        var from = document.querySelector('#cbi-wgrouter-wan tr[data-sid="wanb"]'),
            to = document.querySelector('#cbi-wgrouter-wan tr[data-sid="wan"]'),
            dt = new DataTransfer(), r = to.getBoundingClientRect();
        from.querySelector('.drag-handle').dispatchEvent(new MouseEvent('mousedown', {bubbles: true}));
        from.dispatchEvent(new DragEvent('dragstart', {bubbles: true, dataTransfer: dt}));
        to.dispatchEvent(new DragEvent('dragenter', {bubbles: true, dataTransfer: dt, clientY: r.top + 2}));
        to.dispatchEvent(new DragEvent('dragover', {bubbles: true, cancelable: true, dataTransfer: dt, clientY: r.top + 2}));
        to.dispatchEvent(new DragEvent('drop', {bubbles: true, cancelable: true, dataTransfer: dt, clientY: r.top + 2}));
    })()""")
    assert chromium.evaluate("""Array.prototype.map.call(document.querySelectorAll('#cbi-wgrouter-wan tr[data-sid]'),
        function(tr) { return tr.getAttribute('data-sid'); })""") == ["wanb", "wan"]
    click(chromium, "#save-apply")
    record = chromium.evaluate("RECORD")
    calls = record["uci"]
    assert ["set", "wgrouter", "wan", "track_ip", ["1.1.1.1", "8.8.8.8", "9.9.9.9"]] in calls
    assert ["set", "wgrouter", "main", "check_interval", "5"] in calls
    assert ["unset", "wgrouter", "main", "failback_holddown"] in calls
    assert ["move", "wgrouter", "wanb", "wan", False] in calls
    order = [c for c in calls if c[0] == "order"]
    assert order and order[-1][2].index("wanb") < order[-1][2].index("wan")
    assert calls.index(order[-1]) < len(calls) - 1 and calls[calls.index(order[-1]) + 1] == ["save"]
    # Save & Apply: saved, then applied with rollback (rpcd's uci apply
    # commits, procd's config.change trigger reloads wgrouter)
    assert len(record["applied"]) == 1 and record["applied"][0]["checked"] is True
    committed = record["applied"][0]["configs"]["wgrouter"]
    text = fixtures.uci_text(committed)
    assert fixtures.daemon_errors(text) == []
    loaded = config.from_sections(fixtures.network_sections(), uci.parse(text, "x"))[0]
    assert [w.name for w in loaded.wans] == ["wanb", "wan"]
    assert loaded.settings.check_interval == 5.0 and loaded.settings.failback_holddown == 60.0
    assert loaded.wans[1].track_ips == ("1.1.1.1", "8.8.8.8", "9.9.9.9")
    assert not [u for u in record["ui"] if u[0] == "save-error"]


def test_read_only_user_cannot_save(chromium):
    open_config(chromium, write=False)
    state = chromium.evaluate("""(function() {
        return { apply: document.getElementById('save-apply').disabled,
                 inputs: Array.prototype.filter.call(document.querySelectorAll('.cbi-map input'),
                     function(i) { return !i.disabled; }).length,
                 add: document.querySelectorAll('.cbi-map .cbi-button-add, .cbi-map .cbi-button-remove, .cbi-map .drag-handle').length };
    })()""")
    assert state == {"apply": True, "inputs": 0, "add": 0}


# ------------------------------------------------------------ menu, ACL


def test_menu_has_the_configuration_beside_the_status():
    with open(MENU) as f:
        menu = json.load(f)
    status = menu["admin/status/wgrouter"]
    children = {k: v for k, v in menu.items() if k.startswith("admin/status/wgrouter/")}
    views = {v["action"]["path"] for v in children.values()}
    assert views == {"wgrouter/status", "wgrouter/config"}
    assert status["action"]["path"] == "wgrouter/status"
    for entry in children.values():
        path = os.path.join(fixtures.APP, "htdocs/luci-static/resources/view", entry["action"]["path"] + ".js")
        assert os.path.isfile(path)
    order = sorted(children.values(), key=lambda e: e["order"])
    assert order[0]["action"]["path"] == "wgrouter/status"


def test_package_says_it_configures_too():
    """The luci-app's description, in the feed Makefile and in the ipk that
    `make ipk` builds without the SDK: one text, naming both pages."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("mkipk", os.path.join(fixtures.ROOT, "openwrt-feed", "mkipk.py"))
    mkipk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mkipk)
    with open(os.path.join(fixtures.APP, "Makefile")) as f:
        fields = dict(re.findall(r"^(LUCI_\w+):=(.*)$", f.read(), re.M))
    ipk = " ".join(mkipk.DESCRIPTIONS["luci-app-wgrouter"].split())
    assert ipk == fields["LUCI_DESCRIPTION"]
    for text in (ipk, fields["LUCI_TITLE"]):
        assert "configuration" in text.lower() and "status page" not in text.lower()


def test_acl_grants_uci_read_and_write_of_wgrouter_only():
    with open(ACL) as f:
        acl = json.load(f)["luci-app-wgrouter"]
    assert acl["read"]["uci"] == ["wgrouter"]
    assert acl["write"]["uci"] == ["wgrouter"]


def test_network_is_read_only_where_the_acl_allows_it(chromium):
    """The ACL grants no read of /etc/config/network (it holds the private
    keys): where rpcd refuses it the page still works, without suggestions."""
    b = chromium
    b.resize(1280, 900)
    standin = fixtures.standin()
    standin["uci"].pop("network")
    b.open(browser.page_html(fixtures.view_source("config"), standin, "WireGuard uplinks", active=1))
    assert b.evaluate("document.querySelectorAll('#cbi-wgrouter-wan tr[data-sid]').length") == 2


# ------------------------------------------------------------ status page

LUCI_OBJECT = fakebus.load_contract()["luci_object"]["name"]


@pytest.fixture
def served():
    with router.Router(fixtures.handlers()) as r:
        yield r


def notes(b):
    return [u[1:] for u in b.evaluate("RECORD.ui") if u[0] == "notification"]


def no_stack(text):
    assert not re.search(r"\bat \w+ \(|\.js:\d+|RPCError|ubus code|error -?\d{3,}|file://|http://", text), text


def test_status_page_loads_the_contract_snapshot_and_calls_the_methods(chromium, served):
    open_status(chromium, served)
    text = chromium.evaluate("document.getElementById('view').textContent")
    for word in ("wireguard_wg0", "203.0.113.10:51820", "recovering", "reresolve", "17.39 MiB",
                 "wg1: was wan, now wanb"):
        assert word in text
    click(chromium, ".cbi-page-actions .cbi-button-apply")
    # "Use" only where it does something: the active WAN says "in use"
    cells = chromium.evaluate("""Array.prototype.map.call(document.querySelectorAll('#wgrouter-status td[data-title="Switch"]'),
        function(td) { return td.textContent; })""")
    assert cells == ["in use", "Use"]
    click(chromium, '#wgrouter-status td[data-title="Switch"] button')
    click(chromium, ".cbi-page-actions .cbi-button-reset")
    chromium.evaluate("L.standin.poll.step()")
    sid = chromium.evaluate("L.env.sessionid")
    assert chromium.evaluate("RECORD.rpc") == [[LUCI_OBJECT, "status", {}], [LUCI_OBJECT, "reapply", {}],
                                               [LUCI_OBJECT, "switch", {"wan": "wanb"}],
                                               [LUCI_OBJECT, "switch", {"wan": "auto"}], [LUCI_OBJECT, "status", {}]]
    # through uhttpd, which added the session, to the daemon's handlers
    assert [c[:2] for c in served.web.calls] == [(LUCI_OBJECT, m) for m in
                                                 ("status", "reapply", "switch", "switch", "status")]
    assert all(args["ubus_rpc_session"] == sid for _, _, args in served.web.calls)
    assert served.handlers.calls == [("status",), ("reapply",), ("switch", "wanb"), ("switch", "auto"), ("status",)]
    assert sorted(n[1] for n in notes(chromium)) == ["Automatic WAN choice restored", "Re-applying all paths",
                                                     "Switching to wanb"]
    assert {n[0] for n in notes(chromium)} == {"info"}
    assert chromium.evaluate("RECORD.poll") == [5]


def test_status_tables_label_every_cell(chromium, served):
    open_status(chromium, served)
    chromium.evaluate("VIEW.handleDiagnose()")
    tables = chromium.evaluate("""Array.prototype.map.call(document.querySelectorAll('#view table'), function(t) {
        var head = Array.prototype.map.call(t.querySelectorAll('tr.table-titles th'), function(th) { return th.textContent; });
        return { head: head, rows: Array.prototype.map.call(t.querySelectorAll('tr:not(.table-titles)'), function(tr) {
            return Array.prototype.map.call(tr.querySelectorAll('td'), function(td) { return td.getAttribute('data-title'); });
        }) };
    })""")
    assert len(tables) == 3  # peers, WANs, diagnosis
    for t in tables:
        assert t["rows"]
        for titles in t["rows"]:
            assert titles == t["head"], t
    # at phone width the theme hides the title row and each value shows its label
    open_status(chromium, served, width=390, mobile=True)
    chromium.evaluate("VIEW.handleDiagnose()")
    assert shots.unlabelled(chromium) == []
    # the check finds a table built without LuCI's table (no data-title)
    chromium.evaluate("""document.getElementById('wgrouter-status').appendChild(E('table', { 'class': 'table' }, [
        E('tr', { 'class': 'tr table-titles' }, [ E('th', { 'class': 'th' }, 'WAN') ]),
        E('tr', { 'class': 'tr' }, [ E('td', { 'class': 'td' }, 'wan') ]) ]))""")
    assert shots.unlabelled(chromium) == ["WAN = wan (shown: none)"]


def test_status_page_for_a_read_only_login(chromium, served):
    """LuCI marks the page read-only: no action the login may not take; the
    diagnosis still runs."""
    open_status(chromium, served, write=False)
    buttons = chromium.evaluate("""Array.prototype.map.call(document.querySelectorAll('#view button'),
        function(b) { return b.textContent; })""")
    assert buttons == ["Run diagnosis"]
    heads = chromium.evaluate("""Array.prototype.map.call(document.querySelectorAll('#wgrouter-status th'),
        function(th) { return th.textContent; })""")
    assert "Switch" not in heads
    assert "Read-only access" in chromium.evaluate("document.getElementById('view').textContent")
    click(chromium, ".cbi-page-actions .cbi-button-neutral")
    assert served.handlers.calls == [("status",), ("diagnose",)]
    assert chromium.evaluate("document.querySelectorAll('#wgrouter-diagnosis tr:not(.table-titles)').length") == 3


def test_status_page_shows_a_refused_call_in_plain_words(chromium, served):
    """A page from before the login lost write access: rpcd refuses the
    call (-32002 from uhttpd), and the page says why, without a stack."""
    open_status(chromium, served, write=True, sid=served.login(write=False))
    click(chromium, ".cbi-page-actions .cbi-button-apply")
    click(chromium, '#wgrouter-status td[data-title="Switch"] button')
    got = notes(chromium)
    assert [n[0] for n in got] == ["danger", "danger"]
    for _, text in got:
        assert "read-only access to wgrouter" in text
        no_stack(text)
    assert ("reapply",) not in served.handlers.calls
    # the stand-in's rpc.js error does carry the stack, as real LuCI's does
    raw = chromium.evaluate("""L.standin.rpc.declare({ object: %s, method: 'reapply', reject: true })()
        .then(function() { return 'resolved'; }, function(e) { return e.message; })""" % json.dumps(LUCI_OBJECT))
    assert "failed with error -32002: Access denied\n" in raw


def test_status_page_when_the_daemon_does_not_take_lucis_calls(chromium):
    """An object luci.wgrouter without the session argument (ubus status 2
    for every call uhttpd forwards), and no wgrouter on the bus at all."""
    with router.Router(legacy=True) as r:
        open_status(chromium, r)
        text = chromium.evaluate("document.getElementById('view').textContent")
        assert "the page and the daemon do not match" in text
        no_stack(text)
        assert chromium.evaluate("document.querySelectorAll('#wgrouter-status table').length") == 0
    with router.Router() as r:
        open_status(chromium, r)
        click(chromium, ".cbi-page-actions .cbi-button-apply")
        click(chromium, ".cbi-page-actions .cbi-button-neutral")
        text = chromium.evaluate("document.getElementById('view').textContent")
        assert "wgrouter is not running" in text and "No diagnosis from wgrouter" in text
        no_stack(text)
        assert [n[0] for n in notes(chromium)] == ["danger"]
        assert "Re-applying" not in chromium.evaluate("document.getElementById('maincontent').textContent")


def test_diagnose_button_lists_the_findings(chromium, served):
    open_status(chromium, served)
    assert chromium.evaluate("document.querySelectorAll('#wgrouter-diagnosis table').length") == 0
    click(chromium, ".cbi-page-actions .cbi-button-neutral")
    rows = chromium.evaluate("""Array.prototype.map.call(document.querySelectorAll('#wgrouter-diagnosis tr:not(.table-titles)'),
        function(tr) { return Array.prototype.map.call(tr.querySelectorAll('td'), function(td) { return td.textContent; }); })""")
    expected = []
    for f in fixtures.DIAGNOSIS["findings"]:
        where = " / ".join(x for x in (f["tunnel"], f["peer"]) if x is not None)
        expected.append([{"ok": "ok", "warn": "warning"}[f["status"]], where or "-", f["summary"], f["evidence"],
                         f["fix"] or "-"])
    assert rows == expected
    # a diagnosis still running says so, and a second press brings the report
    served.handlers.diagnosis = {"error": "diagnose still running (5s so far); call again for its report"}
    click(chromium, ".cbi-page-actions .cbi-button-neutral")
    assert "still running" in chromium.evaluate("document.getElementById('wgrouter-diagnosis').textContent")


# ------------------------------------------------------------ WAN timeline

TIMELINE = """Array.prototype.map.call(document.querySelectorAll('.wgrouter-timeline-row'), function(row) {
    var bar = row.querySelector('.wgrouter-timeline-bar').getBoundingClientRect().width;
    return [ row.getAttribute('data-tunnel'), Array.prototype.map.call(row.querySelectorAll('.wgrouter-timeline-seg'),
        function(s) { return [ s.getAttribute('data-what'), +s.getAttribute('data-from'), +s.getAttribute('data-to'),
                               s.getBoundingClientRect().width / bar ]; }) ];
})"""

# what the fixture's history says, read by hand: wan until wan went down 40
# min ago, wanb until the failback 23 min ago, then wan (wg0 down for a
# minute 15 min ago; wg1 on wanb again for the last 7 min)
HOUR = {
    "wg0": [["wan", -3600, -2400], ["wanb", -2400, -1380], ["wan", -1380, -900], ["down", -900, -840],
            ["wan", -840, 0]],
    "wg1": [["wan", -3600, -2400], ["wanb", -2400, -1380], ["wan", -1380, -420], ["wanb", -420, 0]],
}


def timeline(b):
    got = {}
    for tunnel, segs in b.evaluate(TIMELINE):
        got[tunnel] = [s[:3] for s in segs]
        for what, start, end, share in segs:
            # each bar is as long as the time it stands for (2 px at least)
            assert abs(share - (end - start) / 3600.0) < 0.01, (tunnel, what, share)
    return got


def test_timeline_shows_the_wan_of_each_tunnel_over_the_hour(chromium, served):
    open_status(chromium, served)
    assert timeline(chromium) == HOUR
    legend = chromium.evaluate("document.querySelector('.wgrouter-timeline').textContent")
    for word in ("wan", "wanb", "down", "not known", "1 h ago", "now"):
        assert word in legend


def test_timeline_reaches_back_only_as_far_as_the_events(chromium, served):
    # a ring that holds the last quarter of an hour only: before its oldest
    # event nothing is known; wg1's first move there says where it was
    served.handlers.snapshot = fixtures.status_reply(history=[h for h in fixtures.HISTORY if h[0] <= 900])
    open_status(chromium, served)
    assert timeline(chromium) == {
        "wg0": [["", -3600, -900], ["down", -900, -840], ["wan", -840, 0]],
        "wg1": [["", -3600, -900], ["wan", -900, -420], ["wanb", -420, 0]],
    }


def test_timeline_reads_the_text_where_an_event_has_no_fields(chromium, served):
    st = fixtures.status_reply()
    st["events"] = [{"time": e["time"], "text": e["text"]} for e in st["events"]]
    fakebus.check_reply("status", st)
    served.handlers.snapshot = st
    open_status(chromium, served)
    assert timeline(chromium) == HOUR


def test_timeline_follows_the_poll(chromium, served):
    open_status(chromium, served)
    # nothing happened: a tunnel with no transition in the ring stays on its WAN
    st = fixtures.status_reply(history=[(5400, model.Transition("wg0", None, "none", "wanb", "x"))])
    served.handlers.snapshot = st
    chromium.evaluate("L.standin.poll.step()")
    assert timeline(chromium) == {"wg0": [["wanb", -3600, 0]], "wg1": [["wanb", -3600, 0]]}
