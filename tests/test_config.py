import base64
import dataclasses
import os
import pathlib

import pytest

import wgrouter
from wgrouter import config, model

REPO = pathlib.Path(__file__).resolve().parent.parent


def key(n):
    return base64.b64encode(bytes([n]) * 32).decode()


PRIV = key(1)
HQ = key(2)
BRANCH = key(3)
OFF = key(4)
PSK = key(5)

NETWORK = """
config interface 'loopback'
	option device 'lo'
	option proto 'static'
	option ipaddr '127.0.0.1'
	option netmask '255.0.0.0'

config globals 'globals'
	option ula_prefix 'fd12:3456:789a::/48'

config device
	option name 'br-lan'
	option type 'bridge'
	list ports 'lan1'
	list ports 'lan2'

config interface 'lan'
	option device 'br-lan'
	option proto 'static'
	option ipaddr '192.168.1.1'
	option netmask '255.255.255.0'

config interface 'wan'
	option device 'eth1'
	option proto 'dhcp'

config interface 'wan6'
	option device 'eth1'
	option proto 'dhcpv6'

config interface 'wanb'
	option device 'eth2'
	option proto 'dhcp'
	option metric '20'

config interface 'wg0'
	option proto 'wireguard'
	option private_key '%(PRIV)s'
	option listen_port '51820'
	list addresses 'fd99::2/64'
	list addresses '10.99.0.2/24'
	option nohostroute '1'

config wireguard_wg0 'hq'
	option description 'Head office'
	option public_key '%(HQ)s'
	option preshared_key '%(PSK)s'
	option endpoint_host 'vpn.example.net'
	list allowed_ips '10.99.0.0/24'
	list allowed_ips '192.168.10.0/24'
	option route_allowed_ips '1'
	option persistent_keepalive '25'

config wireguard_wg0
	option public_key '%(BRANCH)s'
	option endpoint_host '203.0.113.7'
	option endpoint_port '51821'
	option allowed_ips '10.98.0.0/24 10.97.0.0/24'
	option persistent_keepalive '25'

config wireguard_wg0
	option public_key '%(OFF)s'
	option endpoint_host 'old.example.net'
	option disabled '1'
""" % dict(PRIV=PRIV, HQ=HQ, BRANCH=BRANCH, OFF=OFF, PSK=PSK)

WGROUTER = """
config wgrouter 'main'
	option enabled '1'
	option check_interval '0.5'

config wan 'wan'
	list track_ip '192.0.2.1'
	list dns_server '192.0.2.53'

config wan 'wanb'
	option keepalive '25'
	list track_ip '198.51.100.1'

config tunnel 'wg0'
	option probe '10.99.0.1'

config peer
	option tunnel 'wg0'
	option public_key '%(HQ)s'
	list endpoint 'vpn2.example.net:443'
	list endpoint '[2001:db8::7]:51820'
	option probe '10.99.0.254'
""" % dict(HQ=HQ)


def write(root, network=NETWORK, wgrouter=WGROUTER):
    etc = root / "etc" / "config"
    etc.mkdir(parents=True, exist_ok=True)
    if network is not None:
        (etc / "network").write_text(network)
    if wgrouter is not None:
        (etc / "wgrouter").write_text(wgrouter)
    return str(root)


def test_realistic_config(tmp_path):
    cfg = config.load(write(tmp_path))
    assert cfg == model.Config(
        settings=model.Settings(check_interval=0.5),
        wans=(
            model.Wan("wan", "eth1", None, ("192.0.2.1",), ("192.0.2.53",), None),
            model.Wan("wanb", "eth2", 25, ("198.51.100.1",), (), None),
        ),
        tunnels=(model.Tunnel(
            name="wg0",
            peers=(
                model.Peer("wg0", "hq", HQ, (
                    model.Endpoint("vpn.example.net", 51820),
                    model.Endpoint("vpn2.example.net", 443),
                    model.Endpoint("2001:db8::7", 51820),
                ), ("10.99.0.0/24", "192.168.10.0/24"), 25, "10.99.0.254"),
                # the tunnel's probe 10.99.0.1 is not in its allowed_ips: no probe
                model.Peer("wg0", "@wireguard_wg0[1]", BRANCH, (model.Endpoint("203.0.113.7", 51821),),
                           ("10.98.0.0/24", "10.97.0.0/24"), 25, None),
            ),
            addresses=("fd99::2/64", "10.99.0.2/24"),
            listen_port=51820,
            probe_source="10.99.0.2",
        ),),
        mqtt=model.MqttSettings(),
    )
    assert config.check(str(tmp_path)) == [PROBE_WARNING % tmp_path]


def test_track_ips_of_both_families_and_holddown_max(tmp_path):
    wg = WGROUTER.replace("\tlist track_ip '198.51.100.1'\n",
                          "\tlist track_ip '198.51.100.1'\n\tlist track_ip '2001:db8:ffff::1'\n")
    wg = wg.replace("option check_interval '0.5'", "option check_interval '0.5'\n\toption holddown_max '120'")
    cfg = config.load(write(tmp_path, wgrouter=wg))
    assert cfg.wan("wanb").track_ips == ("198.51.100.1", "2001:db8:ffff::1")
    assert cfg.settings.holddown_max == 120.0
    assert model.Settings().holddown_max == 300.0  # a few minutes by default


PROBE_WARNING = ("%s/etc/config/wgrouter: section 'wg0' (tunnel), option 'probe': '10.99.0.1' is not in the "
                 "allowed_ips of peer '@wireguard_wg0[1]' (10.98.0.0/24, 10.97.0.0/24): that peer gets no "
                 "in-tunnel probe; give it one in a 'config peer' section")


def test_tunnel_probe_only_for_peers_whose_allowed_ips_hold_it(tmp_path):
    # another peer's answer must not count for this one
    wg = WGROUTER.replace("\toption probe '10.99.0.254'\n", "")
    root = write(tmp_path, wgrouter=wg)
    hq, branch = config.load(root).tunnels[0].peers
    assert (hq.probe, branch.probe) == ("10.99.0.1", None)
    assert config.check(root) == [PROBE_WARNING % tmp_path]
    # the branch's own probe, inside its allowed_ips: no warning
    wg += "config peer\n\toption tunnel 'wg0'\n\toption public_key '%s'\n\toption probe '10.97.0.9'\n" % BRANCH
    root = write(tmp_path, wgrouter=wg)
    hq, branch = config.load(root).tunnels[0].peers
    assert (hq.probe, branch.probe) == ("10.99.0.1", "10.97.0.9")
    assert config.check(root) == []

    # WireGuard sends to the longest matching prefix: with a default route,
    # the branch holds any address but 10.99.0.0/24 goes to hq
    def probes(wg):
        root = write(tmp_path, network=NETWORK.replace("'10.98.0.0/24 10.97.0.0/24'", "'0.0.0.0/0'"),
                     wgrouter=wg)
        return [p.probe for p in config.load(root).tunnels[0].peers], config.check(root)
    assert probes(WGROUTER.replace("'10.99.0.1'", "'10.0.0.1'")) == (["10.99.0.254", "10.0.0.1"], [])
    assert probes(WGROUTER) == (["10.99.0.254", None], [
        "%s/etc/config/wgrouter: section 'wg0' (tunnel), option 'probe': '10.99.0.1' is in the allowed_ips "
        "of peer '@wireguard_wg0[1]' (0.0.0.0/0), but WireGuard sends it to peer 'hq', whose allowed_ips "
        "hold it more narrowly: that peer gets no in-tunnel probe; give it one in a 'config peer' section"
        % tmp_path])
    # an IPv6 probe is in no IPv4 network
    assert probes(WGROUTER.replace("'10.99.0.1'", "'fd99::1'"))[0] == ["10.99.0.254", None]
    # the peer's own probe must reach that peer too
    own = "config peer\n\toption tunnel 'wg0'\n\toption section '@wireguard_wg0[1]'\n\toption probe '%s'\n"
    assert probes(WGROUTER + own % "10.0.0.1") == (["10.99.0.254", "10.0.0.1"], [])
    with pytest.raises(config.ConfigError, match=r"section '@peer\[1\]' \(peer\), option 'probe': '10.99.0.5' is "
                       r"in the allowed_ips of peer '@wireguard_wg0\[1\]' \(0.0.0.0/0\), but WireGuard sends it "
                       r"to peer 'hq', whose allowed_ips hold it more narrowly: it would test another peer"):
        probes(WGROUTER + own % "10.99.0.5")


def test_wan_order_is_file_order(tmp_path):
    wg = WGROUTER.replace("config wan 'wan'\n", "config wan 'wanb'\n", 1).replace(
        "config wan 'wanb'\n\toption keepalive", "config wan 'wan'\n\toption keepalive", 1)
    cfg = config.load(write(tmp_path, wgrouter=wg))
    assert [w.name for w in cfg.wans] == ["wanb", "wan"]
    assert cfg.wans[0].device == "eth2"


def test_no_tunnels_is_allowed_and_defaults(tmp_path):
    cfg = config.load(write(tmp_path, wgrouter="config wan 'wan'\nconfig wan 'wanb'\n"))
    assert cfg.tunnels == ()
    assert cfg.settings == model.Settings()
    assert cfg.mqtt == model.MqttSettings()
    assert [w.device for w in cfg.wans] == ["eth1", "eth2"]


def test_disabled_tunnel_is_skipped(tmp_path):
    wg = WGROUTER.replace("config tunnel 'wg0'\n", "config tunnel 'wg0'\n\toption enabled 'no'\n")
    assert config.load(write(tmp_path, wgrouter=wg)).tunnels == ()


def test_tunnel_by_interface_option_and_peer_by_section(tmp_path):
    wg = """
config wan 'wan'
config wan 'wanb'
config tunnel 'office'
	option interface 'wg0'
config peer
	option tunnel 'wg0'
	option section '@wireguard_wg0[1]'
	list endpoint 'branch.example.org'
"""
    cfg = config.load(write(tmp_path, wgrouter=wg))
    (tunnel,) = cfg.tunnels
    assert tunnel.name == "wg0"
    hq, branch = tunnel.peers
    assert hq.endpoints == (model.Endpoint("vpn.example.net", 51820),)
    assert hq.probe is None
    # the extra endpoint's port defaults to 51820, not to netifd's port
    assert branch.endpoints == (model.Endpoint("203.0.113.7", 51821), model.Endpoint("branch.example.org", 51820))


def test_peer_without_netifd_endpoint_uses_extras_or_is_left_alone(tmp_path):
    net = NETWORK.replace("\toption endpoint_host '203.0.113.7'\n", "")
    root = write(tmp_path, network=net)
    cfg = config.load(root)
    assert [p.section for p in cfg.tunnels[0].peers] == ["hq"]
    assert any("'@wireguard_wg0[1]'" in w and "endpoint_host" in w and "leaves it alone" in w
               for w in config.check(root))
    wg = WGROUTER + "config peer\n\toption tunnel wg0\n\toption public_key '%s'\n\tlist endpoint 'b.example:7'\n" % BRANCH
    cfg = config.load(write(tmp_path, network=net, wgrouter=wg))
    assert cfg.tunnels[0].peers[1].endpoints == (model.Endpoint("b.example", 7),)


def test_addresses_as_option_and_no_ipv4(tmp_path):
    net = NETWORK.replace("\tlist addresses 'fd99::2/64'\n\tlist addresses '10.99.0.2/24'\n",
                          "\toption addresses 'fd99::2/64 fd98::2'\n")
    tunnel = config.load(write(tmp_path, network=net)).tunnels[0]
    assert tunnel.addresses == ("fd99::2/64", "fd98::2")
    assert tunnel.probe_source is None


def test_bracketed_ipv6_endpoint_host(tmp_path):
    net = NETWORK.replace("'203.0.113.7'", "'[2001:db8::9]'")
    peer = config.load(write(tmp_path, network=net)).tunnels[0].peers[1]
    assert peer.endpoints == (model.Endpoint("2001:db8::9", 51821),)


@pytest.mark.parametrize("word,value", [
    ("1", True), ("yes", True), ("on", True), ("true", True), ("enabled", True), ("True", True),
    ("0", False), ("no", False), ("off", False), ("false", False), ("disabled", False),
])
def test_uci_booleans(tmp_path, word, value):
    wg = WGROUTER.replace("option enabled '1'", "option enabled '%s'\n\toption mwan3 '%s'" % (word, word))
    settings = config.load(write(tmp_path, wgrouter=wg)).settings
    assert (settings.enabled, settings.mwan3) == (value, value)


# (id, interface section in network, expected device)
DEVICES = [
    ("device", "option proto 'dhcp'\n\toption device 'eth0.2'", "eth0.2"),
    ("old-ifname", "option proto 'dhcp'\n\toption ifname 'eth0.2'", "eth0.2"),
    ("pppoe", "option proto 'pppoe'\n\toption device 'eth0.7'", "pppoe-wanb"),
    ("3g", "option proto '3g'\n\toption device '/dev/ttyUSB0'", "3g-wanb"),
    ("old-bridge", "option type 'bridge'\n\toption ifname 'eth0 eth3'\n\toption proto 'dhcp'", "br-wanb"),
    ("alias", "option device '@wan'\n\toption proto 'static'", "eth1"),
    ("qmi-sysfs", "option proto 'qmi'\n\toption device '/dev/cdc-wdm0'", "wwan0"),
    # ModemManager: the modem's sysfs path; the network device sits in one of its USB interfaces
    ("modemmanager", "option proto 'modemmanager'\n\toption device '/sys/devices/platform/usb1/1-1'",
     "wwan1"),
]


@pytest.mark.parametrize("body,device", [d[1:] for d in DEVICES], ids=[d[0] for d in DEVICES])
def test_wan_device(tmp_path, body, device):
    net = NETWORK.replace("\toption device 'eth2'\n\toption proto 'dhcp'", "\t" + body)
    (tmp_path / "sys/class/usbmisc/cdc-wdm0/device/net/wwan0").mkdir(parents=True)
    (tmp_path / "sys/devices/platform/usb1/1-1/1-1:1.0/driver").mkdir(parents=True)
    (tmp_path / "sys/devices/platform/usb1/1-1/1-1:1.4/net/wwan1/queues").mkdir(parents=True)
    cfg = config.load(write(tmp_path, network=net))
    assert cfg.wan("wanb").device == device


def test_wan_device_option_overrides_network(tmp_path):
    wg = WGROUTER.replace("config wan 'wanb'\n", "config wan 'wanb'\n\toption device 'usb0'\n")
    assert config.load(write(tmp_path, wgrouter=wg)).wan("wanb").device == "usb0"


def test_wan_not_in_network_with_device_is_a_warning(tmp_path):
    wg = WGROUTER + "config wan 'wanc'\n\toption device 'wwan1'\n"
    root = write(tmp_path, wgrouter=wg)
    assert config.load(root).wan("wanc").device == "wwan1"
    assert any(w.startswith(os.path.join(root, "etc/config/wgrouter") + ": section 'wanc' (wan): ")
               and "interface 'wanc' is not in" in w for w in config.check(root))


def test_mqtt_section(tmp_path):
    wg = WGROUTER + """
config mqtt 'mqtt'
	option enabled '1'
	option host 'broker.lan'
	option port '8883'
	option protocol '5'
	option username 'router'
	option password 'hunter2'
	option tls '1'
	option ca_file '/etc/ssl/ca.pem'
	option prefix 'home/wgrouter'
	option identity 'gw1'
	option heartbeat '60'
	option qos '2'
	option ha_discovery '1'
	option ha_prefix 'ha'
	option queue_max '10'
"""
    assert config.load(write(tmp_path, wgrouter=wg)).mqtt == model.MqttSettings(
        enabled=True, host="broker.lan", port=8883, protocol="5", username="router", password="hunter2",
        tls=True, ca_file="/etc/ssl/ca.pem", cert_file=None, key_file=None, prefix="home/wgrouter",
        identity="gw1", heartbeat=60.0, qos=2, ha_discovery=True, ha_prefix="ha", queue_max=10)


def test_mqtt_covers_every_model_field(tmp_path):
    # a field added to model.MqttSettings must become a known option
    wg = WGROUTER + "config mqtt 'mqtt'\n" + "".join(
        "\toption %s '%s'\n" % (f.name, {"bool": "0"}.get(type(f.default).__name__, "1"))
        for f in dataclasses.fields(model.MqttSettings) if f.name not in ("protocol", "host", "prefix",
                                                                          "ha_prefix", "port", "qos"))
    config.load(write(tmp_path, wgrouter=wg))


WG = "/etc/config/wgrouter"
NET = "/etc/config/network"

# (id, wgrouter text, network text, file, section, option, message after "option '...': " or the place)
ERRORS = [
    ("wan-keepalive", WGROUTER.replace("option keepalive '25'", "option keepalive '-3'"), NETWORK,
     WG, "wanb", "keepalive", "'-3' is not an integer between 0 and 65535"),
    ("check-interval-zero", WGROUTER.replace("'0.5'", "'0'"), NETWORK,
     WG, "main", "check_interval", "'0' is not a number greater than 0"),
    ("check-interval-word", WGROUTER.replace("'0.5'", "'fast'"), NETWORK,
     WG, "main", "check_interval", "'fast' is not a number of at least 0 (e.g. 2.5)"),
    ("check-interval-nan", WGROUTER.replace("'0.5'", "'nan'"), NETWORK,
     WG, "main", "check_interval", "'nan' is not a number of at least 0 (e.g. 2.5)"),
    ("holddown-negative", WGROUTER.replace("'0.5'", "'1'\n\toption failback_holddown '-1'"), NETWORK,
     WG, "main", "failback_holddown", "'-1' is not a number of at least 0 (e.g. 2.5)"),
    ("holddown-max-negative", WGROUTER.replace("'0.5'", "'1'\n\toption holddown_max '-5'"), NETWORK,
     WG, "main", "holddown_max", "'-5' is not a number of at least 0 (e.g. 2.5)"),
    ("enabled-word", WGROUTER.replace("option enabled '1'", "option enabled 'maybe'"), NETWORK,
     WG, "main", "enabled", "'maybe' is not a boolean (1/0, yes/no, on/off, true/false, enabled/disabled)"),
    ("events-range", WGROUTER.replace("'0.5'", "'1'\n\toption events '2000'"), NETWORK,
     WG, "main", "events", "'2000' is not an integer between 1 and 1024"),
    ("ttl-order", WGROUTER.replace("'0.5'", "'1'\n\toption dns_ttl_min '600'\n\toption dns_ttl_max '60'"),
     NETWORK, WG, "main", "dns_ttl_max", "'60' is less than dns_ttl_min (600)"),
    ("backoff-order", WGROUTER.replace("'0.5'", "'1'\n\toption backoff_max '1'"), NETWORK,
     WG, "main", "backoff_max", "'1' is less than backoff_base (2)"),
    ("main-unknown-option", WGROUTER.replace("'0.5'", "'1'\n\toption colour 'red'"), NETWORK,
     WG, "main", "colour", "unknown option (known: enabled, check_interval,"),
    ("main-twice", WGROUTER + "config wgrouter 'other'\n", NETWORK,
     WG, "other", None, "only one 'config wgrouter' section is allowed, and it must be named 'main'"),
    # the init script reads 'main' only: no other section may hold the settings
    ("main-second", "config wgrouter 'other'\n\toption enabled '0'\n" + WGROUTER, NETWORK,
     WG, "other", None, "only one 'config wgrouter' section is allowed, and it must be named 'main' "
     "(config wgrouter 'main'): the init script reads no other, so its options here (option enabled too) "
     "would be ignored"),
    ("main-anonymous", WGROUTER.replace("config wgrouter 'main'", "config wgrouter")
     .replace("option enabled '1'", "option enabled '0'"), NETWORK,
     WG, "@wgrouter[0]", None, "only one 'config wgrouter' section is allowed, and it must be named 'main'"),
    ("main-other-name", WGROUTER.replace("config wgrouter 'main'", "config wgrouter 'settings'"), NETWORK,
     WG, "settings", None, "only one 'config wgrouter' section is allowed, and it must be named 'main'"),
    ("unknown-section", WGROUTER + "config bogus\n", NETWORK,
     WG, "@bogus[0]", None, "unknown section type 'bogus' (known: wgrouter, wan, tunnel, peer, mqtt)"),
    ("list-for-option", WGROUTER.replace("option keepalive '25'", "list keepalive '25'"), NETWORK,
     WG, "wanb", "keepalive", "is a list; give it once, with 'option'"),
    ("track-ip-name", WGROUTER.replace("'198.51.100.1'", "'one.one.one.one'"), NETWORK,
     WG, "wanb", "track_ip", "'one.one.one.one' is not an IP address"),
    ("dns-server", WGROUTER.replace("'192.0.2.53'", "'dns.google'"), NETWORK,
     WG, "wan", "dns_server", "'dns.google' is not an IP address"),
    ("table-zero", WGROUTER.replace("option keepalive '25'", "option table '0'"), NETWORK,
     WG, "wanb", "table", "'0' is not an integer between 1 and 4294967295"),
    ("wan-unknown-option", WGROUTER.replace("option keepalive '25'", "option metric '5'"), NETWORK,
     WG, "wanb", "metric", "unknown option (known: interface, device, keepalive, track_ip, dns_server, table)"),
    ("wan-not-in-network", WGROUTER + "config wan 'wanc'\n", NETWORK,
     WG, "wanc", None, "interface 'wanc' is not in /etc/config/network; set option device"),
    # proto dhcp without a device: a Wi-Fi client uplink, attached from /etc/config/wireless
    # ModemManager keeps the modem's sysfs path in option device
    ("wan-modemmanager", WGROUTER, NETWORK.replace(
        "option device 'eth2'\n\toption proto 'dhcp'",
        "option device '/sys/devices/platform/soc/11200000.usb/usb1/1-1'\n\toption proto 'modemmanager'"),
     WG, "wanb", None, "interface 'wanb' in /etc/config/network (proto modemmanager) names the modem "
     "'/sys/devices/platform/soc/11200000.usb/usb1/1-1', not a network device; set option device in this "
     "'config wan' section to the modem's network device (e.g. 'wwan0')"),
    ("wan-modem-no-sysfs", WGROUTER, NETWORK.replace("option device 'eth2'\n\toption proto 'dhcp'",
                                                     "option device '/dev/cdc-wdm1'\n\toption proto 'qmi'"),
     WG, "wanb", None, "interface 'wanb' in /etc/config/network (proto qmi) names the modem '/dev/cdc-wdm1', "
     "not a network device; set option device"),
    ("wan-twice", WGROUTER + "config wan\n\toption interface 'wan'\n", NETWORK,
     WG, "@wan[2]", "interface", "WAN 'wan' is already given in section 'wan'"),
    ("wan-anonymous-unnamed", WGROUTER + "config wan\n\toption device 'eth5'\n", NETWORK,
     WG, "@wan[2]", None, "needs a section name or option interface"),
    ("no-wan", "config tunnel 'wg0'\n", NETWORK,
     WG, None, None, "no WAN: add a 'config wan' section for each uplink, primary first"),
    ("tunnel-not-in-network", WGROUTER + "config tunnel 'wg9'\n", NETWORK,
     WG, "wg9", None, "interface 'wg9' is not in /etc/config/network"),
    ("tunnel-interface-not-in-network", WGROUTER + "config tunnel 'x'\n\toption interface 'wg9'\n", NETWORK,
     WG, "x", "interface", "interface 'wg9' is not in /etc/config/network"),
    ("tunnel-not-wireguard", WGROUTER + "config tunnel 'lan'\n", NETWORK,
     WG, "lan", None, "interface 'lan' in /etc/config/network has proto 'static', not 'wireguard'"),
    ("tunnel-twice", WGROUTER + "config tunnel\n\toption interface 'wg0'\n", NETWORK,
     WG, "@tunnel[1]", None, "tunnel 'wg0' is already given"),
    ("tunnel-probe", WGROUTER.replace("option probe '10.99.0.1'", "option probe 'gateway'"), NETWORK,
     WG, "wg0", "probe", "'gateway' is not an IP address"),
    ("tunnel-unknown-option", WGROUTER.replace("option probe '10.99.0.1'", "option mtu '1280'"), NETWORK,
     WG, "wg0", "mtu", "unknown option (known: interface, enabled, probe)"),
    ("peer-key-not-in-tunnel", WGROUTER.replace("'%s'" % HQ, "'%s'" % key(9)), NETWORK,
     WG, "@peer[0]", "public_key", "'%s' is not a peer of interface 'wg0' in /etc/config/network" % key(9)),
    ("peer-key-format", WGROUTER.replace("'%s'" % HQ, "'abc='"), NETWORK,
     WG, "@peer[0]", "public_key", "'abc=' is not a WireGuard key (44 characters of base64 ending in '=')"),
    ("peer-section-not-found", WGROUTER.replace("option public_key '%s'" % HQ, "option section 'nope'"), NETWORK,
     WG, "@peer[0]", "section", "'nope' is not a wireguard_wg0 section in /etc/config/network"),
    ("peer-key-and-section", WGROUTER.replace("option tunnel 'wg0'", "option tunnel 'wg0'\n\toption section 'hq'"),
     NETWORK, WG, "@peer[0]", None, "needs exactly one of option public_key and option section"),
    ("peer-no-tunnel", WGROUTER.replace("\toption tunnel 'wg0'\n", ""), NETWORK,
     WG, "@peer[0]", None, "has no option tunnel"),
    ("peer-unmanaged-tunnel", WGROUTER.replace("option tunnel 'wg0'", "option tunnel 'wg7'"), NETWORK,
     WG, "@peer[0]", "tunnel", "'wg7' has no 'config tunnel' section in /etc/config/wgrouter"),
    ("peer-twice", WGROUTER + "config peer\n\toption tunnel 'wg0'\n\toption section 'hq'\n", NETWORK,
     WG, "@peer[1]", None, "peer 'hq' of 'wg0' already has extras in section '@peer[0]'"),
    ("peer-endpoint-port", WGROUTER.replace("vpn2.example.net:443", "vpn2.example.net:99999"), NETWORK,
     WG, "@peer[0]", "endpoint", "'vpn2.example.net:99999' has a port that is not between 1 and 65535"),
    ("peer-endpoint-v6-no-brackets", WGROUTER.replace("'[2001:db8::7]:51820'", "'2001:db8::7'"), NETWORK,
     WG, "@peer[0]", "endpoint", "'2001:db8::7' is an IPv6 address without a port: write it as [address]:port"),
    ("peer-endpoint-unclosed", WGROUTER.replace("'[2001:db8::7]:51820'", "'[2001:db8::7'"), NETWORK,
     WG, "@peer[0]", "endpoint", "'[2001:db8::7' is missing the closing ']'"),
    ("peer-endpoint-bad-host", WGROUTER.replace("vpn2.example.net:443", "vpn_2!:443"), NETWORK,
     WG, "@peer[0]", "endpoint", "'vpn_2!:443' is not a host name or IP address with an optional :port"),
    ("peer-endpoint-dotted-number", WGROUTER.replace("vpn2.example.net:443", "10.1:443"), NETWORK,
     WG, "@peer[0]", "endpoint", "'10.1:443' is not a host name or IP address with an optional :port"),
    ("peer-probe", WGROUTER.replace("'10.99.0.254'", "'10.99.0.999'"), NETWORK,
     WG, "@peer[0]", "probe", "'10.99.0.999' is not an IP address"),
    ("peer-probe-outside-allowed-ips", WGROUTER.replace("'10.99.0.254'", "'10.98.0.1'"), NETWORK,
     WG, "@peer[0]", "probe", "'10.98.0.1' is not in the allowed_ips of peer 'hq' "
     "(10.99.0.0/24, 192.168.10.0/24): it would test another peer, or none"),
    ("net-public-key", WGROUTER, NETWORK.replace("'%s'" % BRANCH, "'not-a-key'"),
     NET, "@wireguard_wg0[1]", "public_key", "'not-a-key' is not a WireGuard key (44 characters of base64 ending in '=')"),
    ("net-no-public-key", WGROUTER, NETWORK.replace("\toption public_key '%s'\n" % BRANCH, ""),
     NET, "@wireguard_wg0[1]", None, "has no option public_key"),
    ("net-duplicate-key", WGROUTER, NETWORK.replace("'%s'" % BRANCH, "'%s'" % HQ),
     NET, "@wireguard_wg0[1]", "public_key", "'%s' is also the key of peer 'hq'" % HQ),
    ("net-endpoint-port", WGROUTER, NETWORK.replace("'51821'", "'0'"),
     NET, "@wireguard_wg0[1]", "endpoint_port", "'0' is not an integer between 1 and 65535"),
    ("net-endpoint-host", WGROUTER, NETWORK.replace("'203.0.113.7'", "'bad host'"),
     NET, "@wireguard_wg0[1]", "endpoint_host", "'bad host' is not a host name or IP address"),
    ("net-allowed-ips", WGROUTER, NETWORK.replace("'192.168.10.0/24'", "'192.168.10.0/33'"),
     NET, "hq", "allowed_ips", "'192.168.10.0/33' is not an IP network (address/prefix)"),
    ("net-keepalive", WGROUTER, NETWORK.replace("option persistent_keepalive '25'\n\nconfig wireguard_wg0\n",
                                                "option persistent_keepalive 'often'\n\nconfig wireguard_wg0\n", 1),
     NET, "hq", "persistent_keepalive", "'often' is not an integer between 0 and 65535"),
    ("net-addresses", WGROUTER, NETWORK.replace("'10.99.0.2/24'", "'10.99.0.2/99'"),
     NET, "wg0", "addresses", "'10.99.0.2/99' is not an IP address with an optional /prefix"),
    ("net-listen-port", WGROUTER, NETWORK.replace("option listen_port '51820'", "option listen_port '70000'"),
     NET, "wg0", "listen_port", "'70000' is not an integer between 0 and 65535"),
    ("mqtt-qos", WGROUTER + "config mqtt 'mqtt'\n\toption qos '3'\n", NETWORK,
     WG, "mqtt", "qos", "'3' is not an integer between 0 and 2"),
    ("mqtt-protocol", WGROUTER + "config mqtt 'mqtt'\n\toption protocol '4'\n", NETWORK,
     WG, "mqtt", "protocol", "'4' is not one of '3.1.1', '5'"),
    ("mqtt-port", WGROUTER + "config mqtt 'mqtt'\n\toption port '0'\n", NETWORK,
     WG, "mqtt", "port", "'0' is not an integer between 1 and 65535"),
    ("mqtt-prefix", WGROUTER + "config mqtt 'mqtt'\n\toption prefix 'a/#'\n", NETWORK,
     WG, "mqtt", "prefix", "'a/#' is not an MQTT topic prefix (no '+', '#', leading or trailing '/')"),
    ("mqtt-host", WGROUTER + "config mqtt 'mqtt'\n\toption host 'a b'\n", NETWORK,
     WG, "mqtt", "host", "'a b' is not a host name or IP address"),
    ("mqtt-heartbeat", WGROUTER + "config mqtt 'mqtt'\n\toption heartbeat '0'\n", NETWORK,
     WG, "mqtt", "heartbeat", "'0' is not a number greater than 0"),
    ("mqtt-unknown", WGROUTER + "config mqtt 'mqtt'\n\toption server 'x'\n", NETWORK,
     WG, "mqtt", "server", "unknown option (known: enabled, host, port, protocol,"),
]


@pytest.mark.parametrize("wg,net,file,section,option,text", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors(tmp_path, wg, net, file, section, option, text):
    root = write(tmp_path, network=net, wgrouter=wg)
    prefix = root.rstrip("/")
    with pytest.raises(config.ConfigError) as info:
        config.load(root)
    err = info.value
    assert isinstance(err, wgrouter.Error)
    assert len(err.errors) == 1, str(err)
    assert err.file == prefix + file
    assert err.section == section
    assert err.option == option
    where = []
    if section is not None:
        where.append("section '%s' (%s)" % (section, "@" in section and section[1:section.index("[")]
                                             or _type_of(wg, net, file, section)))
    if option is not None:
        where.append("option '%s'" % option)
    expected = prefix + file + ": " + "".join(", ".join(where) + ": " if where else "")
    assert str(err).startswith(expected), str(err)
    assert text.replace("/etc/config/", prefix + "/etc/config/") in str(err)
    # check() validates the same way
    with pytest.raises(config.ConfigError):
        config.check(root)


def _type_of(wg, net, file, name):
    from wgrouter import uci
    text = wg if file == WG else net
    return next(s.type for s in uci.parse(text, "x") if s.name == name)


def test_example_message_format(tmp_path):
    wg = WGROUTER.replace("config wan 'wan'\n", "config wan 'wan'\n\toption keepalive '-3'\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, wgrouter=wg))
    assert str(info.value) == ("%s/etc/config/wgrouter: section 'wan' (wan), option 'keepalive': "
                               "'-3' is not an integer between 0 and 65535" % tmp_path)


def test_all_errors_are_listed_in_one(tmp_path):
    wg = WGROUTER.replace("option keepalive '25'", "option keepalive 'x'").replace("'0.5'", "'-1'")
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, wgrouter=wg))
    err = info.value
    assert [(e.section, e.option) for e in err.errors] == [("main", "check_interval"), ("wanb", "keepalive")]
    assert str(err).splitlines() == [str(e) for e in err.errors]
    assert (err.section, err.option) == ("main", "check_interval")


def test_uci_syntax_error_is_a_config_error(tmp_path):
    root = write(tmp_path, wgrouter=WGROUTER + "bogus line\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(root)
    line = WGROUTER.count("\n") + 1
    assert str(info.value) == "%s/etc/config/wgrouter:%d: invalid command" % (tmp_path, line)
    assert info.value.file == "%s/etc/config/wgrouter" % tmp_path


def test_missing_files_are_both_reported(tmp_path):
    root = write(tmp_path, network=None, wgrouter=None)
    with pytest.raises(config.ConfigError) as info:
        config.load(root)
    assert [e.file for e in info.value.errors] == [
        "%s/etc/config/network" % tmp_path, "%s/etc/config/wgrouter" % tmp_path]
    assert "cannot read" in str(info.value)


def test_secrets_never_shown(tmp_path):
    secret = "s3cr3tPr1vateKeyThatIsWrong"
    net = NETWORK.replace("option private_key '%s'" % PRIV, "list private_key '%s'" % secret)
    net = net.replace("option preshared_key '%s'" % PSK, "option preshared_key '%s'" % secret)
    wg = WGROUTER + "config tunnel 'x'\n\toption interface 'wg9'\n\toption private_key '%s'\n" % secret
    wg += "config mqtt 'mqtt'\n\toption password '%s'\n\toption tls 'sometimes'\n" % secret
    wg = wg.replace("option enabled '1'", "option enabled '1'\n\toption password '%s'" % secret)
    root = write(tmp_path, network=net, wgrouter=wg)
    with pytest.raises(config.ConfigError) as info:
        config.load(root)
    message = str(info.value)
    assert "option 'private_key'" in message and "option 'password'" in message
    assert secret not in message
    root = write(tmp_path, network=net, wgrouter=WGROUTER)
    warnings = config.check(root)
    assert any("option 'preshared_key'" in w for w in warnings)
    assert any("option 'private_key'" in w for w in warnings)
    assert all(secret not in w for w in warnings)


def test_private_key_warnings_hide_value(tmp_path):
    secret = key(77)
    wg = WGROUTER.replace("\toption probe '10.99.0.1'\n", "")
    for line in ("list private_key '%s'" % secret, "option private_key '%s'" % secret[1:]):
        net = NETWORK.replace("option private_key '%s'" % PRIV, line)
        warnings = config.check(write(tmp_path, network=net, wgrouter=wg))
        assert warnings == ["%s/etc/config/network: section 'wg0' (interface), option 'private_key': "
                            "the value (not shown) is not a WireGuard key" % tmp_path]
    net = NETWORK.replace("\toption private_key '%s'\n" % PRIV, "")
    assert config.check(write(tmp_path, network=net, wgrouter=wg)) == [
        "%s/etc/config/network: section 'wg0' (interface), option 'private_key': "
        "is missing: netifd cannot bring 'wg0' up" % tmp_path]


def test_warnings(tmp_path):
    net = NETWORK.replace("\toption nohostroute '1'\n", "").replace(
        "\toption persistent_keepalive '25'\n\nconfig wireguard_wg0\n\toption public_key '%s'" % OFF,
        "\nconfig wireguard_wg0\n\toption public_key '%s'" % OFF)
    net = net.replace("\toption endpoint_port '51821'\n\toption allowed_ips '10.98.0.0/24 10.97.0.0/24'\n"
                      "\toption persistent_keepalive '25'\n",
                      "\toption endpoint_port '51821'\n\toption allowed_ips '10.98.0.0/24 10.97.0.0/24'\n")
    wg = WGROUTER.replace("option check_interval '0.5'", "option mwan3 '1'")
    wg += "config peer\n\toption tunnel 'wg0'\n\toption public_key '%s'\n" % OFF
    root = write(tmp_path, network=net, wgrouter=wg)
    warnings = config.check(root)
    nfile = "%s/etc/config/network" % tmp_path
    wfile = "%s/etc/config/wgrouter" % tmp_path
    # nohostroute is not a warning: check-config names it as an error
    assert config.defeats(root) == [
        nfile + ": section 'wg0' (interface), option 'nohostroute': is not set: netifd pins the "
        "endpoint route of 'wg0' to the WAN that was up when it came up and takes the tunnel down "
        "when that WAN goes down, which wgrouter cannot undo; set it: uci set "
        "network.wg0.nohostroute='1'; uci commit network; ifup wg0 (installing wgrouter sets it)"]
    expected = [
        nfile + ": section '@wireguard_wg0[1]' (wireguard_wg0), option 'persistent_keepalive': is not set",
        wfile + ": section '@peer[1]' (peer): peer '@wireguard_wg0[2]' of 'wg0' is disabled",
        wfile + ": section 'wg0' (tunnel), option 'probe': '10.99.0.1' is not in the allowed_ips of peer "
        "'@wireguard_wg0[1]'",
        wfile + ": mwan3 is on but WAN 'wan' has no option table",
        wfile + ": mwan3 is on but WAN 'wanb' has no option table",
    ]
    for start in expected:
        assert sum(w.startswith(start) for w in warnings) == 1, (start, warnings)
    assert len(warnings) == len(expected), warnings
    # keepalive warning names the WANs without a keepalive of their own
    assert [w for w in warnings if "persistent_keepalive" in w][0].endswith("is lost on wan")


def test_single_wan_warns(tmp_path):
    root = write(tmp_path, wgrouter="config wan 'wan'\n")
    assert config.check(root) == [
        "%s/etc/config/wgrouter: section 'wan' (wan): only one WAN: there is nothing to fail over to" % tmp_path]


# (text, Endpoint or error fragment)
ENDPOINTS = [
    ("vpn.example.net:443", model.Endpoint("vpn.example.net", 443)),
    ("vpn.example.net", model.Endpoint("vpn.example.net", 1000)),
    ("vpn.example.net.:1", model.Endpoint("vpn.example.net.", 1)),
    ("198.51.100.9:51820", model.Endpoint("198.51.100.9", 51820)),
    ("198.51.100.9", model.Endpoint("198.51.100.9", 1000)),
    ("[2001:db8::1]:51820", model.Endpoint("2001:db8::1", 51820)),
    ("[2001:db8::1]", model.Endpoint("2001:db8::1", 1000)),
    ("localhost:65535", model.Endpoint("localhost", 65535)),
    ("host:0", "has a port that is not between 1 and 65535"),
    ("host:", "has a port that is not between 1 and 65535"),
    ("host:x", "has a port that is not between 1 and 65535"),
    ("[198.51.100.9]:1", "has no IPv6 address inside '[...]'"),
    ("[2001:db8::1]x", "has text after ']' that is not ':port'"),
    ("2001:db8::1", "is an IPv6 address without a port"),
    ("a:b:c", "is not host:port"),
    ("-bad-.example:1", "is not a host name or IP address"),
    ("", "is not a host name or IP address"),
    ("999.1.1.1:5", "is not a host name or IP address"),
    ("a" * 64 + ".example", "is not a host name or IP address"),
]


@pytest.mark.parametrize("text,expected", ENDPOINTS, ids=[e[0] or "empty" for e in ENDPOINTS])
def test_parse_endpoint(text, expected):
    if isinstance(expected, model.Endpoint):
        assert config.parse_endpoint(text, 1000) == expected
    else:
        with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace("]", r"\]")
                           .replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            config.parse_endpoint(text, 1000)


@pytest.mark.parametrize("text,ok", [
    (key(0), True), (HQ, True), (HQ[:-1], False), (HQ[:-1] + "A", False), ("!" * 43 + "=", False),
    (base64.b64encode(bytes(33)).decode(), False), ("", False)])
def test_is_key(text, ok):
    assert config.is_key(text) is ok


def test_spec_matches_model_defaults():
    fields = dataclasses.fields(model.Settings)
    assert [option for _, option, _, _ in config.SPEC] == [f.name for f in fields]
    for (section, option, kind, default), field in zip(config.SPEC, fields):
        assert section == "wgrouter"
        if isinstance(field.default, bool):
            assert (kind, default) == ("bool", "1" if field.default else "0")
        else:
            assert type(field.default)(default) == field.default
            assert kind == {int: "uinteger", float: "ufloat"}[type(field.default)]
    assert "events:uinteger:64" in config.validate_spec()
    assert "check_interval:ufloat:1.5" in config.validate_spec()


def test_spec_equals_init_script():
    init = (REPO / "files/etc/init.d/wgrouter")
    if not init.exists():
        pytest.skip("no init script in this checkout")
    import re
    spec = re.findall(r"'([a-z_0-9]+:[a-z0-9(),]+:[^']*)'", init.read_text())
    assert spec == config.validate_spec()


def test_spec_defaults_load_back(tmp_path):
    # writing every SPEC default into the file gives model.Settings()
    main = "config wgrouter 'main'\n" + "".join("\toption %s '%s'\n" % (o, d) for _, o, _, d in config.SPEC)
    cfg = config.load(write(tmp_path, wgrouter=main + "config wan 'wan'\nconfig wan 'wanb'\n"))
    assert cfg.settings == model.Settings()


def test_shipped_default_config(tmp_path):
    shipped = (REPO / "files/etc/config/wgrouter").read_text()
    root = write(tmp_path, wgrouter=shipped)
    cfg = config.load(root)
    assert [w.name for w in cfg.wans] == ["wan", "wanb"]
    assert cfg.wan("wanb").keepalive == 25
    assert [t.name for t in cfg.tunnels] == ["wg0"]
    assert cfg.settings == model.Settings()
    assert config.check(root) == []
    # every commented-out option in the shipped file is a real option with its default
    text = "\n".join(line.replace("#option", "option", 1) if line.strip().startswith("#option") else line
                     for line in shipped.splitlines())
    assert config.load(write(tmp_path, wgrouter=text)).settings == model.Settings()


def test_wan_without_any_device_is_learned_at_run_time(tmp_path):
    """A Wi-Fi client uplink has no device in /etc/config/network: the WAN
    is kept (device learned from netifd's ifup event), with a warning that
    says how to name it instead."""
    root = write(tmp_path, network=NETWORK.replace("\toption device 'eth2'\n", ""))
    assert config.load(root).wan("wanb").device == ""
    (warning,) = [w for w in config.check(root) if "'wanb'" in w]
    assert "section 'wanb' (wan)" in warning and "learned from netifd's ifup event" in warning, warning
    assert "set option device in this 'config wan' section" in warning, warning


# validate_data's types, as the daemon reads them: (type, value, what it reads, or None where
# validate_data refuses it).  Each verdict observed with the real validate_data (ubox 6f78fa4,
# `validate_data TYPE VALUE` and its section mode), read from ubox validate/validate.c.
DATATYPE_TABLE = [
    # dt_type_uint: a hex digit first (no blank, no sign), then strtoul base 0, all of it used
    ("uinteger", "5", 5), ("uinteger", "0", 0), ("uinteger", "00", 0),
    ("uinteger", "+5", None), ("uinteger", " 2", None), ("uinteger", "2 ", None), ("uinteger", "-0", None),
    ("uinteger", "0x10", 16), ("uinteger", "0X1f", 31), ("uinteger", "0x", None), ("uinteger", "ff", None),
    ("uinteger", "010", 8), ("uinteger", "08", None), ("uinteger", "1e3", None), ("uinteger", "1.0", None),
    # strtoul saturates without refusing; the daemon's own bound refuses it later
    ("uinteger", "99999999999999999999999", 99999999999999999999999),
    ("uinteger", "", None), ("uinteger", "١", None), ("uinteger", "1_0", None),
    # dt_type_ufloat: strtod, all of it used (leading blanks and a sign are strtod's), then (int) >= 0
    ("ufloat", "2.5", 2.5), ("ufloat", "+5", 5.0), ("ufloat", " 2", 2.0), ("ufloat", "\t2", 2.0),
    ("ufloat", "\n2", 2.0), ("ufloat", "2 ", None), ("ufloat", "+ 2", None),
    ("ufloat", "0x10", 16.0), ("ufloat", "0x1p3", 8.0), ("ufloat", "0x.8", 0.5), ("ufloat", "0x1p", None),
    ("ufloat", "010", 10.0), ("ufloat", "08", 8.0), ("ufloat", ".5", 0.5),
    ("ufloat", "5.", 5.0), ("ufloat", ".", None), ("ufloat", "1e3", 1000.0), ("ufloat", "1e", None),
    # the int conversion cuts the fraction: above -1 passes
    ("ufloat", "-0.5", -0.5), ("ufloat", "-0.99", -0.99), ("ufloat", "-1", None), ("ufloat", "-0", -0.0),
    # beyond int's range (or NaN) the C conversion is undefined; x86 refuses, and so does wgrouter
    ("ufloat", "2147483647", 2147483647.0), ("ufloat", "2147483648", None), ("ufloat", "1e10", None),
    ("ufloat", "inf", None), ("ufloat", "Infinity", None), ("ufloat", "nan", None), ("ufloat", "nan()", None),
    ("ufloat", "infinit", None), ("ufloat", "nan(a-b)", None), ("ufloat", "1e-999", 0.0),
    ("ufloat", "", None), ("ufloat", "1_0", None), ("ufloat", "fast", None),
    # dt_type_bool: strcasecmp against ten words
    ("bool", "1", True), ("bool", "0", False), ("bool", "yes", True), ("bool", "Off", False),
    ("bool", "TRUE", True), ("bool", "enabled", True), ("bool", "Disabled", False),
    ("bool", "2", None), ("bool", " 1", None), ("bool", "y", None), ("bool", "", None),
]


@pytest.mark.parametrize("kind,text,value", DATATYPE_TABLE)
def test_datatypes_read_as_validate_data(kind, text, value):
    got = config.parse_datatype(kind, text)
    if value is None:
        assert got is None
    else:
        assert got == value and type(got) is type(value)
        assert str(got) == str(value)  # -0.0 stays -0.0


def test_every_spec_type_is_known():
    assert {kind for _, _, kind, _ in config.SPEC} <= set(config.DATATYPES)


@pytest.mark.parametrize("option,text,value", [
    ("events", "0x10", 16), ("events", "010", 8), ("check_interval", " 2", 2.0),
    ("check_interval", "+5", 5.0), ("probe_timeout", "0x1p-1", 0.5), ("mwan3", "TRUE", True),
])
def test_settings_take_what_validate_data_takes(tmp_path, option, text, value):
    wg = WGROUTER.replace("\toption check_interval '0.5'\n", "\toption %s '%s'\n" % (option, text))
    assert getattr(config.load(write(tmp_path, wgrouter=wg)).settings, option) == value


@pytest.mark.parametrize("option,text,message", [
    ("events", "+5", "'+5' is not an unsigned integer (decimal, 0x hex or 0 octal; no sign or blank)"),
    ("events", " 2", "' 2' is not an unsigned integer (decimal, 0x hex or 0 octal; no sign or blank)"),
    ("events", "08", "'08' is not an unsigned integer (decimal, 0x hex or 0 octal; no sign or blank)"),
    # validate_data takes these; the daemon's own bounds do not
    ("events", "0x800", "'0x800' is not an integer between 1 and 1024"),
    ("events", "99999999999999999999999", "'99999999999999999999999' is not an integer between 1 and 1024"),
    ("check_interval", "-0.5", "'-0.5' is not a number greater than 0"),
    ("failback_holddown", "-0.5", "'-0.5' is not a number at least 0"),
    ("check_interval", "1e10", "'1e10' is not a number of at least 0 (e.g. 2.5)"),
    ("check_interval", "2 ", "'2 ' is not a number of at least 0 (e.g. 2.5)"),
])
def test_settings_refuse(tmp_path, option, text, message):
    wg = WGROUTER.replace("\toption check_interval '0.5'\n", "\toption %s '%s'\n" % (option, text))
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, wgrouter=wg))
    (err,) = info.value.errors
    assert (err.section, err.option) == ("main", option)
    assert str(err).endswith("option '%s': %s" % (option, message)), str(err)


@pytest.mark.parametrize("text,warned", [("Yes", True), ("ON", True), ("yes", False), ("1", False)])
def test_enabled_in_capitals_is_warned(tmp_path, text, warned):
    # validate_data takes 'Yes', but cli.c's bool_to_num hands the script neither 1 nor 0
    root = write(tmp_path, wgrouter=WGROUTER.replace("option enabled '1'", "option enabled '%s'" % text))
    assert config.load(root).settings.enabled is True
    warnings = [w for w in config.check(root) if "option 'enabled'" in w]
    assert bool(warnings) is warned
    if warned:
        assert warnings[0].endswith("'%s' is valid, but the init script reads only lower-case words, so it "
                                    "does not start the daemon; write '1' or '0'" % text)
