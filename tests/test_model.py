"""wgrouter.model: the small text helpers shared by the core, shell and CLI."""

import pytest

from wgrouter import model


@pytest.mark.parametrize(
    "endpoint,expected",
    [
        ("198.51.100.7:51820", ("198.51.100.7", 51820)),
        ("[2001:db8::7]:4500", ("2001:db8::7", 4500)),
        ("vpn.example.net:443", ("vpn.example.net", 443)),
        ("(none)", None),
        ("", None),
        (None, None),
    ],
)
def test_split_endpoint(endpoint, expected):
    assert model.split_endpoint(endpoint) == expected


@pytest.mark.parametrize("endpoint", ["198.51.100.7", "198.51.100.7:port", "[2001:db8::7]"])
def test_split_endpoint_needs_a_numeric_port(endpoint):
    with pytest.raises(ValueError):
        model.split_endpoint(endpoint)


@pytest.mark.parametrize("host,port", [("198.51.100.7", 51820), ("2001:db8::7", 4500)])
def test_endpoint_text_round_trips(host, port):
    assert model.split_endpoint(str(model.Endpoint(host, port))) == (host, port)


@pytest.mark.parametrize(
    "seconds,text",
    [(None, "never"), (0, "0s"), (5, "5s"), (5.9, "5s"), (119, "119s"), (120, "2m00s"), (125, "2m05s"),
     (7199, "119m59s"), (7200, "2h00m"), (7300, "2h01m")],
)
def test_age(seconds, text):
    assert model.age(seconds) == text


@pytest.mark.parametrize("address, version", [
    ("192.0.2.1", 4), ("2001:db8::1", 6), ("fe80::1", 6), ("::ffff:192.0.2.1", 6)])
def test_family(address, version):
    assert model.family(address) == version


def test_tunnel_probe_source_of_the_targets_family():
    t = model.Tunnel("wg0", (), addresses=("10.99.0.2/24", "fd99::2/64"), probe_source="10.99.0.2")
    assert t.source_for("10.99.0.1") == "10.99.0.2"
    assert t.source_for("fd99::1") == "fd99::2"
    assert model.Tunnel("wg0", (), addresses=("10.99.0.2/24",), probe_source="10.99.0.2").source_for("fd99::1") is None
