import pytest

from wgrouter import model
from wgrouter import wgdump

K1 = "hIg3Yh7Q5Xk0/7D1b3Nc3xY6B1m8Qk1B0w4ePf1eW1I="
K2 = "2Bz9Hc4m5n6o7p8q9r0s1t2u3v4w5x6y7z8A9B0C1D0="
PRIV = "aPriVatEkeyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

ALL = "\n".join(
    [
        "wg0\t%s\t%s\t51820\toff" % (PRIV, K1),
        "wg0\t%s\t(none)\t198.51.100.7:51820\t10.9.0.0/24,10.8.0.1/32\t1700000000\t1234\t5678\t25" % K2,
        "wg0\t%s\t(none)\t(none)\t10.7.0.0/24\t0\t0\t0\toff" % K1,
        "wg1\t%s\t%s\t51821\t0xca6c" % (PRIV, K2),
        "wg1\t%s\tpsk=\t[2001:db8::7]:4500\t::/0\t1700000100\t1\t2\t15" % K1,
        "wg2\t%s\t%s\t0\toff" % (PRIV, K1),
        "",
    ]
)


def parse(text, interface=None):
    """{tunnel: {public key: PeerStats}}: what the daemon takes of a dump."""
    return {name: {p.public_key: p.stats() for p in dev.peers}
            for name, dev in wgdump.parse_devices(text, interface).items()}


def test_parse_all_dump():
    result = parse(ALL)
    assert set(result) == {"wg0", "wg1", "wg2"}
    assert result["wg2"] == {}
    assert result["wg0"][K2] == model.PeerStats("198.51.100.7:51820", 1700000000, 1234, 5678, 25)
    assert result["wg0"][K1] == model.PeerStats(None, 0, 0, 0, 0)
    assert result["wg1"][K1] == model.PeerStats("[2001:db8::7]:4500", 1700000100, 1, 2, 15)


def test_parse_interface_dump():
    text = "%s\t%s\t51820\toff\n%s\t(none)\t192.0.2.1:1\t0.0.0.0/0\t5\t6\t7\toff\n" % (PRIV, K1, K2)
    assert parse(text, interface="wg9") == {"wg9": {K2: model.PeerStats("192.0.2.1:1", 5, 6, 7, 0)}}


def test_parse_empty():
    assert parse("") == {}


@pytest.mark.parametrize(
    "line",
    [
        "wg0\tonly\tthree",
        "wg0\t%s\t(none)\t1.2.3.4:5\t10.0.0.0/8\tnever\t0\t0\toff" % K1,
    ],
)
def test_parse_rejects_garbage(line):
    with pytest.raises(wgdump.BadDump):
        parse(line)
