"""Write and read the small subset of UCI files the lab needs.

The lab writes /etc/config/network and /etc/config/wgrouter under its
router root, and the stock watchdog reads the network file back.  This is a
deliberately tiny reader (sections, ``option``, ``list``, quoting with '
or "); wgrouter's own parser lives in wgrouter/uci.py.
"""

import shlex


def render(sections):
    """``sections``: list of (type, name or None, [(key, value or list), ...])."""
    out = []
    for stype, name, options in sections:
        out.append("config %s%s" % (stype, " '%s'" % name if name else ""))
        for key, value in options:
            if isinstance(value, (list, tuple)):
                for item in value:
                    out.append("\tlist %s '%s'" % (key, item))
            else:
                out.append("\toption %s '%s'" % (key, value))
        out.append("")
    return "\n".join(out)


def parse(text):
    """Return a list of dicts: {'.type', '.name', key: str or list}."""
    sections = []
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] == "config":
            current = {".type": words[1], ".name": words[2] if len(words) > 2 else None}
            sections.append(current)
        elif current is not None and words[0] == "option" and len(words) >= 3:
            current[words[1]] = words[2]
        elif current is not None and words[0] == "list" and len(words) >= 3:
            current.setdefault(words[1], [])
            if isinstance(current[words[1]], list):
                current[words[1]].append(words[2])
    return sections
