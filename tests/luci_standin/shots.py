"""Screenshots of the LuCI pages on the stand-in, at desktop and phone width.

    python3 -m tests.luci_standin.shots docs/luci

writes the PNGs the README shows (run it again after changing a view).
"""

import os
import sys

from tests.luci_standin import browser
from tests.luci_standin import fixtures
from tests.luci_standin import router

DESKTOP = (1280, 900)
PHONE = (390, 844)
# the phone shot of the long configuration page: its tables, from the WANs
PHONE_CLIP = 1600
PHONE_START = {"config": "#cbi-wgrouter-wan"}

# every value cell of the page's tables, at phone width: the theme hides the
# title row, so the cell must show its column's title itself (data-title,
# shown by the ::before rule of page.css, as the bootstrap theme does)
UNLABELLED = """Array.prototype.concat.apply([], Array.prototype.map.call(
    document.querySelectorAll('#view table'), function(t) {
        var head = t.querySelector('tr.table-titles'), titles;
        if (!head) return [ 'a table without a title row' ];
        titles = Array.prototype.map.call(head.querySelectorAll('th'), function(th) { return th.textContent.trim(); });
        return Array.prototype.concat.apply([], Array.prototype.map.call(t.querySelectorAll('tr'), function(tr) {
            if (tr === head || tr.classList.contains('placeholder')) return [];
            return Array.prototype.map.call(tr.querySelectorAll('td'), function(td, i) {
                var shown = getComputedStyle(td, '::before').content;
                return (titles[i] && shown == JSON.stringify(titles[i] + ': ')) ? null
                    : (titles[i] || '?') + ' = ' + td.textContent.trim() + ' (shown: ' + shown + ')';
            }).filter(function(x) { return x; });
        }));
    }).concat(getComputedStyle(document.querySelector('#view tr.table-titles') || document.body).display == 'none'
        ? [] : [ 'the title row is shown' ]))"""


class ShotError(RuntimeError):
    """a page is not fit to be shown"""


def unlabelled(b):
    """The cells of the page's tables that a phone shows without their
    column's title (a list of descriptions, empty when every one has it)."""
    return b.evaluate(UNLABELLED)


NAMES = ["config-desktop.png", "config-phone.png", "status-desktop.png", "status-phone.png"]


def take(out):
    os.makedirs(out, exist_ok=True)
    written = []
    with browser.Browser(*DESKTOP) as b, router.Router(fixtures.handlers()) as r:
        pages = [
            ("config", browser.page_html(fixtures.view_source("config"), fixtures.standin(),
                                         "WireGuard uplinks", active=1), None),
            ("status", browser.page_html(fixtures.view_source("status"), fixtures.standin(router=r),
                                         "WireGuard uplinks"), r),
        ]
        for name, html, served in pages:
            for kind, (width, height), mobile in (("desktop", DESKTOP, False), ("phone", PHONE, True)):
                b.resize(width, height, mobile)
                b.open(html, served)
                if name == "status":
                    # the diagnosis is part of the page a router owner looks at
                    b.evaluate("VIEW.handleDiagnose()")
                    if mobile and unlabelled(b):
                        raise ShotError("values without labels at phone width: %s" % unlabelled(b))
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
