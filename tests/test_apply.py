import dataclasses
import json
import os
import socket

import pytest

from tests.fakerunner import FakeRunner
from wgrouter import apply
from wgrouter import model
from wgrouter import wg

# answers for no device: endpoints are set with `wg set`, which the fake records
FORKED = wg.Client(())

KEY = "hIg3Yh7Q5Xk0/7D1b3Nc3xY6B1m8Qk1B0w4ePf1eW1I="
KEY2 = "2Bz9Hc4m5n6o7p8q9r0s1t2u3v4w5x6y7z8A9B0C1D0="

PEER = model.Peer("wg0", "peer1", KEY, (model.Endpoint("vpn.example.net"),), ("10.9.0.0/24",), 25, probe="10.9.0.1")
PEER2 = model.Peer("wg1", "peer2", KEY2, (model.Endpoint("vpn.example.net"),), ("10.8.0.7/32",), 0)
CONFIG = model.Config(
    model.Settings(),
    (model.Wan("wan", "eth1"), model.Wan("wanb", "wwan0")),
    (model.Tunnel("wg0", (PEER,)), model.Tunnel("wg1", (PEER2,))),
)


def path(wan="wan", address="198.51.100.7", table=None, peer=KEY, tunnel="wg0", keepalive=25):
    device, gateway = {"wan": ("eth1", "10.1.0.1"), "wanb": ("wwan0", None)}[wan]
    return model.ApplyPath(tunnel, peer, wan, device, gateway, address, 51820, keepalive, table=table)


class Kicks(list):
    def __call__(self, device, target):
        self.append((device, target))


@pytest.fixture
def env(tmp_path):
    fake = FakeRunner()
    kicks = Kicks()
    state = str(tmp_path / "run" / "routes.json")

    def make(**kw):
        kw.setdefault("wg", FORKED)
        return apply.Applier(fake, state, config=CONFIG, kick=kicks, **kw)

    return fake, kicks, state, make


def saved(state):
    with open(state) as f:
        return json.load(f)


def test_apply_path_order_and_record(env):
    fake, kicks, state, make = env
    event = make().execute(path())
    assert event.kind == "applied"
    assert event.data["ok"] is True and event.data["error"] == ""
    assert event.data["action"] == path()
    assert fake.calls == [
        ["ip", "route", "replace", "198.51.100.7/32", "via", "10.1.0.1", "dev", "eth1", "proto", "119"],
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "198.51.100.7", "--orig-port-dst", "51820"],
        ["wg", "set", "wg0", "peer", KEY, "endpoint", "198.51.100.7:51820", "persistent-keepalive", "25"],
    ]
    assert kicks == [("wg0", "10.9.0.1")]
    record = saved(state)
    assert record["rules"] == {}
    assert record["routes"]["198.51.100.7 main"]["owners"] == [["wg0", KEY]]
    assert record["routes"]["198.51.100.7 main"]["device"] == "eth1"
    assert not [n for n in os.listdir(os.path.dirname(state)) if n.endswith(".tmp")]


def test_point_to_point_wan_has_no_via(env):
    fake, kicks, state, make = env
    make().execute(path("wanb", keepalive=0))
    assert fake.calls[0] == ["ip", "route", "replace", "198.51.100.7/32", "dev", "wwan0", "proto", "119"]
    assert fake.calls[2][-2:] == ["persistent-keepalive", "0"]


def test_failover_same_address_replaces_without_delete(env):
    fake, kicks, state, make = env
    applier = make()
    applier.execute(path("wan"))
    fake.calls.clear()
    event = applier.execute(path("wanb"))
    assert event.data["ok"]
    assert [c[:3] for c in fake.commands("ip")] == [["ip", "route", "replace"]]
    assert saved(state)["routes"]["198.51.100.7 main"]["device"] == "wwan0"


def test_new_address_deletes_old_route_after_endpoint(env):
    fake, kicks, state, make = env
    applier = make()
    applier.execute(path(address="198.51.100.7"))
    fake.calls.clear()
    event = applier.execute(path(address="203.0.113.9"))
    assert event.data["ok"]
    assert [c[0] for c in fake.calls] == ["ip", "conntrack", "wg", "ip"]
    assert fake.calls[3] == ["ip", "route", "del", "198.51.100.7/32", "proto", "119"]
    assert set(saved(state)["routes"]) == {"203.0.113.9 main"}


def test_a_route_we_did_not_add_is_left_alone(env):
    # a fresh record: whatever route the system has to another address
    # (198.51.100.7, say) is not ours to delete
    fake, kicks, state, make = env
    make().execute(path(address="203.0.113.9"))
    assert [c for c in fake.calls if c[:3] == ["ip", "route", "del"]] == []


def test_mwan3_table_and_unique_rule(env):
    fake, kicks, state, make = env
    applier = make()
    applier.execute(path(table=1))
    assert fake.calls[0] == [
        "ip", "route", "replace", "198.51.100.7/32", "via", "10.1.0.1", "dev", "eth1", "table", "1", "proto", "119",
    ]
    assert fake.calls[1] == ["ip", "rule", "add", "to", "198.51.100.7/32", "lookup", "1", "pref", "990"]
    fake.calls.clear()
    applier.execute(path(table=1))
    assert not [c for c in fake.calls if c[:3] == ["ip", "rule", "add"]]
    # a restarted daemon reads the record and does not add the rule again
    fake.calls.clear()
    make().execute(path(table=1))
    assert not [c for c in fake.calls if c[:3] == ["ip", "rule", "add"]]
    assert list(saved(state)["rules"]) == ["198.51.100.7 1"]


def test_rule_already_in_kernel_is_fine(env):
    fake, kicks, state, make = env
    fake.on(["ip", "rule", "add"], rc=2, err="RTNETLINK answers: File exists")
    event = make().execute(path(table=1))
    assert event.data["ok"], event.data["error"]
    assert "198.51.100.7 1" in saved(state)["rules"]


def test_mwan3_switch_table_moves_route_and_rule(env):
    fake, kicks, state, make = env
    applier = make()
    applier.execute(path("wan", table=1))
    fake.calls.clear()
    event = applier.execute(path("wanb", table=2))
    assert event.data["ok"]
    ips = fake.commands("ip")
    assert ips == [
        ["ip", "route", "replace", "198.51.100.7/32", "dev", "wwan0", "table", "2", "proto", "119"],
        ["ip", "rule", "add", "to", "198.51.100.7/32", "lookup", "2", "pref", "990"],
        ["ip", "rule", "del", "to", "198.51.100.7/32", "lookup", "1", "pref", "990"],
        ["ip", "route", "del", "198.51.100.7/32", "table", "1", "proto", "119"],
    ]
    # the deletions come after the endpoint was set
    assert fake.calls.index(ips[2]) > fake.calls.index(fake.commands("wg")[0])
    record = saved(state)
    assert set(record["routes"]) == {"198.51.100.7 2"} and set(record["rules"]) == {"198.51.100.7 2"}


def test_shared_route_kept_until_last_owner_leaves(env):
    fake, kicks, state, make = env
    applier = make()
    applier.execute(path(peer=KEY, tunnel="wg0"))
    applier.execute(path(peer=KEY2, tunnel="wg1"))
    assert saved(state)["routes"]["198.51.100.7 main"]["owners"] == [["wg0", KEY], ["wg1", KEY2]]
    fake.calls.clear()
    applier.execute(path(peer=KEY, tunnel="wg0", address="203.0.113.9"))
    assert ["ip", "route", "del", "198.51.100.7/32", "proto", "119"] not in fake.calls
    fake.calls.clear()
    applier.execute(path(peer=KEY2, tunnel="wg1", address="203.0.113.9"))
    assert ["ip", "route", "del", "198.51.100.7/32", "proto", "119"] in fake.calls
    assert kicks[-1] == ("wg1", "10.8.0.7")


@pytest.mark.parametrize(
    "fail,ran,recorded",
    [
        (["ip", "route", "replace"], ["ip"], set()),
        (["ip", "rule", "add"], ["ip", "ip"], {"198.51.100.7 1"}),
        (["conntrack"], ["ip", "ip", "conntrack"], {"198.51.100.7 1"}),
        (["wg", "set"], ["ip", "ip", "conntrack", "wg"], {"198.51.100.7 1"}),
    ],
)
def test_failure_stops_at_the_step(env, fail, ran, recorded):
    fake, kicks, state, make = env
    fake.on(fail, rc=2, err="boom from %s" % fail[0])
    event = make().execute(path(table=1))
    assert event.data["ok"] is False
    assert " ".join(fail) in event.data["error"] and "boom from" in event.data["error"]
    assert [c[0] for c in fake.calls] == ran
    assert kicks == []
    assert set(saved(state)["routes"]) == recorded
    rules = set(saved(state)["rules"])
    assert rules == (recorded if fail != ["ip", "rule", "add"] else set())


def test_failure_deleting_old_route_keeps_record(env):
    fake, kicks, state, make = env
    applier = make()
    applier.execute(path(address="198.51.100.7"))
    fake.on(["ip", "route", "del"], rc=2, err="RTNETLINK answers: Operation not permitted")
    event = applier.execute(path(address="203.0.113.9"))
    assert not event.data["ok"] and "route del 198.51.100.7/32" in event.data["error"]
    assert set(saved(state)["routes"]) == {"198.51.100.7 main", "203.0.113.9 main"}
    assert kicks == [("wg0", "10.9.0.1")]  # only the first apply got that far


def test_kick_failure_reported(env, tmp_path):
    fake, kicks, state, make = env

    def bad_kick(device, target):
        raise OSError(19, "No such device")

    event = apply.Applier(fake, state, config=CONFIG, kick=bad_kick, wg=FORKED).execute(path())
    assert not event.data["ok"] and "No such device" in event.data["error"]
    assert event.data["steps"] == ["route 198.51.100.7 main", "conntrack", "endpoint"]


def test_conntrack_none_found_is_fine(env):
    fake, kicks, state, make = env
    fake.on(["conntrack"], rc=1, err="0 flow entries have been deleted.")
    assert make().execute(path()).data["ok"]


def test_conntrack_missing_noted_once(env):
    fake, kicks, state, make = env
    fake.on(["conntrack"], missing=True)
    applier = make()
    first = applier.execute(path())
    second = applier.execute(path())
    assert first.data["ok"] and second.data["ok"]
    assert "conntrack" in first.data["note"]
    assert "note" not in second.data
    assert len(fake.commands("conntrack")) == 1
    assert len(fake.commands("wg")) == 2


def test_conntrack_flush_off(env):
    fake, kicks, state, make = env
    make(conntrack_flush=False).execute(path())
    assert fake.commands("conntrack") == []


def test_ipv6_endpoint(env):
    fake, kicks, state, make = env
    make().execute(path(address="2001:db8::7"))
    assert fake.calls[0] == ["ip", "-6", "route", "replace", "2001:db8::7/128", "via", "10.1.0.1", "dev", "eth1",
                             "proto", "119"]
    assert fake.calls[1][:4] == ["conntrack", "-D", "-f", "ipv6"]
    assert "[2001:db8::7]:51820" in fake.calls[2]


def test_remove_path_only_ours(env):
    fake, kicks, state, make = env
    applier = make()
    ev = applier.execute(model.RemovePath("wg0", KEY, "198.51.100.7"))
    assert ev.data["ok"] and fake.calls == []
    applier.execute(path(table=1))
    fake.calls.clear()
    ev = applier.execute(model.RemovePath("wg0", KEY, "198.51.100.7", table=1))
    assert ev.data["ok"]
    assert fake.calls == [
        ["ip", "rule", "del", "to", "198.51.100.7/32", "lookup", "1", "pref", "990"],
        ["ip", "route", "del", "198.51.100.7/32", "table", "1", "proto", "119"],
    ]
    assert saved(state) == {"routes": {}, "rules": {}}


@pytest.mark.parametrize(
    "err", ["RTNETLINK answers: No such process", "Error: FIB table does not exist."]
)
def test_route_already_gone_is_fine(env, err):
    fake, kicks, state, make = env
    applier = make()
    applier.execute(path())
    fake.on(["ip", "route", "del"], rc=2, err=err)
    assert applier.execute(model.RemovePath("wg0", KEY, "198.51.100.7")).data["ok"]
    assert saved(state)["routes"] == {}


def test_cleanup_after_restart_removes_only_recorded(env):
    fake, kicks, state, make = env
    applier = make()
    applier.execute(path(address="198.51.100.7", table=1))
    applier.execute(path(peer=KEY2, tunnel="wg1", address="203.0.113.9"))
    fake.calls.clear()
    assert make().cleanup() == []
    assert sorted(fake.calls) == sorted([
        ["ip", "rule", "del", "to", "198.51.100.7/32", "lookup", "1", "pref", "990"],
        ["ip", "route", "del", "198.51.100.7/32", "table", "1", "proto", "119"],
        ["ip", "route", "del", "203.0.113.9/32", "proto", "119"],
    ])
    assert saved(state) == {"routes": {}, "rules": {}}
    fake.calls.clear()
    make().cleanup()
    assert fake.calls == []


def test_cleanup_reports_errors_and_keeps_record(env):
    fake, kicks, state, make = env
    make().execute(path())
    fake.on(["ip", "route", "del"], rc=2, err="Operation not permitted")
    errors = make().cleanup()
    assert len(errors) == 1 and "Operation not permitted" in errors[0]
    assert "198.51.100.7 main" in saved(state)["routes"]


def test_corrupt_state_is_empty(env):
    fake, kicks, state, make = env
    os.makedirs(os.path.dirname(state))
    with open(state, "w") as f:
        f.write("{not json")
    make().cleanup()
    assert fake.calls == []


def test_restart_tunnel(env, tmp_path):
    fake, kicks, state, make = env
    ev = apply.Applier(fake, state, restart_cmd=("ubus", "call", "x"), wg=FORKED).execute(model.RestartTunnel("wg0"))
    assert ev.data["ok"] and fake.calls == [["ubus", "call", "x", "wg0"]]
    fake.on(["ifup"], rc=1, err="no such interface")
    ev = make().execute(model.RestartTunnel("wg0"))
    assert not ev.data["ok"] and "no such interface" in ev.data["error"]
    fake.on(["ifup"], missing=True)
    ev = make().execute(model.RestartTunnel("wg0"))
    assert not ev.data["ok"] and "not found" in ev.data["error"]


def test_unknown_action(env):
    fake, kicks, state, make = env
    with pytest.raises(apply.UnknownAction):
        make().execute(model.Probe("wg0", KEY, "10.0.0.1", None, 1.0))


@pytest.mark.parametrize(
    "probe,allowed,expected",
    [
        ("10.9.0.1", ("10.0.0.0/8",), "10.9.0.1"),
        (None, ("10.8.0.7/32",), "10.8.0.7"),
        (None, ("10.8.0.7",), "10.8.0.7"),
        (None, ("10.9.0.0/24", "10.1.0.0/16"), "10.9.0.1"),
        (None, ("10.9.3.77/16",), "10.9.0.1"),
        (None, ("0.0.0.0/0",), "192.0.2.1"),
        (None, ("fd00::/64", "10.2.0.0/24"), "10.2.0.1"),
        (None, ("fd00::5/128",), "fd00::5"),
        (None, (), None),
    ],
)
def test_kick_target(probe, allowed, expected):
    peer = model.Peer("wg0", "p", KEY, (), allowed, 0, probe=probe)
    assert apply.kick_target(peer) == expected


def test_kick_target_unknown_peer_skips_kick(env):
    fake, kicks, state, make = env
    ev = make().execute(path(peer="unknownkey=", tunnel="wg0"))
    assert ev.data["ok"] and kicks == []


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_BINDTODEVICE needs root")
def test_send_kick_real_socket_on_loopback():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        try:
            rx.bind(("127.0.0.1", apply.KICK_PORT))
        except OSError as e:
            pytest.skip("port 9 busy on loopback: %s" % e)
        rx.settimeout(5)
        apply.send_kick("lo", "127.0.0.1")
        data, _ = rx.recvfrom(100)
        assert data == b""
    finally:
        rx.close()


# ------------------------------------------------------------ lab: real ip, wg, kick

LISTEN = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.51.100.7", 51820))
print("ready", flush=True)
s.settimeout(float(sys.argv[1]))
try:
    data, addr = s.recvfrom(2048)
    print("%d %d %s" % (data[0], len(data), addr[0]), flush=True)
except socket.timeout:
    print("none", flush=True)
"""

APPLY = r"""
import json, subprocess
from wgrouter import apply, model, runner
peer = model.Peer(WG, "p", KEY, (model.Endpoint("198.51.100.7"),), ("10.99.0.0/24",), 25)
config = model.Config(model.Settings(), (), (model.Tunnel(WG, (peer,)),))
a = apply.Applier(runner.Runner(), STATE, config=config)
ev = a.execute(model.ApplyPath(WG, KEY, "wanb", "w2", "10.2.0.1", "198.51.100.7", 51820, 0, table=TABLE))
def sh(cmd):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return r.stdout + r.stderr
out = {"ok": ev.data["ok"], "error": ev.data["error"], "steps": ev.data["steps"],
       "route": sh("ip route get 198.51.100.7"), "endpoint": sh("wg show %s endpoints" % WG),
       "keepalive": sh("wg show %s persistent-keepalive" % WG), "rules": sh("ip rule show pref 990")}
again = apply.Applier(runner.Runner(), STATE, config=config).execute(
    model.ApplyPath(WG, KEY, "wanb", "w2", "10.2.0.1", "198.51.100.7", 51820, 0, table=TABLE))
out["again_ok"] = again.data["ok"]
out["rules_again"] = sh("ip rule show pref 990")
out["cleanup"] = apply.Applier(runner.Runner(), STATE, config=config).cleanup()
out["after"] = sh("ip route show table all 198.51.100.7/32") + sh("ip rule show pref 990")
print(json.dumps(out))
"""


@pytest.mark.lab
@pytest.mark.parametrize("table", [None, 1000])
def test_apply_path_for_real(tmp_path, table):
    import subprocess
    import sys
    import time

    from tests.fakerunner import NetNS, REPO, netns_unavailable

    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    if subprocess.run(["which", "wireguard-go"], capture_output=True).returncode != 0:
        pytest.skip("wireguard-go not installed")
    wg = "wgt%da%s" % (os.getpid(), "m" if table else "")
    with NetNS() as router, NetNS() as ispa, NetNS() as ispb:
        for dev, isp, n in (("w1", ispa, 1), ("w2", ispb, 2)):
            router.ip("link", "add", dev, "type", "veth", "peer", "name", "up0", "netns", isp.name)
            router.ip("addr", "add", "10.%d.0.2/24" % n, "dev", dev)
            router.ip("link", "set", dev, "up")
            isp.ip("addr", "add", "10.%d.0.1/24" % n, "dev", "up0")
            isp.ip("link", "set", "up0", "up")
            isp.ip("addr", "add", "198.51.100.7/32", "dev", "lo")
        router.ip("route", "add", "default", "via", "10.1.0.1", "dev", "w1")
        if table:
            router.ip("route", "add", "default", "via", "10.2.0.1", "dev", "w2", "table", table)
        wgproc = subprocess.Popen(router.exec_argv(["wireguard-go", "-f", wg]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        listeners = []
        try:
            for _ in range(100):
                if subprocess.run(router.exec_argv(["wg", "show", wg]), capture_output=True).returncode == 0:
                    break
                time.sleep(0.05)
            key = subprocess.run(["wg", "genkey"], capture_output=True, text=True).stdout.strip()
            other = subprocess.run(["wg", "genkey"], capture_output=True, text=True).stdout.strip()
            peer = subprocess.run(["wg", "pubkey"], input=other, capture_output=True, text=True).stdout.strip()
            (tmp_path / "key").write_text(key)
            subprocess.run(router.exec_argv(["wg", "set", wg, "private-key", tmp_path / "key", "peer", peer,
                                             "allowed-ips", "10.99.0.0/24"]), check=True)
            router.ip("link", "set", wg, "up")
            for isp in (ispa, ispb):
                p = subprocess.Popen(isp.exec_argv([sys.executable, "-c", LISTEN, "5"]),
                                     stdout=subprocess.PIPE, text=True)
                assert p.stdout.readline().strip() == "ready"
                listeners.append(p)
            code = "WG=%r\nKEY=%r\nSTATE=%r\nTABLE=%r\n" % (wg, peer, str(tmp_path / "state.json"), table) + APPLY
            out = router.python(code)
            heard = [p.communicate(timeout=30)[0].strip() for p in listeners]
        finally:
            for p in listeners:
                p.kill()
                p.wait()
            wgproc.terminate()
            wgproc.wait(10)
    assert out["ok"], out["error"]
    assert out["steps"][-1] == "kick"
    assert "dev w2" in out["route"] and "via 10.2.0.1" in out["route"]
    assert out["endpoint"].split() == [peer, "198.51.100.7:51820"]
    assert out["keepalive"].split() == [peer, "off"]
    # without keepalive, only the kick can have started a handshake, and its initiation (type 1, 148 bytes) left through wanb
    assert heard[0] == "none"
    assert heard[1] == "1 148 10.2.0.2"
    if table:
        assert out["rules"].split() == ["990:", "from", "all", "to", "198.51.100.7", "lookup", "1000"]
        assert out["rules_again"] == out["rules"]
    else:
        assert out["rules"] == ""
    assert out["again_ok"]
    assert out["cleanup"] == [] and out["after"] == ""


def test_failed_delete_of_an_old_route_is_retried_on_the_next_apply(env):
    fake, kicks, state, make = env
    applier = make()
    applier.execute(path(address="198.51.100.7"))
    fake.on(["ip", "route", "del"], rc=2, err="RTNETLINK answers: Device or resource busy", times=1)
    assert not applier.execute(path(address="203.0.113.9")).data["ok"]
    # still in the kernel, so still recorded, owned by nobody
    assert saved(state)["routes"]["198.51.100.7 main"]["owners"] == []
    fake.calls.clear()
    event = applier.execute(path(address="203.0.113.10"))
    assert event.data["ok"]
    assert ["ip", "route", "del", "198.51.100.7/32", "proto", "119"] in fake.calls
    assert set(saved(state)["routes"]) == {"203.0.113.10 main"}


def test_a_leftover_that_still_cannot_be_deleted_is_a_note_not_a_failure(env):
    fake, kicks, state, make = env
    applier = make()
    applier.execute(path(address="198.51.100.7", table=1))
    fake.on(["ip", "route", "del"], rc=2, err="RTNETLINK answers: Device or resource busy")
    assert not applier.execute(path(address="203.0.113.9", table=1)).data["ok"]
    # the engine re-applies the failed path after its backoff: the path is fine,
    # the old route is still there and says so
    event = applier.execute(path(address="203.0.113.9", table=1))
    assert event.data["ok"] and "198.51.100.7/32 table 1" in event.data["note"] and "busy" in event.data["note"]
    assert set(saved(state)["routes"]) == {"198.51.100.7 1", "203.0.113.9 1"}
    assert "198.51.100.7 1" not in saved(state)["rules"]  # the rule went first
    fake.rules.clear()
    applier.execute(model.RemovePath("wg0", KEY, "203.0.113.9", 1))
    assert saved(state)["routes"] == {} and saved(state)["rules"] == {}


class ForkFails(FakeRunner):
    def run(self, argv, timeout=5.0, input=None):
        raise OSError(12, "Cannot allocate memory")


def test_fork_failure_fails_the_step_not_the_daemon(tmp_path):
    applier = apply.Applier(ForkFails(), str(tmp_path / "s.json"), config=CONFIG, kick=None, wg=FORKED)
    event = applier.execute(path())
    assert not event.data["ok"] and "ip route replace" in event.data["error"]
    assert "Cannot allocate memory" in event.data["error"]
    event = applier.execute(model.RestartTunnel("wg0"))
    assert not event.data["ok"] and "Cannot allocate memory" in event.data["error"]


# ------------------------------------------------------------ route protocol


def test_host_routes_carry_a_protocol_of_their_own_and_record_it(env):
    """netifd's pinned endpoint route is proto static: ours must differ, in
    the kernel and in applied.json."""
    fake, kicks, state, make = env
    make().execute(path())
    (replace,) = [c for c in fake.calls if c[:3] == ["ip", "route", "replace"]]
    assert replace[-2:] == ["proto", str(apply.ROUTE_PROTO)] and apply.ROUTE_PROTO != 4
    assert saved(state)["routes"]["198.51.100.7 main"]["proto"] == apply.ROUTE_PROTO


def test_route_protocol_is_not_one_iproute2_names():
    # iproute2's rt_protos and the kernel's RTPROT_* values (linux/rtnetlink.h)
    taken = {0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 42, 99, 186, 187, 188,
             189, 192}
    assert 0 < apply.ROUTE_PROTO < 256 and apply.ROUTE_PROTO not in taken


def _legacy_state(state, table=None):
    """applied.json as a version before the route protocol wrote it."""
    os.makedirs(os.path.dirname(state), exist_ok=True)
    key = "198.51.100.7 %s" % ("main" if table is None else table)
    with open(state, "w") as f:
        json.dump({"routes": {key: {"address": "198.51.100.7", "table": table, "device": "eth1",
                                    "gateway": "10.1.0.1", "owners": [["wg0", KEY]]}},
                   "rules": {}}, f)
    return key


def test_a_route_an_earlier_version_added_is_deleted_as_proto_static_on_its_own_path(env):
    """After an upgrade the adopted record has no proto: the route is proto
    static, like netifd's, so the delete also names its device and gateway."""
    fake, kicks, state, make = env
    _legacy_state(state)
    assert make().cleanup() == []
    assert fake.calls == [["ip", "route", "del", "198.51.100.7/32", "proto", "static",
                           "via", "10.1.0.1", "dev", "eth1"]]
    assert saved(state)["routes"] == {}


def test_an_adopted_earlier_route_becomes_ours_on_the_next_apply(env):
    fake, kicks, state, make = env
    key = _legacy_state(state)
    applier = make()
    applier.execute(path("wanb"))
    # replace takes the old route's place whatever its protocol: no delete
    assert [c[:3] for c in fake.commands("ip")] == [["ip", "route", "replace"]]
    assert saved(state)["routes"][key]["proto"] == apply.ROUTE_PROTO
    fake.calls.clear()
    assert applier.cleanup() == []
    assert fake.calls == [["ip", "route", "del", "198.51.100.7/32", "proto", "119"]]


NETIFD_PIN = r"""
import json, subprocess
from wgrouter import apply, model, runner
peer = model.Peer("wg0", "p", "K", (model.Endpoint(ADDR),), (), 0)
a = apply.Applier(runner.Runner(), STATE, config=model.Config(model.Settings(), (), ()), kick=None)
a.conntrack_missing = True  # no conntrack needed here
ev = a.execute(model.ApplyPath("wg0", "K", "wanb", "w2", GW2, ADDR, 51820, 0))
def sh(cmd):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return r.stdout + r.stderr
fam = "-6" if ":" in ADDR else "-4"
out = {"steps": ev.data["steps"], "both": sh("ip %s route show %s" % (fam, ADDR))}
out["cleanup"] = apply.Applier(runner.Runner(), STATE).cleanup()
out["after"] = sh("ip %s route show %s" % (fam, ADDR))
print(json.dumps(out))
"""


@pytest.mark.lab
@pytest.mark.parametrize("family", [4, 6])
def test_stop_leaves_netifds_pinned_route_to_the_same_endpoint(tmp_path, family):
    """netifd (without nohostroute) pins the endpoint as proto static with
    the WAN's metric; wgrouter's route beside it is the one it deletes.  An
    unqualified `ip -6 route del` takes the lowest metric first: netifd's."""
    from tests.fakerunner import NetNS, netns_unavailable

    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    if family == 4:
        addr, gw1, gw2, net, plen = "198.51.100.7", "10.1.0.1", "10.2.0.1", "10.%d.0.2", 24
    else:
        addr, gw1, gw2, net, plen = "2001:db8:ff::7", "2001:db8:1::1", "2001:db8:2::1", "2001:db8:%d::2", 64
    with NetNS() as router:
        for n in (1, 2):
            router.ip("link", "add", "w%d" % n, "type", "veth", "peer", "name", "p%d" % n)
            for dev in ("w%d" % n, "p%d" % n):
                router.ip("link", "set", dev, "up")
            router.ip("addr", "add", "%s/%d" % (net % n, plen), "dev", "w%d" % n, *(["nodad"] if family == 6 else []))
        pin = "%s via %s dev w1 proto static metric 10" % (addr, gw1)
        router.ip("route", "add", *pin.split())
        code = "ADDR=%r\nGW2=%r\nSTATE=%r\n" % (addr, gw2, str(tmp_path / "state.json")) + NETIFD_PIN
        out = router.python(code)
    assert out["steps"][0] == "route %s main" % addr, out
    assert "dev w2 proto %d" % apply.ROUTE_PROTO in out["both"] and "proto static metric 10" in out["both"]
    assert out["cleanup"] == []
    after = out["after"].strip().splitlines()
    assert len(after) == 1 and after[0].startswith(pin), out


@pytest.mark.parametrize("text", ["null", "[]", "17", '{"routes": 17, "rules": []}',
                                  '{"routes": {"a": null, "b": {"address": 5}}}'])
def test_a_record_of_another_shape_reads_as_empty_instead_of_stopping_the_start(tmp_path, text):
    # found by the chaos soak (seed 20261201): 'null' in applied.json made
    # every respawn die in State.load, so procd respawned it forever
    path = tmp_path / "applied.json"
    path.write_text(text)
    state = apply.State(str(path))
    assert state.routes == {} and state.rules == {}


def test_the_valid_entries_of_a_damaged_record_are_kept(tmp_path):
    good = {"address": "192.0.2.10", "table": None, "device": "wan", "gateway": "10.0.1.1",
            "owners": [["wg0", "KEY"]]}
    path = tmp_path / "applied.json"
    path.write_text(json.dumps({"routes": {"192.0.2.10 main": good, "x": {"owners": 3}},
                                "rules": {"y": "z"}}))
    state = apply.State(str(path))
    assert state.routes == {"192.0.2.10 main": good} and state.rules == {}


class FakeRelays:
    """The relays' thread as the applier drives it: start, move, stop."""

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail
        self.port = 40000

    def start(self, peer, relay, device, port=0, keepalive=None):
        if self.fail:
            from wgrouter import relay as relay_mod
            raise relay_mod.RelayError(self.fail)
        self.port += 1
        self.calls.append(("start", peer, relay, device, keepalive))
        return self.port

    def move(self, peer, device):
        self.calls.append(("move", peer, device))

    def stop(self, peer):
        self.calls.append(("stop", peer))

    def status(self, peer=None):
        return None

    def close(self):
        self.calls.append(("close",))


def relay_path(wan="wan", address="203.0.113.5"):
    return dataclasses.replace(path(wan, address=address), port=443, transport="tcp-relay")


def test_relay_path_pins_the_relay_and_makes_its_local_socket_the_endpoint(env):
    fake, kicks, state, make = env
    relays = FakeRelays()
    applier = make(relays=relays)
    event = applier.execute(path())
    assert event.data["ok"]
    fake.calls.clear()
    event = applier.execute(relay_path())
    assert event.data["ok"], event.data["error"]
    assert relays.calls == [("start", "wg0 peer peer1", ("203.0.113.5", 443), "eth1", 25)]
    # the relay's host route as an endpoint's (proto 119), no UDP conntrack
    # flush, the endpoint on loopback, the old UDP route removed after it
    assert fake.calls == [
        ["ip", "route", "replace", "203.0.113.5/32", "via", "10.1.0.1", "dev", "eth1", "proto", "119"],
        ["wg", "set", "wg0", "peer", KEY, "endpoint", "127.0.0.1:40001", "persistent-keepalive", "25"],
        ["ip", "route", "del", "198.51.100.7/32", "proto", "119"],
    ]
    assert list(saved(state)["routes"]) == ["203.0.113.5 main"]
    # a WAN change moves the connection; the local endpoint stays
    fake.calls.clear()
    event = applier.execute(relay_path("wanb"))
    assert event.data["ok"] and relays.calls[-1] == ("move", "wg0 peer peer1", "wwan0")
    assert ["wg", "set", "wg0", "peer", KEY, "endpoint", "127.0.0.1:40001", "persistent-keepalive", "25"] \
        in fake.calls
    # a UDP path leaves the relay running (a try of direct UDP) until StopRelay
    applier.execute(path())
    assert relays.calls[-1][0] == "move"
    event = applier.execute(model.StopRelay("wg0", KEY))
    assert event.data["ok"] and relays.calls[-1] == ("stop", "wg0 peer peer1")
    assert event.data["steps"] == ["relay stopped"]
    # stopped already: nothing to do
    assert applier.execute(model.StopRelay("wg0", KEY)).data["steps"] == []
    applier.close()
    assert relays.calls[-1] == ("close",)


def test_relay_that_cannot_start_fails_the_apply(env):
    fake, kicks, state, make = env
    event = make(relays=FakeRelays(fail="relay for wg0 peer peer1: cannot bind 127.0.0.1:0")).execute(relay_path())
    assert not event.data["ok"] and "cannot bind" in event.data["error"]
    assert not [c for c in fake.calls if c[0] == "wg"]


def test_relay_path_runs_a_real_relay_to_its_server(env):
    """The applier's own relays thread against the udp-over-tcp server, on loopback."""
    from wgrouter import relay as relay_mod
    import threading
    fake, kicks, state, make = env
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    target.settimeout(5)
    server = relay_mod.RelayServer([("127.0.0.1", 0)], target.getsockname(), log=lambda m: None)
    threading.Thread(target=server.serve, daemon=True).start()
    applier = make()
    try:
        a = dataclasses.replace(relay_path(address="127.0.0.1"), port=server.addresses[0][1], device="lo")
        event = applier.execute(a)
        assert event.data["ok"], event.data["error"]
        (wg_set,) = [c for c in fake.calls if c[0] == "wg"]
        host, _, port = wg_set[wg_set.index("endpoint") + 1].partition(":")
        assert host == "127.0.0.1"
        wireguard = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        initiation = bytes([1, 0, 0, 0]) + bytes(144)
        wireguard.sendto(initiation, ("127.0.0.1", int(port)))
        assert target.recvfrom(2048)[0] == initiation  # framed over TCP, out at the target
        (st,) = applier.relay_status().values()
        assert st.connected and st.device == "lo" and st.tx_datagrams == 1
        assert applier.execute(model.StopRelay("wg0", KEY)).data["steps"] == ["relay stopped"]
        assert applier.relay_status() == {}
        wireguard.close()
    finally:
        applier.close()
        server.stop()
        target.close()
