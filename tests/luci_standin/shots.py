"""Screenshots of the LuCI pages on the stand-in, at desktop and phone width.

    python3 -m tests.luci_standin.shots docs/luci

writes the PNGs the README shows (run it again after changing a view).
"""

import os
import sys

from tests.luci_standin import browser
from tests.luci_standin import fixtures

DESKTOP = (1280, 900)
PHONE = (390, 844)
# the phone shot of the long configuration page: its tables, from the WANs
PHONE_CLIP = 1600
PHONE_START = {"config": "#cbi-wgrouter-wan"}

NAMES = ["config-desktop.png", "config-phone.png", "status-desktop.png", "status-phone.png"]


def take(out):
    os.makedirs(out, exist_ok=True)
    written = []
    with browser.Browser(*DESKTOP) as b:
        pages = [
            ("config", browser.page_html(fixtures.view_source("config"), fixtures.standin(),
                                         "WireGuard uplinks", active=1)),
            ("status", browser.page_html(fixtures.view_source("status"),
                                         fixtures.standin(rpc=fixtures.rpc_replies()), "WireGuard uplinks")),
        ]
        for name, html in pages:
            for kind, (width, height), mobile in (("desktop", DESKTOP, False), ("phone", PHONE, True)):
                b.resize(width, height, mobile)
                b.open(html)
                path = os.path.join(out, "%s-%s.png" % (name, kind))
                b.screenshot(path, mobile=mobile, max_height=PHONE_CLIP if mobile else None,
                             start=PHONE_START.get(name) if mobile else None)
                written.append(path)
    return written


def main(argv):
    out = argv[1] if len(argv) > 1 else os.path.join(fixtures.ROOT, "docs", "luci")
    for path in take(out):
        print(path)


if __name__ == "__main__":
    main(sys.argv)
