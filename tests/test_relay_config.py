"""`list relay 'host:port'` in a `config peer` section (config.py, model.py)
and what check-config shows of it."""

import pytest

from wgrouter import cli, config, model
from tests import test_config
from tests.test_config import HQ, write

RELAYS = test_config.WGROUTER + "\tlist relay 'relay.example.net:443'\n\tlist relay '[2001:db8::9]:5001'\n"


def test_relays_of_a_peer_in_order_names_kept_as_text(tmp_path):
    cfg = config.load(write(tmp_path, wgrouter=RELAYS))
    hq, branch = cfg.tunnels[0].peers
    assert hq.relays == (model.Endpoint("relay.example.net", 443), model.Endpoint("2001:db8::9", 5001))
    assert branch.relays == ()
    # nothing else about the peer changes
    assert hq.endpoints == config.load(write(tmp_path)).tunnels[0].peers[0].endpoints


def test_no_relay_nothing_changes(tmp_path):
    cfg = config.load(write(tmp_path))
    assert all(p.relays == () for p in cfg.peers())


@pytest.mark.parametrize("value,text", [
    ("relay.example.net", "'relay.example.net' has no port: write host:port"),
    ("relay.example.net:0", "'relay.example.net:0' has a port that is not between 1 and 65535"),
    ("relay.example.net:70000", "'relay.example.net:70000' has a port that is not between 1 and 65535"),
    ("2001:db8::9", "'2001:db8::9' is an IPv6 address without a port: write it as [address]:port"),
    ("relay_1!:443", "'relay_1!:443' is not a host name or IP address with an optional :port"),
])
def test_bad_relay_names_section_and_option(tmp_path, value, text):
    wg = test_config.WGROUTER + "\tlist relay '%s'\n" % value
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, wgrouter=wg))
    err = info.value
    assert len(err.errors) == 1, str(err)
    assert (err.section, err.option) == ("@peer[0]", "relay")
    assert text in str(err)
    assert "section '@peer[0]' (peer), option 'relay'" in str(err)


def test_check_config_shows_the_relays(tmp_path, capsys):
    assert cli.main(["check-config", "--root", write(tmp_path, wgrouter=RELAYS)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "tunnel 'wg0', peer 'hq': TCP relay relay.example.net:443 (udp-over-tcp framing)" in out
    assert "tunnel 'wg0', peer 'hq': TCP relay [2001:db8::9]:5001 (udp-over-tcp framing)" in out
    assert cli.main(["check-config", "--root", write(tmp_path)]) == 0
    assert "TCP relay" not in capsys.readouterr().out


def test_relay_key_is_the_peers_own(tmp_path):
    # a relay belongs to the peer its section names, here by public key
    cfg = config.load(write(tmp_path, wgrouter=RELAYS))
    (peer,) = [p for p in cfg.peers() if p.relays]
    assert peer.public_key == HQ
