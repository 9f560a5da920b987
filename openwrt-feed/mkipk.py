#!/usr/bin/env python3
"""Build the wgrouter ipk packages without the OpenWrt SDK.

    python3 openwrt-feed/mkipk.py --out dist

writes wgrouter_<v>_all.ipk, wgrouter-mqtt_<v>_all.ipk, wgrouter-dns_<v>_all.ipk
and luci-app-wgrouter_<v>_all.ipk the way OpenWrt's scripts/ipkg-build lays them
out: a gzip'd tar of ./debian-binary ("2.0"), ./data.tar.gz and
./control.tar.gz.  Like the feed Makefile (Py3Package), the Python package is
shipped as .pyc only, compiled for the interpreter running this script, which
must therefore be the router's Python version (--python, default 3.11).

The output is reproducible: sorted entries, owner 0:0, one fixed mtime
(SOURCE_DATE_EPOCH, else a constant), gzip headers without name or time,
unchecked-hash .pyc files and a fixed hash seed, so two builds of the same
tree give the same bytes.

The Depends line of each package is derived from the imports of its modules
(stdlib modules that OpenWrt splits out of python3-light, third-party
packages); an import this script does not know is an error, so a new
dependency cannot slip into the package unnoticed.
"""

import argparse
import ast
import gzip
import importlib.util
import io
import marshal
import os
import struct
import subprocess
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, TOP)

# Used when SOURCE_DATE_EPOCH is not set: 2024-01-01 00:00:00 UTC.
DEFAULT_EPOCH = 1704067200

# Standard modules that OpenWrt ships outside python3-light
# (openwrt/packages lang/python/python3/files/python3-package-*.mk).
STDLIB_SPLIT = {
    "asyncio": "python3-asyncio",
    "cgi": "python3-cgi",
    "cgitb": "python3-cgitb",
    "ctypes": "python3-ctypes",
    "curses": "python3-ncurses",
    "dbm": "python3-dbm",
    "decimal": "python3-decimal",
    "distutils": "python3-distutils",
    "email": "python3-email",
    "lib2to3": "python3-lib2to3",
    "logging": "python3-logging",
    "lzma": "python3-lzma",
    "multiprocessing": "python3-multiprocessing",
    "pydoc": "python3-pydoc",
    "readline": "python3-readline",
    "sqlite3": "python3-sqlite3",
    "ssl": "python3-openssl",
    "unicodedata": "python3-codecs",
    "unittest": "python3-unittest",
    "urllib": "python3-urllib",
    "uuid": "python3-uuid",
    "venv": "python3-venv",
    "webbrowser": "python3-webbrowser",
    "xml": "python3-xml",
}

# Third-party modules -> OpenWrt package.
THIRD_PARTY = {
    "dns": "python3-dns",
    "paho": "python3-paho-mqtt",
    "ubus": "python3-ubus",
}

# Imports that are optional at run time: the code works without them and
# another package pulls them in.  python3-ubus comes with luci-app-wgrouter:
# without it the daemon runs, only without its ubus object.  python3-dns
# comes with wgrouter-dns: OpenWrt's python3-dns depends on the whole python3
# (several MB of flash), and without it names keep the address netifd
# resolved, only not re-resolved.
OPTIONAL = {"ubus", "dns"}

# Packages without files that pull in an optional import's package.
META_PACKAGES = {"wgrouter-dns": ["python3-dns"]}

# Modules that go to a subpackage instead of the main one.
SUBPACKAGE_MODULES = {"mqtt": "wgrouter-mqtt"}

# Tools the daemon runs; the python3 interpreter itself.
BASE_DEPENDS = ["libc", "python3-light", "wireguard-tools", "ip-full", "conntrack"]

# The feed Makefiles are the one source of each package's description,
# release, licence, maintainer and URL.
FEED_MAKEFILES = {
    "wgrouter": os.path.join(HERE, "wgrouter", "Makefile"),
    "luci-app-wgrouter": os.path.join(HERE, "luci-app-wgrouter", "Makefile"),
}


def makefile_var(path, name):
    """The value of the first ``NAME:=VALUE`` in a Makefile (indented ones,
    inside a ``define``, count too)."""
    with open(path) as f:
        for line in f:
            key, sep, value = line.strip().partition(":=")
            if sep and key == name:
                return value.strip()
    raise KeyError("%s: no %s:=" % (path, name))


RELEASE = makefile_var(FEED_MAKEFILES["wgrouter"], "PKG_RELEASE")
LICENSE = makefile_var(FEED_MAKEFILES["wgrouter"], "PKG_LICENSE")
MAINTAINER = makefile_var(FEED_MAKEFILES["wgrouter"], "PKG_MAINTAINER")
URL = makefile_var(FEED_MAKEFILES["wgrouter"], "URL")


# The scripts the SDK generates (include/package-pack.mk): the router's
# default_postinst / default_prerm (/lib/functions.sh) run the package's
# /etc/uci-defaults scripts on a live system, enable the init script (also
# inside an image build, so the image starts it), start it on a live system,
# and on removal stop it; neither enables nor disables it on an upgrade, so a
# service the user disabled stays disabled.  A Package/NAME/prerm of the
# feed Makefile becomes the control file prerm-pkg, which default_prerm
# sources first.
POSTINST = """#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -s "${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
. "${IPKG_INSTROOT}/lib/functions.sh"
default_postinst "$0" "$@"
"""

PRERM = """#!/bin/sh
[ -s "${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
. "${IPKG_INSTROOT}/lib/functions.sh"
default_prerm "$0" "$@"
"""


def makefile_define(path, name):
    """The text of ``define NAME ... endef`` in a Makefile, as make expands
    it ($$ -> $): the feed's maintainer scripts are written once, there."""
    with open(path) as f:
        lines = f.read().split("\n")
    start = lines.index("define " + name) + 1
    body = lines[start:lines.index("endef", start)]
    return "\n".join(body).replace("$$", "$") + "\n"


def description(name):
    """The control file's Description of package ``name``, from its feed
    Makefile (``define Package/NAME/description``, or luci.mk's
    LUCI_DESCRIPTION), continuation lines indented by one space as the
    SDK writes them."""
    makefile = FEED_MAKEFILES["luci-app-wgrouter" if name.startswith("luci-") else "wgrouter"]
    if name.startswith("luci-"):
        with open(makefile) as f:
            text = next(line.split(":=", 1)[1] for line in f if line.startswith("LUCI_DESCRIPTION:="))
    else:
        text = makefile_define(makefile, "Package/%s/description" % name)
    return "\n ".join(line.strip() for line in text.strip().splitlines())


DESCRIPTIONS = {name: description(name)
                for name in ("wgrouter", "wgrouter-mqtt", "wgrouter-dns", "luci-app-wgrouter")}


class MkipkError(Exception):
    """mkipk error"""


# ------------------------------------------------------------ imports

def imports_of(path):
    """Top-level names of the modules ``path`` imports (absolute imports)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def python_depends(paths):
    """OpenWrt packages needed by the modules in ``paths`` (sorted)."""
    needed = set()
    for path in paths:
        for name in imports_of(path):
            if name in ("wgrouter", "__future__") or name in OPTIONAL:
                continue
            if name in STDLIB_SPLIT:
                needed.add(STDLIB_SPLIT[name])
            elif name in THIRD_PARTY:
                needed.add(THIRD_PARTY[name])
            elif name not in sys.stdlib_module_names:
                raise MkipkError("%s imports %r: add its OpenWrt package to mkipk.py"
                                 % (os.path.relpath(path, TOP), name))
    return sorted(needed)


def modules(package_dir):
    """{module name: path} of the package's .py files, those of its
    subpackages named by their path ("core/engine")."""
    found = {}
    for base, dirs, names in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if os.path.exists(os.path.join(base, d, "__init__.py")))
        rel = os.path.relpath(base, package_dir)
        for name in sorted(names):
            if name.endswith(".py"):
                found[name[:-3] if rel == "." else rel + "/" + name[:-3]] = os.path.join(base, name)
    return found


def split_modules(package_dir):
    """{package name: {module: path}}: main package and subpackages."""
    split = {"wgrouter": {}}
    for name, path in modules(package_dir).items():
        split.setdefault(SUBPACKAGE_MODULES.get(name, "wgrouter"), {})[name] = path
    return split


# --------------------------------------------------------------- tar

class Tree:
    """Files of one tar archive: path -> (mode, bytes); directories implied."""

    def __init__(self):
        self.files = {}

    def add(self, path, data, mode):
        self.files[path.strip("/")] = (mode, data)

    def add_tree(self, src, dest=""):
        for base, dirs, names in os.walk(src):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(base, name)
                rel = os.path.join(dest, os.path.relpath(path, src))
                with open(path, "rb") as f:
                    data = f.read()
                self.add(rel, data, 0o755 if os.stat(path).st_mode & 0o111 else 0o644)

    def size(self):
        return sum(len(data) for _, data in self.files.values())

    def tar_gz(self, mtime):
        dirs = set()
        for path in self.files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        entries = [(d, None) for d in dirs] + list(self.files.items())
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
            tar.addfile(_info("./", tarfile.DIRTYPE, 0o755, 0, mtime))
            for path, item in sorted(entries):
                if item is None:
                    tar.addfile(_info("./%s/" % path, tarfile.DIRTYPE, 0o755, 0, mtime))
                else:
                    mode, data = item
                    tar.addfile(_info("./" + path, tarfile.REGTYPE, mode, len(data), mtime),
                                io.BytesIO(data))
        return gzip_bytes(raw.getvalue())


def _info(name, type_, mode, size, mtime):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = type_, mode, size, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def gzip_bytes(data):
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return out.getvalue()


def ipk(control, conffiles, scripts, data, mtime):
    """The bytes of one ipk."""
    ctl = Tree()
    ctl.add("control", control.encode(), 0o644)
    if conffiles:
        ctl.add("conffiles", "".join(c + "\n" for c in conffiles).encode(), 0o644)
    for name, text in scripts.items():
        ctl.add(name, text.encode(), 0o755)
    outer = Tree()
    outer.add("debian-binary", b"2.0\n", 0o644)
    outer.add("data.tar.gz", data.tar_gz(mtime), 0o644)
    outer.add("control.tar.gz", ctl.tar_gz(mtime), 0o644)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        # ipkg-build's member order
        for name in ("debian-binary", "data.tar.gz", "control.tar.gz"):
            mode, blob = outer.files[name]
            tar.addfile(_info("./" + name, tarfile.REGTYPE, mode, len(blob), mtime),
                        io.BytesIO(blob))
    return gzip_bytes(raw.getvalue())


def control_text(name, version, depends, data, source, section, mtime):
    fields = [
        ("Package", name),
        ("Version", version),
        ("Depends", ", ".join(depends)),
        ("Source", source),
        ("SourceName", name),
        ("License", LICENSE),
        ("Section", section),
        ("SourceDateEpoch", str(mtime)),
        ("URL", URL),
        ("Maintainer", MAINTAINER),
        ("Architecture", "all"),
        ("Installed-Size", str(data.size())),
        ("Description", DESCRIPTIONS[name]),
    ]
    return "".join("%s: %s\n" % f for f in fields)


# ------------------------------------------------------------ packages

def plain_classes(paths):
    """Names of the package's classes that are no exception: those without a
    base class, and those whose bases are all such (by the name they are
    known by; a name also given to another class that is not counts as not)."""
    bases = {}
    for path in paths:
        with open(path, "rb") as f:
            for node in ast.walk(ast.parse(f.read(), path)):
                if isinstance(node, ast.ClassDef):
                    bases.setdefault(node.name, []).extend(_names(node.bases))
    plain = set()
    while True:
        more = {name for name, of in bases.items() if name not in plain and set(of) <= plain}
        if not more:
            return frozenset(plain)
        plain |= more


def _names(bases):
    return [ast.unparse(b).rpartition(".")[2] for b in bases]


def strip_docstrings(tree, plain=frozenset()):
    """Drop the docstrings of the module, its functions and its classes, as
    ``python -OO`` does (only help() reads them).  Keep them on classes that
    may be exceptions (a base that is not one of the ``plain`` classes):
    wgrouter's exceptions use their docstring as the message."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and not set(_names(node.bases)) <= plain:
            continue
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass(lineno=first.lineno, col_offset=0)]
    return tree


def strip_annotations(tree):
    """Drop the annotations of function arguments and returns: nothing reads
    them at run time (no get_type_hints, no inspect), they cost flash.  The
    annotations in class bodies stay: they are a dataclass's fields."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
            args = node.args
            for arg in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
                if arg is not None:
                    arg.annotation = None
    return tree


def pyc_bytes(source, dfile, plain=frozenset()):
    """An unchecked-hash .pyc (PEP 552) of ``source``.

    Unchecked hash: no source mtime inside, and the router never rewrites it
    (there is no source to compare with, and site-packages may be read-only).
    """
    tree = strip_annotations(strip_docstrings(ast.parse(source, dfile), plain))
    code = compile(tree, dfile, "exec", dont_inherit=True)
    flags = 0b01  # hash-based, not checked
    return (importlib.util.MAGIC_NUMBER + struct.pack("<I", flags)
            + importlib.util.source_hash(source) + marshal.dumps(code))


def compiled(tree, mods, site, sources, plain):
    """Add the modules to ``tree`` under ``site``/wgrouter as .pyc (or .py);
    ``plain``: plain_classes() of the whole package."""
    dest = site.strip("/") + "/wgrouter/"
    for name, path in mods.items():
        with open(path, "rb") as f:
            source = f.read()
        if sources:
            tree.add(dest + name + ".py", source, 0o644)
        else:
            tree.add(dest + name + ".pyc", pyc_bytes(source, "/" + dest + name + ".py", plain), 0o644)


def build(out, python, sources=False, top=TOP):
    """Build the ipks into ``out``; returns [(path, size)]."""
    import wgrouter
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
    version = "%s-%s" % (wgrouter.__version__, RELEASE)
    site = "usr/lib/python%s/site-packages" % python
    split = split_modules(os.path.join(top, "wgrouter"))
    plain = plain_classes(path for mods in split.values() for path in mods.values())
    built = []

    data = Tree()
    data.add_tree(os.path.join(top, "files"))
    compiled(data, split["wgrouter"], site, sources, plain)
    conffiles = ["/etc/config/wgrouter"] if "etc/config/wgrouter" in data.files else []
    depends = BASE_DEPENDS + [d for d in python_depends(split["wgrouter"].values())
                              if d not in BASE_DEPENDS]
    control = control_text("wgrouter", version, depends, data, "feeds/wgrouter/wgrouter",
                           "net", mtime)
    prerm_pkg = makefile_define(os.path.join(HERE, "wgrouter", "Makefile"), "Package/wgrouter/prerm")
    built.append(("wgrouter", ipk(control, conffiles, {"postinst": POSTINST, "prerm": PRERM,
                                                       "prerm-pkg": prerm_pkg}, data, mtime), data))

    for name in sorted(set(split) - {"wgrouter"}):
        data = Tree()
        compiled(data, split[name], site, sources, plain)
        depends = ["libc", "wgrouter (=%s)" % version] + python_depends(split[name].values())
        control = control_text(name, version, depends, data, "feeds/wgrouter/wgrouter",
                               "net", mtime)
        built.append((name, ipk(control, [], {}, data, mtime), data))

    for name, extra in sorted(META_PACKAGES.items()):
        data = Tree()
        depends = ["libc", "wgrouter (=%s)" % version] + extra
        control = control_text(name, version, depends, data, "feeds/wgrouter/wgrouter",
                               "net", mtime)
        built.append((name, ipk(control, [], {}, data, mtime), data))

    luci = os.path.join(HERE, "luci-app-wgrouter")
    data = Tree()
    data.add_tree(os.path.join(luci, "htdocs"), "www")
    data.add_tree(os.path.join(luci, "root"))
    depends = ["libc", "luci-base", "wgrouter", "python3-ubus"]
    control = control_text("luci-app-wgrouter", version, depends, data,
                           "feeds/wgrouter/luci-app-wgrouter", "luci", mtime)
    postinst = makefile_define(os.path.join(luci, "Makefile"), "Package/luci-app-wgrouter/postinst")
    built.append(("luci-app-wgrouter", ipk(control, [], {"postinst": postinst}, data, mtime),
                  data))

    os.makedirs(out, exist_ok=True)
    result = []
    for name, blob, _ in built:
        path = os.path.join(out, "%s_%s_all.ipk" % (name, version))
        with open(path, "wb") as f:
            f.write(blob)
        result.append((path, len(blob)))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="dist", help="output directory (default: dist)")
    parser.add_argument("--python", default="3.11",
                        help="Python version of the router (default: 3.11); .pyc files need "
                             "this interpreter to run mkipk")
    parser.add_argument("--sources", action="store_true",
                        help="ship .py files instead of .pyc (any --python version)")
    args = parser.parse_args(argv)
    running = "%d.%d" % sys.version_info[:2]
    if not args.sources and args.python != running:
        print("mkipk: .pyc for Python %s needs python%s (this is %s), or use --sources"
              % (args.python, args.python, running), file=sys.stderr)
        return 2
    try:
        for path, size in build(args.out, args.python, args.sources):
            print("%s %d bytes (%.1f KB)" % (path, size, size / 1024.0))
    except (MkipkError, OSError, SyntaxError) as e:
        print("mkipk: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Hash randomisation changes the order of frozenset constants in .pyc
    # files: compile in an interpreter with a fixed seed.  Without column
    # tables (PEP 657) the .pyc files are a third smaller; tracebacks keep
    # their line numbers.
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1",
                   PYTHONNODEBUGRANGES="1")
        sys.exit(subprocess.call([sys.executable] + sys.argv, env=env))
    sys.exit(main())
