"""tests/luci_standin itself: its fixture configuration is one the daemon
loads, and its screenshot tool renders every page at both widths."""

import os
import struct

from tests.luci_standin import fixtures
from tests.luci_standin import shots
from tests.test_luci_config import needs_chromium


def test_fixture_is_a_valid_daemon_configuration():
    assert fixtures.daemon_errors(fixtures.WGROUTER) == []


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@needs_chromium
def test_screenshots_render(tmp_path):
    written = shots.take(str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == sorted(shots.NAMES)
    for path in written:
        width, height = png_size(path)
        assert width in (shots.DESKTOP[0], shots.PHONE[0]) and height > 300
