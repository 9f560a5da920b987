import dataclasses
import json
import selectors
import time

import pytest

from tests.fakerunner import FakeRunner, NetNS, netns_unavailable
from wgrouter import kernel
from wgrouter import model
from wgrouter import shell
from wgrouter import wg

# answers for no device: peers are read with `wg show all dump`, which the fake answers
FORKED = wg.Client(())

KEY = "hIg3Yh7Q5Xk0/7D1b3Nc3xY6B1m8Qk1B0w4ePf1eW1I="
KEY2 = "2Bz9Hc4m5n6o7p8q9r0s1t2u3v4w5x6y7z8A9B0C1D0="
PEER = model.Peer("wg0", "peer1", KEY, (model.Endpoint("vpn.example.net"),), ("10.9.0.0/24",), 25, probe="10.9.0.1")
CONFIG = model.Config(
    model.Settings(),
    (model.Wan("wan", "eth1", track_ips=("1.1.1.1", "8.8.8.8")), model.Wan("wanb", "wwan0")),
    (model.Tunnel("wg0", (PEER,), probe_source="10.9.0.2"),),
)
DUMP = "\n".join([
    "wg0\tpriv\t%s\t51820\toff" % KEY2,
    "wg0\t%s\t(none)\t198.51.100.7:51820\t10.9.0.0/24\t1700000000\t10\t20\t25" % KEY,
    "other\tpriv\t%s\t51821\toff" % KEY,
    "other\t%s\t(none)\t(none)\t10.7.0.0/24\t0\t0\t0\toff" % KEY2,
    "",
])


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []

    def fake_observe(wans, mwan3=False):
        calls.append((wans, mwan3))
        return {w.name: model.WanState(w.name, w.device, True, "10.0.0.%d" % len(calls)) for w in wans}

    monkeypatch.setattr(kernel, "observe_wans", fake_observe)
    return calls


@pytest.fixture
def sh(tmp_path):
    fake = FakeRunner()
    s = shell.Shell(CONFIG, runner=fake, root=str(tmp_path), wg=FORKED, icmp=False)
    yield s, fake
    s.stop()


def loop(s, selector, limit=10.0):
    """Run the selectors loop the way the daemon does until no child is left."""
    events = []
    end = time.monotonic() + limit
    while s.children:
        assert time.monotonic() < end, "children never finished"
        deadline = s.deadline()
        timeout = max(0.0, deadline - s.clock()) if deadline is not None else None
        for key, _ in selector.select(timeout):
            events.extend(key.data())
        events.extend(s.expire(s.clock()))
    return events


def unix_stamps(s, peers):
    """``peers`` from ``s.observe()`` with the handshakes back on unix time
    (whole seconds, as the kernel gives them): the shell puts them on its clock."""
    return {k: dataclasses.replace(v, latest_handshake=round(v.latest_handshake + s.wall() - s.clock())
                                   if v.latest_handshake else 0) for k, v in peers.items()}


def test_observe_dumps_kernel_only_on_change(sh, kernel_calls):
    s, fake = sh
    fake.on(["wg", "show", "all", "dump"], out=DUMP)
    wans, peers, tunnels = s.observe(False)  # first call always dumps
    assert len(kernel_calls) == 1 and kernel_calls[0] == (CONFIG.wans, False)
    assert wans["wan"].gateway == "10.0.0.1"
    assert unix_stamps(s, peers) == {("wg0", KEY): model.PeerStats("198.51.100.7:51820", 1700000000, 10, 20, 25)}
    assert tunnels == frozenset({"wg0"})
    wans2, _, _ = s.observe(False)
    assert len(kernel_calls) == 1 and wans2 is wans
    wans3, _, _ = s.observe(True)
    assert len(kernel_calls) == 2 and wans3["wan"].gateway == "10.0.0.2"
    # the steady-state check spawns exactly one process per call
    assert fake.calls == [["wg", "show", "all", "dump"]] * 3


@pytest.mark.parametrize(
    "rule,error",
    [
        ({"rc": 1, "err": "Unable to access interface: Operation not permitted"}, "Operation not permitted"),
        ({"missing": True}, "not found"),
        ({"out": "garbage line\n"}, "unexpected line"),
    ],
)
def test_observe_wg_failure(sh, kernel_calls, rule, error):
    s, fake = sh
    fake.on(["wg"], **rule)
    wans, peers, tunnels = s.observe(True)
    assert set(wans) == {"wan", "wanb"}
    assert peers == {} and tunnels is None  # unknown, not "none present"
    assert error in s.wg_error


def test_execute_apply_path(sh):
    s, fake = sh
    action = model.ApplyPath("wg0", KEY, "wan", "eth1", "10.1.0.1", "198.51.100.7", 51820, 25)
    kicks = []
    s.applier.kick = lambda dev, target: kicks.append((dev, target))
    events = s.execute(action, selectors.DefaultSelector())
    assert [e.kind for e in events] == ["applied"] and events[0].data["ok"]
    assert fake.calls[0][:4] == ["ip", "route", "replace", "198.51.100.7/32"]
    assert kicks == [("wg0", "10.9.0.1")]
    assert s.applier.state.path.startswith(s.root)


def test_execute_transition_and_unknown(sh):
    s, fake = sh
    assert s.execute(model.Transition("wg0", "peer1", "wan", "wanb", "handshake stale"), None) == []
    with pytest.raises(shell.UnknownAction):
        s.execute(object(), None)
    assert fake.calls == []


@pytest.mark.parametrize(
    "source,rc,ok",
    [("10.9.0.2", 0, True), (None, 0, True), ("10.9.0.2", 1, False)],
)
def test_probe(sh, source, rc, ok):
    s, fake = sh
    fake.on(["ping"], rc=rc, err="" if ok else "1 packets transmitted, 0 received")
    sel = selectors.DefaultSelector()
    assert s.execute(model.Probe("wg0", KEY, "10.9.0.1", source, 1.5), sel) == []
    assert fake.spawned == [["ping", "-c", "1", "-W", "2", "-I", source or "wg0", "10.9.0.1"]]
    assert s.deadline() is not None
    events = loop(s, sel)
    assert [(e.kind, e.data["tunnel"], e.data["peer"], e.data["ok"]) for e in events] == [("probe", "wg0", KEY, ok)]
    assert sel.get_map() == {} and s.deadline() is None


def test_probe_wan_first_answer_wins_and_cancels_the_rest(sh):
    s, fake = sh
    fake.on(["ping", "-c", "1", "-W", "1", "-I", "eth1", "1.1.1.1"], rc=0, delay=0)
    fake.on(["ping", "-c", "1", "-W", "1", "-I", "eth1", "8.8.8.8"], rc=0, delay=30)
    sel = selectors.DefaultSelector()
    assert s.execute(model.ProbeWan("wan", "eth1", ("1.1.1.1", "8.8.8.8"), 1.0), sel) == []
    assert len(s.children) == 2
    procs = [c.proc for c in s.children]
    events = loop(s, sel)
    assert events == [model.Event("wan_probe", {"wan": "wan", "ok": True, "family": 4})]
    assert all(p.poll() is not None for p in procs)  # reaped, the slow one killed
    assert sel.get_map() == {}


def test_probe_wan_all_fail_reports_once(sh):
    s, fake = sh
    fake.on(["ping"], rc=1, err="no reply")
    sel = selectors.DefaultSelector()
    s.execute(model.ProbeWan("wan", "eth1", ("1.1.1.1", "8.8.8.8"), 1.0), sel)
    events = loop(s, sel)
    assert len(events) == 1 and events[0].kind == "wan_probe"
    assert events[0].data["ok"] is False and events[0].data["wan"] == "wan"
    assert "1.1.1.1: no reply" in events[0].data["error"] and "8.8.8.8: no reply" in events[0].data["error"]


def test_probe_wan_without_targets_or_ping(sh):
    s, fake = sh
    sel = selectors.DefaultSelector()
    events = s.execute(model.ProbeWan("wanb", "wwan0", (), 1.0), sel)
    assert [(e.kind, e.data["ok"]) for e in events] == [("wan_probe", False)]
    fake.on(["ping"], missing=True)
    events = s.execute(model.ProbeWan("wan", "eth1", ("1.1.1.1",), 1.0), sel)
    assert [(e.kind, e.data["ok"]) for e in events] == [("wan_probe", False)]
    events = s.execute(model.Probe("wg0", KEY, "10.9.0.1", None, 1.0), sel)
    assert [(e.kind, e.data["ok"]) for e in events] == [("probe", False)]
    assert s.children == []


def test_expire_kills_overdue_children(tmp_path):
    fake = FakeRunner().on(["ping"], rc=0, delay=30)
    s = shell.Shell(CONFIG, runner=fake, root=str(tmp_path), clock=time.monotonic, wg=FORKED, icmp=False)
    sel = selectors.DefaultSelector()
    s.execute(model.Probe("wg0", KEY, "10.9.0.1", None, 1.0), sel)
    s.execute(model.ProbeWan("wan", "eth1", ("1.1.1.1", "8.8.8.8"), 3.0), sel)
    procs = [c.proc for c in s.children]
    first = s.deadline()
    assert first == min(c.deadline for c in s.children)
    assert s.expire(first - 0.5) == []
    assert len(s.children) == 3
    events = s.expire(first)
    assert [(e.kind, e.data["ok"]) for e in events] == [("probe", False)]
    assert len(s.children) == 2
    events = s.expire(first + 10)
    assert [(e.kind, e.data["ok"]) for e in events] == [("wan_probe", False)]
    assert s.children == [] and sel.get_map() == {} and s.deadline() is None
    assert all(p.poll() is not None for p in procs)


def test_deadlines_survive_a_wall_clock_step(tmp_path):
    wall = [1e9]  # a router booting at its build date, NTP steps later
    fake = FakeRunner().on(["ping"], rc=0, delay=30)
    s = shell.Shell(CONFIG, runner=fake, root=str(tmp_path), clock=lambda: wall[0] + time.monotonic(), wg=FORKED, icmp=False)
    sel = selectors.DefaultSelector()
    s.execute(model.Probe("wg0", KEY, "10.9.0.1", None, 1.0), sel)
    before = s.deadline()
    assert before > 1e9
    wall[0] += 86400 * 365  # NTP step forward by a year
    assert s.expire(s.clock()) == []  # not killed early
    assert s.deadline() > before + 86400 * 364
    events = s.expire(s.deadline())
    assert [(e.kind, e.data["ok"]) for e in events] == [("probe", False)]
    s.stop()


def test_reconfigure_and_cleanup(sh, kernel_calls):
    s, fake = sh
    s.observe(False)
    s.observe(False)
    assert len(kernel_calls) == 1
    peer = model.Peer("wg5", "p5", KEY2, (), ("10.5.0.0/24",), 0)
    settings = model.Settings(conntrack_flush=False)
    s.reconfigure(model.Config(settings, CONFIG.wans, (model.Tunnel("wg5", (peer,)),)))
    s.observe(False)
    assert len(kernel_calls) == 2  # dumped again after a reload
    assert s.tunnel_names == frozenset({"wg5"})
    kicks = []
    s.applier.kick = lambda dev, target: kicks.append((dev, target))
    s.execute(model.ApplyPath("wg5", KEY2, "wan", "eth1", "10.1.0.1", "198.51.100.7", 51820, 0), None)
    assert kicks == [("wg5", "10.5.0.1")] and fake.commands("conntrack") == []
    fake.calls.clear()
    assert s.cleanup() == []
    assert fake.calls == [["ip", "route", "del", "198.51.100.7/32", "proto", "119"]]


def test_state_path_option(tmp_path):
    fake = FakeRunner()
    s = shell.Shell(CONFIG, runner=fake, root=str(tmp_path), state_path=str(tmp_path / "applied.json"), wg=FORKED, icmp=False)
    s.applier.kick = None
    s.execute(model.ApplyPath("wg0", KEY, "wan", "eth1", "10.1.0.1", "198.51.100.7", 51820, 0), None)
    with open(tmp_path / "applied.json") as f:
        assert "198.51.100.7 main" in json.load(f)["routes"]


def test_stop_kills_children(sh):
    s, fake = sh
    fake.on(["ping"], delay=30)
    sel = selectors.DefaultSelector()
    s.execute(model.Probe("wg0", KEY, "10.9.0.1", None, 1.0), sel)
    proc = s.children[0].proc
    s.stop()
    assert proc.poll() is not None and s.children == [] and sel.get_map() == {}


LAB_CODE = r"""
import json, selectors, time
from wgrouter import model, runner, shell
class NoSpawn(runner.Runner):
    def spawn(self, argv, cwd=None):
        raise AssertionError("forked %r" % (argv,))
config = model.Config(model.Settings(), (model.Wan("wan", "w1"), model.Wan("wanb", "w2")),
                      (model.Tunnel("nosuchwg", ()),))
# in process, nothing spawned; or with `ping` forked
s = shell.Shell(config, root=ROOT, icmp=ICMP, runner=NoSpawn() if ICMP else None)
sel = selectors.DefaultSelector()
out = {}
def run(action):
    events = list(s.execute(action, sel))
    while s.children:
        d = s.deadline()
        for key, _ in sel.select(max(0, d - s.clock())):
            events += key.data()
        events += s.expire(s.clock())
    return [[e.kind, e.data["ok"]] for e in events]
out["wan_ok"] = run(model.ProbeWan("wan", "w1", ("10.1.0.1",), 1.0))
out["wan_one_dead"] = run(model.ProbeWan("wan", "w1", ("10.1.0.99", "10.1.0.1"), 1.0))
out["wan_dead"] = run(model.ProbeWan("wan", "w1", ("10.1.0.99",), 1.0))
out["wrong_device"] = run(model.ProbeWan("wanb", "w2", ("10.1.0.1",), 1.0))
out["probe_src"] = run(model.Probe("t", "k", "10.1.0.1", "10.1.0.2", 1.0))
out["probe_dev"] = run(model.Probe("t", "k", "10.1.0.1", None, 1.0))
wans, peers, tunnels = s.observe(True)
out["wans"] = {k: [v.up, v.gateway] for k, v in wans.items()}
out["tunnels"] = sorted(tunnels)
print(json.dumps(out))
"""


@pytest.mark.lab
@pytest.mark.parametrize("icmp", [True, False], ids=["in_process", "forked"])
def test_real_ping_in_namespace(tmp_path, icmp):
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with NetNS() as router, NetNS() as isp:
        router.ip("link", "add", "w1", "type", "veth", "peer", "name", "isp0", "netns", isp.name)
        router.ip("link", "add", "w2", "type", "veth", "peer", "name", "w2p")
        router.ip("addr", "add", "10.1.0.2/24", "dev", "w1")
        router.ip("addr", "add", "10.2.0.2/24", "dev", "w2")
        for dev in ("w1", "w2", "w2p"):
            router.ip("link", "set", dev, "up")
        router.ip("route", "add", "default", "via", "10.1.0.1", "dev", "w1")
        isp.ip("addr", "add", "10.1.0.1/24", "dev", "isp0")
        isp.ip("link", "set", "isp0", "up")
        out = router.python("ROOT = %r\nICMP = %r\n" % (str(tmp_path), icmp) + LAB_CODE)
    assert out["wan_ok"] == [["wan_probe", True]]
    assert out["wan_one_dead"] == [["wan_probe", True]]
    assert out["wan_dead"] == [["wan_probe", False]]
    assert out["wrong_device"] == [["wan_probe", False]]
    assert out["probe_src"] == [["probe", True]]
    assert out["probe_dev"] == [["probe", False]]  # no device "t"
    assert out["wans"] == {"wan": [True, "10.1.0.1"], "wanb": [False, None]}
    assert out["tunnels"] == []


def test_observe_netlink_failure_keeps_last_view_and_retries(sh, monkeypatch):
    s, fake = sh
    calls = []

    def failing(wans, mwan3=False):
        calls.append(1)
        if len(calls) in (1, 3):
            raise OSError(105, "No buffer space available")
        return {w.name: model.WanState(w.name, w.device, True, "10.0.0.1") for w in wans}

    monkeypatch.setattr(kernel, "observe_wans", failing)
    wans, _, _ = s.observe(True)
    assert {k: v.up for k, v in wans.items()} == {"wan": False, "wanb": False}
    assert "No buffer space" in s.kernel_error
    wans, _, _ = s.observe(False)  # retried although nothing changed
    assert len(calls) == 2 and wans["wan"].up and s.kernel_error == ""
    wans, _, _ = s.observe(True)
    assert len(calls) == 3 and wans["wan"].up  # last good view kept
    assert s.kernel_error


def test_child_cancelled_by_a_sibling_in_the_same_select_batch_is_ignored(sh):
    # select() can hand back a child whose sibling's answer already
    # cancelled it (and closed its pipe): it must be skipped, not read
    s, fake = sh

    class Closed:
        def read(self):
            raise ValueError("I/O operation on closed file")

    assert s._readable(Closed()) == []


# ------------------------------------------------------------ review fixes


def test_observe_puts_handshakes_on_the_monotonic_clock(tmp_path, kernel_calls, monkeypatch):
    mono = [1000.0]  # time.monotonic(): seconds since boot
    wall = [1700000010.0]  # the kernel's latest_handshake is unix time
    fake = FakeRunner().on(["wg", "show", "all", "dump"], out=DUMP)  # handshake at 1700000000
    s = shell.Shell(CONFIG, runner=fake, root=str(tmp_path), clock=lambda: mono[0], wall=lambda: wall[0],
                    wg=FORKED, icmp=False)
    _, peers, _ = s.observe(True)
    assert peers[("wg0", KEY)].latest_handshake == 990.0  # 10 s old, on the engine's clock
    mono[0] += 5
    wall[0] -= 3600  # NTP steps the wall clock back: the same handshake is 15 s old, not -3585 s
    _, peers, _ = s.observe(False)
    assert peers[("wg0", KEY)].latest_handshake == 990.0
    fake.on(["wg", "show", "all", "dump"], out=DUMP.replace("1700000000", "1699996400"))  # a new one, 10 s ago
    _, peers, _ = s.observe(False)
    assert peers[("wg0", KEY)].latest_handshake == 995.0


@pytest.mark.parametrize("target, source, device, expected", [
    ("fd99::1", "10.99.0.2", "wg0", ["-I", "wg0"]),  # IPv4 source for an IPv6 target: bind the device
    ("fd99::1", "fd99::2", "wg0", ["-I", "fd99::2"]),
    ("10.99.0.1", "10.99.0.2", "wg0", ["-I", "10.99.0.2"]),
    ("2001:db8::1", "eth0.2", None, ["-I", "eth0.2"]),  # a device, even with a dot
    ("fd99::1", "10.99.0.2", None, []),  # nothing of its family to bind: the route decides
])
def test_ping_source_matches_the_targets_family(target, source, device, expected):
    argv = shell.ping_argv(target, source, 2.0, device=device)
    assert argv == ["ping", "-c", "1", "-W", "2"] + expected + [target]


def test_ipv6_probe_with_an_ipv4_source_binds_the_tunnel(sh):
    s, fake = sh
    sel = selectors.DefaultSelector()
    s.execute(model.Probe("wg0", KEY, "fd99::1", "10.9.0.2", 1.0), sel)
    assert fake.spawned == [["ping", "-c", "1", "-W", "1", "-I", "wg0", "fd99::1"]]
    loop(s, sel)


class ForkFails(FakeRunner):
    """fork() fails: ENOMEM / EAGAIN on a 64 MB router."""

    def run(self, argv, timeout=5.0, input=None):
        raise OSError(12, "Cannot allocate memory")

    def spawn(self, argv, cwd=None):
        raise OSError(11, "Resource temporarily unavailable")


def test_fork_failure_is_an_error_not_an_exception(tmp_path, kernel_calls):
    s = shell.Shell(CONFIG, runner=ForkFails(), root=str(tmp_path), wg=FORKED, icmp=False)
    wans, peers, tunnels = s.observe(True)
    assert peers == {} and tunnels is None and "Cannot allocate memory" in s.wg_error
    sel = selectors.DefaultSelector()
    (ev,) = s.execute(model.Probe("wg0", KEY, "10.9.0.1", None, 1.0), sel)
    assert (ev.kind, ev.data["tunnel"], ev.data["ok"]) == ("probe", "wg0", False)
    assert "Resource temporarily unavailable" in ev.data["error"]
    (ev,) = s.execute(model.ProbeWan("wan", "eth1", ("1.1.1.1",), 1.0), sel)
    assert (ev.kind, ev.data["wan"], ev.data["ok"]) == ("wan_probe", "wan", False)
    assert "Resource temporarily unavailable" in ev.data["error"]
    (ev,) = s.execute(model.ApplyPath("wg0", KEY, "wan", "eth1", "10.1.0.1", "198.51.100.7", 51820, 25), sel)
    assert not ev.data["ok"] and "Cannot allocate memory" in ev.data["error"]
    assert s.children == []


def test_a_wan_without_device_learns_it_from_netifds_ifup(tmp_path, kernel_calls):
    """A Wi-Fi client uplink names no device in /etc/config/network: the
    DEVICE of its ifup event fills it in, and a respawned daemon keeps it."""
    cfg = model.Config(CONFIG.settings, (CONFIG.wans[0], model.Wan("wwan", "")), CONFIG.tunnels)
    (tmp_path / "var/run/wgrouter").mkdir(parents=True)
    s = shell.Shell(cfg, runner=FakeRunner(), root=str(tmp_path), wg=FORKED, icmp=False)
    wans, _, _ = s.observe(True)
    assert wans["wwan"].device == ""  # down until netifd says which device
    hotplug = [model.Event("hotplug", {"action": "ifdown", "interface": "wwan", "device": "x"}),
               model.Event("hotplug", {"action": "ifup", "interface": "wan", "device": "eth9"}),
               model.Event("hotplug", {"action": "ifup", "interface": "wwan", "device": "phy0-sta0"})]
    assert s.learn(hotplug)
    assert not s.learn(hotplug)  # nothing new
    wans, _, _ = s.observe(False)  # dumped again although netlink saw nothing
    assert [w.device for w in kernel_calls[-1][0]] == ["eth1", "phy0-sta0"]  # a configured one stays
    assert wans["wwan"].device == "phy0-sta0"
    s.stop()
    again = shell.Shell(cfg, runner=FakeRunner(), root=str(tmp_path), wg=FORKED, icmp=False)
    assert [w.device for w in again.config_wans()] == ["eth1", "phy0-sta0"]
    again.stop()
