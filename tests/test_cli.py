"""CLI behaviour that needs no daemon and no root."""

import json
import os
import socket
import threading

from wgrouter import cli
from wgrouter import runfiles


def test_status_without_daemon_fails_clearly(tmp_path, capsys):
    rc = cli.main(["status", "--root", str(tmp_path)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "not running" in err and str(tmp_path) in err


def test_root_accepted_before_and_after_the_command(tmp_path):
    a = cli.build_parser().parse_args(["--root", str(tmp_path), "status"])
    b = cli.build_parser().parse_args(["status", "--root", str(tmp_path)])
    assert cli._root(a) == cli._root(b) == str(tmp_path)


def test_root_defaults_to_environment_then_slash(monkeypatch):
    args = cli.build_parser().parse_args(["status"])
    monkeypatch.delenv("WGROUTER_ROOT", raising=False)
    assert cli._root(args) == "/"
    monkeypatch.setenv("WGROUTER_ROOT", "/tmp/lab")
    assert cli._root(args) == "/tmp/lab"


def _serve_once(path, reply, seen):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        with conn:
            seen.append(json.loads(conn.makefile().readline()))
            conn.sendall(json.dumps(reply).encode() + b"\n")
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_switch_sends_the_wan_and_reports_the_reply(tmp_path, capsys):
    os.makedirs(tmp_path / "var/run/wgrouter")
    seen = []
    t = _serve_once(str(tmp_path / runfiles.CONTROL), {"ok": True, "wan": "wanb"}, seen)
    assert cli.main(["switch", "wanb", "--root", str(tmp_path)]) == 0
    t.join(2)
    assert seen == [{"method": "switch", "wan": "wanb"}]
    assert "wanb" in capsys.readouterr().out


def test_daemon_error_reply_gives_exit_1(tmp_path, capsys):
    os.makedirs(tmp_path / "var/run/wgrouter")
    seen = []
    t = _serve_once(str(tmp_path / runfiles.CONTROL), {"error": "unknown WAN 'x'"}, seen)
    assert cli.main(["switch", "x", "--root", str(tmp_path)]) == 1
    t.join(2)
    assert "unknown WAN 'x'" in capsys.readouterr().err


def test_format_status_names_peer_wan_and_events():
    st = {"version": "0.1.0", "pid": 1, "uptime": 3,
          "wans": {"wan": {"up": False, "healthy": False, "active": False},
                   "wanb": {"up": True, "healthy": True, "active": True}},
          "tunnels": {"wg0": {"peers": {"office": {
              "state": "up", "wan": "wanb", "endpoint": "192.0.2.10:51820",
              "endpoint_source": "dns", "keepalive": 15, "handshake_age": 4.2,
              "rx": 10, "tx": 20, "last_step": None}}}},
          "events": [{"time": 0, "text": "wg0 peer office: was wan, now wanb, because wan is down"}]}
    text = cli.format_status(st)
    assert "wan (down)" in text and "wanb (up, active)" in text
    assert "peer office" in text and "192.0.2.10:51820" in text and "handshake 4s ago" in text
    assert "was wan, now wanb" in text


def test_format_status_shows_the_families_a_wan_carries():
    st = {"wans": {"wan": {"up": True, "healthy": True, "active": True, "families": ["ipv4", "ipv6"]},
                   "wanb": {"up": True, "healthy": True, "active": False, "families": ["ipv6"]}}}
    text = cli.format_status(st)
    assert "wan (up, IPv4+IPv6, active)" in text and "wanb (up, IPv6)" in text


def test_check_config_warns_about_names_without_dnspython(tmp_path, capsys, monkeypatch):
    import sys
    from tests import test_config
    test_config.write(tmp_path)
    assert cli.main(["check-config", "--root", str(tmp_path)]) == 0
    assert "python3-dns" not in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "dns", None)  # as on a router without wgrouter-dns
    assert cli.main(["check-config", "--root", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    named = [line for line in err.splitlines() if "python3-dns" in line]
    assert named and all("is a name" in line and "wgrouter-dns" in line for line in named), err
    assert any("tunnel 'wg0', peer 'hq': endpoint 'vpn.example.net'" in line for line in named), err
