"""What the install finds and changes: files/etc/uci-defaults/99-wgrouter,
``wgrouter setup`` (wgrouter/install.py) and the package's prerm.

Each router in tests/routers/NAME/ is a set of real-world /etc/config files
(network, firewall, and wireless or mwan3 where the router has them).  The
uci-defaults script runs under busybox ash the way OpenWrt runs it: sourced
in a subshell from /etc/uci-defaults and deleted when it exits 0
(default_postinst in package/base-files/files/lib/functions.sh on a live
system, uci_apply_defaults in package/base-files/files/etc/init.d/boot at
first boot).  The prerm text runs the way default_prerm sources prerm-pkg.
"""

import difflib
import os
import shutil
import subprocess
import sys

import pytest

from wgrouter import config, install, uci

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUTERS = os.path.join(ROOT, "tests", "routers")
SCRIPT = os.path.join(ROOT, "files", "etc", "uci-defaults", "99-wgrouter")
EXAMPLE = os.path.join(ROOT, "files", "etc", "config", "wgrouter")
MAKEFILE = os.path.join(ROOT, "openwrt-feed", "wgrouter", "Makefile")
BUSYBOX = shutil.which("busybox")
needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed")

# The modems' network devices as the kernel shows them (what config._usb_net reads).
QMI = "sys/class/usbmisc/cdc-wdm0/device/net/wwan0"
SYSFS = {
    "dhcp_lte_qmi": [QMI],
    "user_edited": [QMI],
    "two_wireguard": ["sys/devices/platform/1e1c0000.xhci/usb1/1-1/1-1:1.4/net/wwan0"],
}

# router: ([(WAN, keepalive, table)] in order, tunnels, mwan3, {tunnel: nohostroute before})
EXPECTED = {
    "dhcp_lte_qmi": ([("wan", None, None), ("lte", "25", None)], ["wg0"], False, {"wg0": None}),
    "pppoe_second_isp": ([("wan", None, None), ("wanb", None, None)], ["wg_home"], False,
                         {"wg_home": None}),
    "dhcp_wifi_client": ([("wan", None, None), ("wwan", None, None)], ["wg0"], False, {"wg0": None}),
    "mwan3": ([("wan", None, "1"), ("wanb", None, "3")], ["wg0"], True, {"wg0": None}),
    "no_wireguard": ([("wan", None, None), ("wanb", "25", None)], [], False, {}),
    "two_wireguard": ([("wan", None, None), ("wanb", "25", None)], ["wg0", "wg1"], False,
                      {"wg0": None, "wg1": "0"}),
    # the user's own file: left as it is; its tunnel still gets nohostroute
    "user_edited": (None, ["wg0"], None, {"wg0": None}),
}


def make_root(tmp_path, name):
    root = tmp_path / "root"
    etc = root / "etc" / "config"
    etc.mkdir(parents=True)
    for item in os.listdir(os.path.join(ROUTERS, name)):
        shutil.copy(os.path.join(ROUTERS, name, item), etc / item)
    if not (etc / "wgrouter").exists():
        shutil.copy(EXAMPLE, etc / "wgrouter")  # as the package unpacks it
    if (etc / "mwan3").exists():
        (root / "etc" / "init.d").mkdir()
        (root / "etc" / "init.d" / "mwan3").write_text("#!/bin/sh /etc/rc.common\n")
    for path in SYSFS.get(name, []):
        (root / path).mkdir(parents=True)
    return root


def snapshot(root):
    files = {}
    for base, _, names in os.walk(root / "etc"):
        for n in names:
            path = os.path.join(base, n)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def stubs(tmp_path, root):
    """bin/wgrouter runs this checkout's CLI on ``root``; bin/logger records."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "wgrouter"
    wrapper.write_text('#!/bin/sh\nPYTHONPATH="%s" exec "%s" -m wgrouter --root "%s" "$@"\n'
                       % (ROOT, sys.executable, root))
    wrapper.chmod(0o755)
    return bin_dir


def logger_stub(tmp_path):
    """A shell function, which ash prefers to its logger applet and to PATH."""
    return ('logger() { while IFS= read -r line; do echo "$* $line"; done >> "%s"; }\n'
            % (tmp_path / "syslog"))


def syslog(tmp_path):
    path = tmp_path / "syslog"
    return path.read_text().splitlines() if path.exists() else []


def run_uci_defaults(tmp_path, root, env=None):
    """Install the script into root and run /etc/uci-defaults the way OpenWrt
    does: each file sourced in a subshell from that directory, deleted when
    it returns 0.  Returns (rc of the script, stdout, still there?)."""
    bin_dir = stubs(tmp_path, root)
    defaults = root / "etc" / "uci-defaults"
    defaults.mkdir(exist_ok=True)
    with open(SCRIPT) as f:
        text = f.read()
    assert "/usr/bin/wgrouter setup" in text
    (defaults / "99-wgrouter").write_text(text.replace("/usr/bin/wgrouter", str(bin_dir / "wgrouter")))
    caller = logger_stub(tmp_path) + ('cd "%s" || exit 9\nfor f in *; do\n\t( . "./$f" ) && rm -f "$f"\n\techo "rc=$?" >&2\n'
              'done\n' % defaults)
    r = subprocess.run([BUSYBOX, "ash", "-c", caller], capture_output=True, text=True,
                       env=dict({"PATH": "%s:/usr/bin:/bin" % bin_dir}, **(env or {})))
    rc = [int(line[3:]) for line in r.stderr.splitlines() if line.startswith("rc=")]
    assert len(rc) == 1, r.stderr
    return rc[0], r.stdout, (defaults / "99-wgrouter").exists()


def prerm_text():
    with open(MAKEFILE) as f:
        text = f.read()
    start = text.index("define Package/wgrouter/prerm\n") + len("define Package/wgrouter/prerm\n")
    return text[start:text.index("\nendef", start)].replace("$$", "$") + "\n"


def run_prerm(tmp_path, root, env=None):
    """As default_prerm runs prerm-pkg: sourced in a subshell."""
    bin_dir = stubs(tmp_path, root)
    script = tmp_path / "wgrouter.prerm-pkg"
    script.write_text(prerm_text().replace("/usr/bin/wgrouter", str(bin_dir / "wgrouter")))
    r = subprocess.run([BUSYBOX, "ash", "-c", logger_stub(tmp_path) + '( . "%s" )' % script],
                       capture_output=True, text=True,
                       env=dict({"PATH": "%s:/usr/bin:/bin" % bin_dir}, **(env or {})))
    return r.returncode, r.stdout


def sections_of(text):
    return uci.parse(text, "wgrouter")


def only_nohostroute_changed(before, after, changed):
    """The network file differs only in one nohostroute line per changed tunnel."""
    diff = [d for d in difflib.ndiff(before.splitlines(), after.splitlines()) if d[:2] in ("- ", "+ ")]
    added = [d for d in diff if d.startswith("+ ")]
    removed = [d for d in diff if d.startswith("- ")]
    assert all(d.strip() == "+ option nohostroute '1'" or d == "+ \toption nohostroute '1'"
               for d in added), diff
    assert len(added) == len(changed), diff
    assert all("nohostroute" in d for d in removed), diff
    assert len(removed) == sum(1 for v in changed.values() if v is not None), diff


# ------------------------------------------------------------ the routers


@needs_busybox
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_router(tmp_path, name):
    wans, tunnels, mwan3, changed = EXPECTED[name]
    root = make_root(tmp_path, name)
    before = snapshot(root)
    rc, out, kept = run_uci_defaults(tmp_path, root)
    assert rc == 0 and not kept, out  # exit 0: OpenWrt deletes it
    after = snapshot(root)
    text = after["etc/config/wgrouter"].decode()
    sections = sections_of(text)
    if wans is None:
        assert text == before["etc/config/wgrouter"].decode()
        assert "edited by hand, left as it is" in out
    else:
        assert install.replaceable(text)  # a later 'wgrouter setup' may refresh it
        got = [(s.name, s.options.get("keepalive"), s.options.get("table"))
               for s in sections if s.type == "wan"]
        assert got == wans
        for s in sections:
            if s.type == "wan":
                assert s.options["track_ip"] == list(install.TRACK_IPS)
        assert [s.name for s in sections if s.type == "tunnel"] == tunnels
        main = [s for s in sections if s.type == "wgrouter"]
        assert [m.name for m in main] == ["main"]
        assert main[0].options.get("mwan3") == ("1" if mwan3 else None)
    # wgrouter's own loader takes what was written, and nothing defeats it
    cfg = config.load(str(root))
    assert [t.name for t in cfg.tunnels] == tunnels
    assert config.defeats(str(root)) == []
    # /etc/config/network: one line per tunnel, nothing else
    only_nohostroute_changed(before["etc/config/network"].decode(),
                             after["etc/config/network"].decode(), changed)
    assert install.read_record(str(root)) == {t: v or "-" for t, v in changed.items()}
    # every other file as it was
    others = set(after) - {"etc/config/wgrouter", "etc/config/network", install.RECORD}
    assert {k: after[k] for k in others} == {k: before[k] for k in others if k in after}
    # what it did is logged with the wgrouter tag
    logged = syslog(tmp_path)
    assert logged and all(line.startswith("-t wgrouter ") for line in logged)
    for tunnel in changed:
        assert any("%s: set option nohostroute '1'" % tunnel in line for line in logged), logged


@needs_busybox
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_running_twice_gives_the_same_result(tmp_path, name):
    root = make_root(tmp_path, name)
    run_uci_defaults(tmp_path, root)
    first = snapshot(root)
    rc, out, kept = run_uci_defaults(tmp_path, root)  # a reinstall or upgrade runs it again
    assert (rc, kept) == (0, False), out
    assert snapshot(root) == first


@needs_busybox
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_removal_restores_the_network_file(tmp_path, name):
    root = make_root(tmp_path, name)
    original = snapshot(root)["etc/config/network"]
    run_uci_defaults(tmp_path, root)
    rc, out = run_prerm(tmp_path, root, {"PKG_UPGRADE": "0"})
    assert rc == 0, out
    assert snapshot(root)["etc/config/network"] == original  # byte for byte
    assert not (root / install.RECORD).exists()
    assert not (root / "etc" / "wgrouter").exists()
    # netifd then pins the endpoint again: stock behaviour
    if EXPECTED[name][3]:
        assert any("nohostroute" in line and "as before the install" in line for line in syslog(tmp_path))
    # removing twice, or with nothing recorded, is no error
    assert run_prerm(tmp_path, root)[0] == 0
    assert snapshot(root)["etc/config/network"] == original


@needs_busybox
@pytest.mark.parametrize("env", [{"PKG_UPGRADE": "1"}, {"IPKG_INSTROOT": "/build/root"}],
                         ids=["upgrade", "image-build"])
def test_prerm_does_nothing_on_upgrade_or_in_an_image_build(tmp_path, env):
    root = make_root(tmp_path, "two_wireguard")
    run_uci_defaults(tmp_path, root)
    installed = snapshot(root)
    rc, out = run_prerm(tmp_path, root, env)
    assert rc == 0
    assert snapshot(root) == installed


@needs_busybox
def test_a_user_change_after_the_install_is_not_undone(tmp_path):
    root = make_root(tmp_path, "two_wireguard")
    run_uci_defaults(tmp_path, root)
    network = root / "etc/config/network"
    text = install.set_option(network.read_text(), "wg0", "nohostroute", "0")
    network.write_text(text)
    assert run_prerm(tmp_path, root)[0] == 0
    after = uci.load(str(network))
    wg = {s.name: s.options.get("nohostroute") for s in after if s.type == "interface"}
    assert wg["wg0"] == "0"  # the user's value stays
    assert wg["wg1"] == "0"  # put back
    # and a reinstall leaves a recorded tunnel alone: run, change it, run again
    root2 = make_root(tmp_path / "2", "two_wireguard")
    run_uci_defaults(tmp_path / "2", root2)
    network = root2 / "etc/config/network"
    network.write_text(install.set_option(network.read_text(), "wg0", "nohostroute", "0"))
    run_uci_defaults(tmp_path / "2", root2)
    assert {s.name: s.options.get("nohostroute") for s in uci.load(str(network))
            if s.type == "interface"}["wg0"] == "0"


@needs_busybox
def test_image_build_runs_nothing_and_keeps_the_script(tmp_path):
    root = make_root(tmp_path, "dhcp_lte_qmi")
    before = snapshot(root)
    rc, out, kept = run_uci_defaults(tmp_path, root, {"IPKG_INSTROOT": str(tmp_path / "build")})
    assert kept  # for the first boot
    assert {k: v for k, v in snapshot(root).items() if "uci-defaults" not in k} == before


@needs_busybox
def test_a_failure_keeps_the_script_for_the_next_boot(tmp_path):
    root = make_root(tmp_path, "dhcp_lte_qmi")
    (root / "etc/config/network").write_text("config interface 'wan'\n\toption proto 'dhcp\n")
    rc, out, kept = run_uci_defaults(tmp_path, root)
    assert kept
    assert "unterminated" in out
    assert any("unterminated" in line for line in syslog(tmp_path))


# ------------------------------------------------------------ whose file it is


def test_the_shipped_example_carries_a_valid_marker():
    with open(EXAMPLE) as f:
        text = f.read()
    assert install.replaceable(text), (
        "files/etc/config/wgrouter changed: set its marker line to '# wgrouter-setup %s ...' "
        "(python3 -c 'from wgrouter import install; print(install.digest(open(\"%s\").read()))')"
        % (install.digest(text), EXAMPLE))
    # the values written are the example's
    sections = {s.name: s for s in uci.parse(text, EXAMPLE)}
    assert tuple(sections["wan"].options["track_ip"]) == install.TRACK_IPS
    assert tuple(sections["wanb"].options["track_ip"]) == install.TRACK_IPS
    assert sections["wanb"].options["keepalive"] == str(install.LTE_KEEPALIVE)


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("option enabled '1'", "option enabled '0'", 1),
    lambda t: t.replace("#option check_interval '1.5'", "option check_interval '5'"),
    lambda t: t.replace("# keepalive for peers", "# my note: keepalive for peers"),  # a comment only
    lambda t: t + "\n",
    lambda t: t.replace("\n", "\r\n"),
    lambda t: "\n".join(l for l in t.split("\n") if not l.startswith("#")),  # as uci commit writes it
], ids=["value", "uncommented", "comment", "trailing-newline", "crlf", "saved-by-uci"])
def test_any_edit_of_the_example_makes_it_the_users(tmp_path, edit):
    root = make_root(tmp_path, "dhcp_lte_qmi")
    path = root / "etc/config/wgrouter"
    with open(path, newline="") as f:
        edited = edit(f.read())
    with open(path, "w", newline="") as f:
        f.write(edited)
    notes = install.setup(str(root))
    with open(path, newline="") as f:
        assert f.read() == edited
    assert any("edited by hand" in n for n in notes)


def test_a_written_file_is_refreshed_until_edited(tmp_path):
    root = make_root(tmp_path, "no_wireguard")
    install.setup(str(root))
    path = root / "etc/config/wgrouter"
    assert [s for s in sections_of(path.read_text()) if s.type == "tunnel"] == []
    # the user adds a WireGuard interface and runs 'wgrouter setup' again
    network = root / "etc/config/network"
    with open(os.path.join(ROUTERS, "dhcp_lte_qmi", "network")) as f:
        net = f.read()
    wg = net[net.index("config interface 'wg0'"):]
    network.write_text(network.read_text() + "\n" + wg)
    install.setup(str(root))
    text = path.read_text()
    assert [s.name for s in sections_of(text) if s.type == "tunnel"] == ["wg0"]
    # once edited, it is left alone, and the tunnel still gets nohostroute
    edited = text.replace("option enabled '1'", "option enabled '1'\n\toption check_interval '5'", 1)
    path.write_text(edited)
    network.write_text(network.read_text().replace("\toption nohostroute '1'\n", ""))
    (root / install.RECORD).unlink()
    install.setup(str(root))
    assert path.read_text() == edited
    assert "nohostroute '1'" in network.read_text()


def test_marker_digest_round_trip():
    text = "config wgrouter 'main'\n"
    stamped = install.stamp(text)
    assert install.replaceable(stamped) and stamped.endswith(text)
    assert not install.replaceable(stamped + "# more\n")
    assert not install.replaceable(text)  # no marker: someone's own file
    assert not install.replaceable(stamped + stamped)  # two markers
    assert install.replaceable(None)  # no file at all


# ------------------------------------------------------------ deciding


def parse(text):
    return uci.parse(text, "t")


NET = """
config interface 'wan'
	option device 'eth1'
	option proto 'dhcp'
	option metric '%s'

config interface 'wanb'
	option device 'eth2'
	option proto 'dhcp'

config interface 'wanc'
	option device 'eth3'
	option proto 'pppoe'
	option disabled '1'

config interface 'lte'
	option proto 'ncm'
	option device '/dev/cdc-wdm0'
	option metric '5'
"""
FW = """
config zone
	option name 'wan'
	list network 'wan'
	list network 'wanb'
	list network 'wanc'
	list network 'lte'
	list network 'missing'
"""


def test_order_metric_then_zone_order():
    p = install.plan(parse(NET % "10"), parse(FW))
    # wanb has no metric: netifd gives its default route metric 0, the kernel's favourite
    assert [w.name for w in p.wans] == ["wanb", "lte", "wan"]
    assert [w.lte for w in p.wans] == [False, True, False]
    skipped = dict(p.skipped)
    assert skipped["wanc"] == "disabled"
    assert "not an interface" in skipped["missing"]
    p = install.plan(parse(NET % "0"), parse(FW))
    assert [w.name for w in p.wans] == ["wan", "wanb", "lte"]


def test_a_cgnat_address_netifd_has_now_counts_as_lte():
    p = install.plan(parse(NET % "10"), parse(FW), addresses={"wanb": ["100.64.7.9"], "wan": ["10.0.0.2"]})
    assert {w.name: w.lte for w in p.wans} == {"wanb": True, "lte": True, "wan": False}
    assert "100.64.7.9" in [w for w in p.wans if w.name == "wanb"][0].why


def test_wifi_client_and_disabled_client():
    net = "config interface 'wwan'\n\toption proto 'static'\n\toption ipaddr '192.168.43.2'\n"
    fw = "config zone\n\toption name 'wan'\n\tlist network 'wwan'\n"
    wifi = "config wifi-iface\n\toption mode 'sta'\n\toption network 'wwan'\n"
    assert [w.name for w in install.plan(parse(net), parse(fw), parse(wifi)).wans] == ["wwan"]
    off = wifi + "\toption disabled '1'\n"
    assert install.plan(parse(net), parse(fw), parse(off)).wans == ()


def test_a_modem_not_found_is_written_commented_out(tmp_path):
    root = make_root(tmp_path, "dhcp_lte_qmi")
    shutil.rmtree(root / "sys")  # the modem is not plugged in
    notes = install.setup(str(root))
    text = (root / "etc/config/wgrouter").read_text()
    assert [s.name for s in sections_of(text) if s.type == "wan"] == ["wan"]
    assert "#config wan 'lte'" in text and "set option device" in text
    assert any("WAN 'lte' written commented out" in n for n in notes)
    config.load(str(root))


def test_no_wan_zone_leaves_the_example(tmp_path):
    root = make_root(tmp_path, "dhcp_lte_qmi")
    (root / "etc/config/firewall").write_text("config defaults\n\toption input 'REJECT'\n")
    before = snapshot(root)
    notes = install.setup(str(root))
    assert snapshot(root) == before
    assert any("no up-link" in n for n in notes)


def test_dry_run_changes_nothing(tmp_path):
    root = make_root(tmp_path, "two_wireguard")
    before = snapshot(root)
    notes = install.setup(str(root), dry_run=True)
    assert snapshot(root) == before
    assert any("config tunnel 'wg1'" in n for n in notes)


# ------------------------------------------------------------ editing the network file


@pytest.mark.parametrize("before,after", [
    ("config interface 'wg0'\n\toption proto 'wireguard'\n",
     "config interface 'wg0'\n\toption nohostroute '1'\n\toption proto 'wireguard'\n"),
    # the file's own layout: spaces, double quotes, CRLF, no final newline
    ('config interface "wg0"\n    option proto "wireguard"\n',
     'config interface "wg0"\n    option nohostroute \'1\'\n    option proto "wireguard"\n'),
    ("config interface 'wg0'\r\n\toption proto 'wireguard'\r\n",
     "config interface 'wg0'\r\n\toption nohostroute '1'\r\n\toption proto 'wireguard'\r\n"),
    ("config interface 'wg0'", "config interface 'wg0'\n\toption nohostroute '1'\n"),
    # an existing value is replaced where it is, comments kept
    ("# vpn\nconfig interface 'wg0' # office\n\to nohostroute 0 # off\n\toption mtu '1420'\n",
     "# vpn\nconfig interface 'wg0' # office\n\toption nohostroute '1'\n\toption mtu '1420'\n"),
    # a section given twice: every block is looked at
    ("config interface 'wg0'\n\toption proto 'wireguard'\n\nconfig interface 'lan'\n\toption proto "
     "'static'\n\nconfig interface 'wg0'\n\toption nohostroute '0'\n",
     "config interface 'wg0'\n\toption proto 'wireguard'\n\nconfig interface 'lan'\n\toption proto "
     "'static'\n\nconfig interface 'wg0'\n\toption nohostroute '1'\n"),
], ids=["plain", "layout", "crlf", "no-newline", "existing", "twice"])
def test_set_option_touches_one_line(before, after):
    assert install.set_option(before, "wg0", "nohostroute", "1") == after


@pytest.mark.parametrize("text", [
    # two statements on one line: replacing the line would lose the other
    "config interface 'wg0'\n\toption nohostroute '0'; option mtu '1400'\n",
    # a multi-line value that looks like an option line
    "config interface 'wg0'\n\toption note 'a\noption nohostroute 0'\n",
])
def test_set_option_refuses_what_it_cannot_do_alone(text):
    with pytest.raises(install.SetupError, match="by hand"):
        install.set_option(text, "wg0", "nohostroute", "1")


def test_set_option_removes_again():
    text = "config interface 'wg0' # x\n\toption proto 'wireguard'\n"
    pinned = install.set_option(text, "wg0", "nohostroute", "1")
    assert install.set_option(pinned, "wg0", "nohostroute", None) == text


def test_network_file_keeps_mode(tmp_path):
    root = make_root(tmp_path, "dhcp_lte_qmi")
    (root / "etc/config/network").chmod(0o600)
    install.setup(str(root))
    assert os.stat(root / "etc/config/network").st_mode & 0o777 == 0o600
    assert not [n for n in os.listdir(root / "etc/config") if n.startswith(".")]


def test_check_config_names_an_unpinned_tunnel_as_an_error(tmp_path, capsys):
    from wgrouter import cli
    root = make_root(tmp_path, "dhcp_lte_qmi")
    install.setup(str(root))
    assert cli.main(["check-config", "--root", str(root)]) == 0
    network = root / "etc/config/network"
    network.write_text(network.read_text().replace("\toption nohostroute '1'\n", ""))
    capsys.readouterr()
    assert cli.main(["check-config", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "option 'nohostroute': is not set" in err
    assert "uci set network.wg0.nohostroute='1'" in err


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_prerm_passes_shellcheck():
    r = subprocess.run(["shellcheck", "-s", "sh", "-"], input=prerm_text(), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout


def test_an_unusual_line_is_left_to_the_user(tmp_path):
    root = make_root(tmp_path, "dhcp_lte_qmi")
    network = root / "etc/config/network"
    network.write_text(network.read_text().replace(
        "\toption listen_port '51820'\n", "\toption listen_port '51820'; option nohostroute '0'\n"))
    before = network.read_text()
    notes = install.setup(str(root))
    assert network.read_text() == before
    assert any("set option nohostroute '1' by hand" in n for n in notes), notes
    assert install.read_record(str(root)) == {}
    assert config.defeats(str(root))  # check-config keeps naming it


def test_live_addresses_from_netifd(tmp_path, monkeypatch):
    fake = tmp_path / "ubus"
    fake.write_text("#!/bin/sh\n[ \"$*\" = 'call network.interface dump' ] || exit 1\n"
                    "echo '{\"interface\": [{\"interface\": \"wwan\", \"up\": true, "
                    "\"ipv4-address\": [{\"address\": \"100.80.1.2\", \"mask\": 10}]}, "
                    "{\"interface\": \"wan\", \"up\": false}]}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (tmp_path, os.environ["PATH"]))
    assert install.live_addresses() == {"wwan": ["100.80.1.2"], "wan": []}
    fake.write_text("#!/bin/sh\necho 'Command failed: Not found' >&2\nexit 4\n")  # netifd not up yet
    assert install.live_addresses() == {}
