"""The router-side files: init script, hotplug script, CLI wrapper.

Shell scripts run under busybox ash in a temporary root, the way they run
on OpenWrt; procd and rc.common functions are replaced by recording stubs.
"""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests import test_config
from wgrouter import config, control, daemon, model
from wgrouter import runfiles

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = os.path.join(ROOT, "files")
INIT = os.path.join(FILES, "etc/init.d/wgrouter")
HOTPLUG = os.path.join(FILES, "etc/hotplug.d/iface/30-wgrouter")
WRAPPER = os.path.join(FILES, "usr/bin/wgrouter")
UCI_DEFAULTS = os.path.join(FILES, "etc/uci-defaults/99-wgrouter")

BUSYBOX = shutil.which("busybox")
SHELLCHECK = shutil.which("shellcheck")
needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed")

# Checks excluded per script, each for a reason shellcheck cannot see.
SHELLCHECK_EXCLUDES = {
    # START, STOP and USE_PROCD are read by /etc/rc.common, which sources the
    # script (SC2034); uci_load_validate assigns the option variables that
    # the callbacks read (SC2154).
    INIT: ["SC2034", "SC2154"],
    HOTPLUG: [],
    WRAPPER: [],
    UCI_DEFAULTS: [],  # tested in tests/test_uci_defaults.py
}


def shell_scripts():
    found = []
    for base, _, names in os.walk(FILES):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                if f.read(9) == b"#!/bin/sh":
                    found.append(path)
    return sorted(found)


def test_every_shell_script_is_known():
    assert shell_scripts() == sorted(SHELLCHECK_EXCLUDES)


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("path", sorted(SHELLCHECK_EXCLUDES), ids=os.path.basename)
def test_shellcheck(path):
    cmd = [SHELLCHECK, "-s", "sh"]
    if SHELLCHECK_EXCLUDES[path]:
        cmd += ["-e", ",".join(SHELLCHECK_EXCLUDES[path])]
    r = subprocess.run(cmd + [path], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", sorted(SHELLCHECK_EXCLUDES), ids=os.path.basename)
def test_scripts_are_executable(path):
    assert os.stat(path).st_mode & 0o777 == 0o755


# ----------------------------------------------------------------- init

# Stand-ins for /etc/rc.common and /lib/functions/procd.sh (openwrt/openwrt
# package/base-files/files/etc/rc.common, package/system/procd/files/procd.sh):
# every procd_* call is printed instead of being added to procd's message;
# uci_load_validate takes option values from UCI_<option> variables and the
# validation result from UCI_RESULT (validate_data exits 255 on a refused
# value: ubox validate/cli.c main returns -1).
INIT_STUBS = r"""
procd_open_service() { echo "open_service $*"; }
# procd.sh _procd_close_service adds the script's triggers to the message
procd_close_service() { service_triggers; echo "close_service $*"; }
procd_open_instance() { echo "open_instance $*"; }
procd_set_param() { echo "set_param $*"; }
procd_close_instance() { echo "close_instance"; }
procd_send_signal() { echo "send_signal $*"; }
procd_add_reload_trigger() { echo "reload_trigger $*"; }
procd_add_validation() { echo "validation $*"; "$@"; }
# procd.sh procd_running: true when `ubus call service list` shows the
# instance with "running": true (PROCD_RUNNING set here)
procd_running() { echo "running $*"; [ -n "$PROCD_RUNNING" ]; }
uci_load_validate() {
	_pkg="$1"; _type="$2"; _name="$3"; _fn="$4"
	shift 4
	if [ -z "$_name" ]; then
		for _spec in "$@"; do echo "spec $_pkg $_type $_spec"; done
		return 0
	fi
	for _spec in "$@"; do
		_var="${_spec%%:*}"
		eval "_val=\${UCI_$_var-\${_spec##*:}}"
		eval "$_var=\$_val"
	done
	eval "$_fn \"\$_name\" \"\${UCI_RESULT:-0}\""
}
# rc.common with USE_PROCD: start() is rc_procd start_service (the service
# message opened before and sent after it, by `set` without arguments), then
# service_started if the script defines it.  The status of that `if` is
# start's, so start_service's own is lost, and `$action "$@"` is rc.common's
# last command: its status is the script's exit status.
start() {
	procd_open_service wgrouter /etc/init.d/wgrouter
	start_service "$@"
	procd_close_service set
	if type service_started >/dev/null 2>&1; then
		service_started
	fi
}
"""


def procd_instances(lines):
    """The instances one `procd_close_service` message declares, by name,
    each with its parameter lines."""
    instances, current = {}, None
    for line in lines:
        if line.startswith("open_instance"):
            current = instances.setdefault(line.split(" ", 1)[1], [])
        elif line == "close_instance":
            current = None
        elif current is not None:
            current.append(line)
    return instances


def procd_applies(running, lines):
    """What procd does to the running instances (name -> parameters) on the
    message of lines: `set` replaces the service's instances with those the
    message declares (procd service/service.c service_update: vlist_update,
    each instance added, vlist_flush), and service_instance_update stops one
    not declared again, starts a new one, and hands one declared again to
    instance_update (service/instance.c), which leaves a running instance as
    it is unless instance_config_changed, and restarts it otherwise."""
    assert lines.count("close_service set") == 1, lines
    declared = procd_instances(lines)
    actions = {}
    for name in set(running) | set(declared):
        if name not in declared:
            actions[name] = "stopped"
        elif name not in running:
            actions[name] = "started"
        else:
            actions[name] = "kept" if running[name] == declared[name] else "restarted"
    return actions


def run_init(action, env=None):
    script = INIT_STUBS + ". %s\n%s\n" % (INIT, action)
    r = subprocess.run([BUSYBOX, "ash", "-c", script], capture_output=True, text=True,
                       env=dict(os.environ, **(env or {})))
    return r.returncode, r.stdout.splitlines(), r.stderr


def validation_spec():
    rc, lines, err = run_init("service_triggers")
    assert rc == 0, err
    spec = {}
    for line in lines:
        if line.startswith("spec "):
            _, package, type_, item = line.split(" ", 3)
            assert (package, type_) == ("wgrouter", "wgrouter")
            name, kind, default = item.split(":")
            spec[name] = (kind, default)
    return spec


@needs_busybox
def test_validation_spec_equals_settings_defaults():
    spec = validation_spec()
    fields = {f.name: f for f in dataclasses.fields(model.Settings)}
    assert set(spec) == set(fields)
    kinds = {"bool": ("bool",), "float": ("ufloat", "float"), "int": ("uinteger", "integer")}
    for name, (kind, default) in spec.items():
        field = fields[name]
        assert kind in kinds[field.type], "%s: %s is not a %s" % (name, kind, field.type)
        if field.type == "bool":
            value = {"1": True, "0": False}[default]
        elif field.type == "float":
            value = float(default)
        else:
            value = int(default)
        assert value == field.default, "%s: init default %s, Settings default %r" % (
            name, default, field.default)


@needs_busybox
def test_triggers():
    rc, lines, err = run_init("service_triggers")
    assert rc == 0, err
    assert "reload_trigger wgrouter network" in lines
    assert "validation validate_wgrouter_section" in lines


@needs_busybox
def test_start_runs_one_respawning_instance():
    rc, lines, err = run_init("start")
    assert rc == 0, err
    params = [line for line in lines if line.startswith(("open_instance", "set_param"))]
    assert params[0].startswith("open_instance")
    assert lines.count("close_instance") == 1
    assert "set_param command /usr/bin/wgrouter run" in lines
    respawn = [line.split()[2:] for line in lines if line.startswith("set_param respawn")]
    assert len(respawn) == 1 and len(respawn[0]) == 3 and all(x.isdigit() for x in respawn[0])
    assert "set_param stdout 1" in lines and "set_param stderr 1" in lines


@needs_busybox
def test_start_does_nothing_when_disabled():
    rc, lines, err = run_init("start", {"UCI_enabled": "0"})
    assert rc == 0, err
    assert not [line for line in lines if line.startswith("open_instance")]


@needs_busybox
def test_start_exits_zero_when_valid():
    rc, lines, err = run_init("start")
    assert rc == 0, err
    assert procd_applies({}, lines) == {"main": "started"}


@needs_busybox
def test_start_with_invalid_settings_keeps_the_running_daemon():
    _, started, _ = run_init("start")
    running = procd_instances(started)
    rc, lines, err = run_init("start", {"UCI_RESULT": "255", "PROCD_RUNNING": "1"})
    assert rc != 0
    assert "running wgrouter main" in lines
    assert procd_applies(running, lines) == {"main": "kept"}
    assert "invalid settings in /etc/config/wgrouter, keeping the running daemon" in err


@needs_busybox
def test_start_with_invalid_settings_starts_nothing():
    rc, lines, err = run_init("start", {"UCI_RESULT": "255"})
    assert rc != 0
    assert procd_applies({}, lines) == {}
    # the service and its triggers still reach procd: fixing the file and
    # `reload_config` starts the daemon
    assert "reload_trigger wgrouter network" in lines
    assert "invalid settings in /etc/config/wgrouter, not starting" in err


@needs_busybox
def test_start_when_disabled_stops_a_running_daemon():
    _, started, _ = run_init("start")
    rc, lines, err = run_init("start", {"UCI_enabled": "0", "PROCD_RUNNING": "1"})
    assert rc == 0, err
    assert procd_applies(procd_instances(started), lines) == {"main": "stopped"}


@needs_busybox
def test_reload_sends_sighup_without_restart(tmp_path):
    _, started, _ = run_init("start")
    os.makedirs(tmp_path / "var/run")
    (tmp_path / "var/run/wgrouter.pid").write_text("%d\n" % os.getpid())  # a live daemon
    rc, lines, err = run_init("reload_service", {"WGROUTER_ROOT": str(tmp_path), "PROCD_RUNNING": "1"})
    assert rc == 0, err
    assert lines[-1] == "send_signal wgrouter main HUP"
    # the instance is re-declared unchanged, so procd keeps it running
    assert procd_applies(procd_instances(started), lines[:-1]) == {"main": "kept"}


@needs_busybox
@pytest.mark.parametrize("content", ["dead", "", "garbage\n"])
def test_reload_with_a_stale_pid_file_sends_no_hup(tmp_path, content):
    # a pid file left by a killed daemon: procd's respawned one may not have
    # its HUP handler yet, and reads the new configuration anyway
    if content == "dead":
        gone = subprocess.Popen(["true"])
        gone.wait()
        content = "%d\n" % gone.pid
    os.makedirs(tmp_path / "var/run")
    (tmp_path / "var/run/wgrouter.pid").write_text(content)
    rc, lines, err = run_init("reload_service", {"WGROUTER_ROOT": str(tmp_path)})
    assert rc == 0, err
    assert "send_signal wgrouter main HUP" not in lines


@needs_busybox
def test_reload_of_a_daemon_not_yet_running_sends_no_hup(tmp_path):
    # a HUP reaching a daemon still starting would kill it; it reads the
    # new configuration anyway
    rc, lines, err = run_init("reload_service", {"WGROUTER_ROOT": str(tmp_path)})
    assert rc == 0, err
    assert "send_signal wgrouter main HUP" not in lines
    assert "set_param command /usr/bin/wgrouter run" in lines


@needs_busybox
def test_reload_with_invalid_settings_keeps_daemon():
    rc, lines, err = run_init("reload_service", {"UCI_RESULT": "255", "PROCD_RUNNING": "1"})
    assert rc != 0
    assert lines == []  # neither start (which would drop the instance) nor HUP


@needs_busybox
def test_reload_when_disabled_stops_without_signal():
    rc, lines, err = run_init("reload_service", {"UCI_enabled": "0"})
    assert rc == 0, err
    assert not [line for line in lines if line.startswith(("open_instance", "send_signal"))]


def test_init_header():
    with open(INIT) as f:
        text = f.read()
    assert text.startswith("#!/bin/sh /etc/rc.common\n")
    assert "\nUSE_PROCD=1\n" in text
    start = int(text.split("\nSTART=")[1].split()[0])
    assert 20 < start < 100  # after network (20)


# -------------------------------------------------------------- hotplug

# What the daemon writes for the interfaces it manages (write_ifaces).
IFACES = ["wan", "wanb", "wg0", "wg2"]

# The record file comes through the environment, so that only the argument
# "wgrouter" (or its absence) decides what the hotplug script sees in cmdline.
FAKE_DAEMON = textwrap.dedent("""\
    import os, signal
    record = os.environ["RECORD"]
    def seen(signum, frame):
        with open(record, "a") as f:
            f.write(signal.Signals(signum).name + "\\n")
    signal.signal(signal.SIGUSR1, seen)
    signal.signal(signal.SIGUSR2, seen)
    open(record + ".ready", "w").close()
    while True:
        signal.pause()
    """)


def wait_for(predicate, what):
    # a bound on attempts while a child process starts, not a speed check
    for _ in range(1000):
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("gave up waiting for " + what)


class FakeProcess:
    """A process that records the signals it gets; SIGUSR2 marks the end."""

    def __init__(self, record, *argv):
        self.record = record
        self.proc = subprocess.Popen([sys.executable, "-c", FAKE_DAEMON] + list(argv),
                                     env=dict(os.environ, RECORD=record))
        self.pid = self.proc.pid
        wait_for(lambda: os.path.exists(record + ".ready"), "the fake process")

    def signals(self):
        """Signals got so far (SIGUSR2 is handled after any pending SIGUSR1)."""
        os.kill(self.pid, signal.SIGUSR2)
        wait_for(lambda: os.path.exists(self.record) and "SIGUSR2" in open(self.record).read(),
                 "the marker signal")
        with open(self.record) as f:
            got = f.read().split()
        os.unlink(self.record)
        return [s for s in got if s != "SIGUSR2"]

    def close(self):
        self.proc.kill()
        self.proc.wait()


class Router:
    """A temporary root with the config, run dirs and a fake daemon."""

    def __init__(self, tmp_path):
        self.root = str(tmp_path)
        os.makedirs(os.path.join(self.root, "etc/config"))
        os.makedirs(os.path.join(self.root, "var/run/wgrouter"))
        self.ifaces = os.path.join(self.root, runfiles.IFACES)
        with open(self.ifaces, "w") as f:
            f.write("".join(name + "\n" for name in IFACES))
        self.spool = os.path.join(self.root, "var/run/wgrouter/events")
        self.pidfile = os.path.join(self.root, "var/run/wgrouter.pid")
        # "wgrouter" in its command line, like `python3 -m wgrouter run`
        self.daemon = FakeProcess(os.path.join(self.root, "signals"), "-m", "wgrouter", "run")
        self.write_pid(self.daemon.pid)

    def write_pid(self, pid):
        with open(self.pidfile, "w") as f:
            f.write("%d\n" % pid)

    def hotplug(self, action, interface, device=None):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "WGROUTER_ROOT": self.root,
               "ACTION": action, "INTERFACE": interface}
        if device:
            env["DEVICE"] = device
        # hotplug-call sources each script in a subshell
        r = subprocess.run([BUSYBOX, "ash", "-c", '( . "$0" )', HOTPLUG], env=env,
                           capture_output=True, text=True)
        assert r.stderr == ""
        return r.returncode

    def spooled(self):
        try:
            with open(self.spool) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def signals(self):
        return self.daemon.signals()

    def close(self):
        self.daemon.close()


@pytest.fixture
def router(tmp_path):
    if BUSYBOX is None:
        pytest.skip("busybox is not installed")
    r = Router(tmp_path)
    yield r
    r.close()


@pytest.mark.parametrize("action,interface,device,line", [
    ("ifup", "wan", "eth1", "ifup wan eth1"),  # `config wan` section name
    ("ifdown", "wan", None, "ifdown wan"),  # no DEVICE on ifdown
    ("ifupdate", "wanb", "wwan0", "ifupdate wanb wwan0"),  # `option interface`
    ("disconnected", "wanb", None, "disconnected wanb"),  # from mwan3track
    ("connected", "wan", None, "connected wan"),
    ("ifup", "wg0", "wg0", "ifup wg0 wg0"),  # managed tunnel
    ("ifdown", "wg2", None, "ifdown wg2"),  # the last line
])
def test_hotplug_passes_event(router, action, interface, device, line):
    assert router.hotplug(action, interface, device) == 0
    assert router.spooled() == [line]
    assert router.signals() == ["SIGUSR1"]


def test_hotplug_appends(router):
    router.hotplug("ifdown", "wan")
    router.hotplug("ifup", "wanb", "wwan0")
    assert router.spooled() == ["ifdown wan", "ifup wanb wwan0"]
    assert router.signals() == ["SIGUSR1", "SIGUSR1"]


@pytest.mark.parametrize("action,interface", [
    ("ifup", "lan"),  # not ours
    ("ifup", "wg"),  # a prefix of a name is not the name
    ("ifup", "wan wanb"),
    ("ifup", "eth1"),  # a device name is not an interface name
    ("ifup-failed", "wan"),  # irrelevant actions
    ("free", "wan"),
    ("create", "wan"),
    ("connecting", "wan"),
    ("", "wan"),
    ("ifup", ""),
])
def test_hotplug_ignores(router, action, interface):
    assert router.hotplug(action, interface, "eth9") == 0
    assert router.spooled() == []
    assert router.signals() == []


# /etc/config/wgrouter as people write it by hand: quoted types and names,
# comments, an anonymous section, a disabled tunnel, an option given twice.
HAND_WRITTEN = textwrap.dedent("""\
    config 'wgrouter' 'main'
    \toption enabled '1'

    config "wan" "wan"   # the fiber
    \toption device 'eth1'

    config wan
    \toption 'interface' 'wanb'  # LTE
    \toption device "wwan0"

    config tunnel 'wg0'
    \toption enabled '0'
    \toption enabled '1'

    config tunnel 'wg1'
    \toption enabled 'no'
    """)


@pytest.mark.parametrize("wgrouter_config,passed", [
    (HAND_WRITTEN, {"wan", "wanb", "wg0"}),
    (None, {"wan", "wanb", "wg0"}),  # the shipped file
])
def test_hotplug_passes_what_the_daemon_loaded(router, tmp_path, wgrouter_config, passed):
    """The script and the daemon cannot disagree on which interfaces are
    managed: the script reads the list the daemon wrote from config.load."""
    root = tmp_path / "cfg"
    test_config.write(root, wgrouter=wgrouter_config)
    if wgrouter_config is None:
        shutil.copy(os.path.join(FILES, "etc/config/wgrouter"), str(root / "etc/config/wgrouter"))
    cfg = config.load(str(root))
    runfiles.write_ifaces(router.root, cfg)
    for interface in ("wan", "wanb", "wg0", "wg1", "lan", "main"):
        assert router.hotplug("ifdown", interface) == 0
    assert router.spooled() == ["ifdown " + i for i in ("wan", "wanb", "wg0", "wg1") if i in passed]


def test_hotplug_without_interface_list(router):
    # the daemon is waiting for a valid configuration: it manages nothing
    os.unlink(router.ifaces)
    assert router.hotplug("ifup", "wan", "eth1") == 0
    assert router.spooled() == []
    assert router.signals() == []


def test_hotplug_without_pid_file(router):
    os.unlink(router.pidfile)
    assert router.hotplug("ifup", "wan", "eth1") == 0
    assert router.spooled() == []
    assert router.signals() == []


@pytest.mark.parametrize("content", ["", "garbage\n", "12 34\n", "-1\n"])
def test_hotplug_bad_pid_file(router, content):
    with open(router.pidfile, "w") as f:
        f.write(content)
    assert router.hotplug("ifup", "wan", "eth1") == 0
    assert router.spooled() == []
    assert router.signals() == []


def test_hotplug_dead_pid(router):
    dead = subprocess.Popen(["true"])
    dead.wait()
    router.write_pid(dead.pid)
    assert router.hotplug("ifup", "wan", "eth1") == 0
    assert router.spooled() == []


def test_hotplug_never_signals_a_foreign_process(router):
    # a stale pid file naming a reused pid: SIGUSR1 would kill most daemons
    other = FakeProcess(os.path.join(router.root, "foreign"), "-m", "other", "run")
    try:
        router.write_pid(other.pid)
        assert router.hotplug("ifup", "wan", "eth1") == 0
        assert router.spooled() == []
        assert other.signals() == []
    finally:
        other.close()


def test_hotplug_without_spool_dir(router):
    shutil.rmtree(os.path.join(router.root, "var/run/wgrouter"))
    assert router.hotplug("ifup", "wan", "eth1") == 0
    assert router.signals() == []


def test_hotplug_starts_nothing_heavy():
    with open(HOTPLUG) as f:
        code = [line.split("#")[0] for line in f if not line.lstrip().startswith("#")]
    words = " ".join(code).split()
    for heavy in ("uci", "ubus", "python3", "/usr/bin/wgrouter", "sleep", "logger"):
        assert heavy not in words, heavy


# -------------------------------------------------------------- wrapper

def test_wrapper_execs_the_package():
    with open(WRAPPER) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert lines == ['exec /usr/bin/python3 -P -m wgrouter "$@"']


@needs_busybox
@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="no /usr/bin/python3")
def test_wrapper_ignores_modules_in_the_current_directory(tmp_path):
    (tmp_path / "json.py").write_text("raise SystemExit(99)\n")  # planted in /tmp, say
    r = subprocess.run([BUSYBOX, "ash", WRAPPER, "--help"], capture_output=True, text=True,
                       cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, (r.returncode, r.stderr)


@needs_busybox
@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="no /usr/bin/python3")
def test_wrapper_runs_cli():
    r = subprocess.run([BUSYBOX, "ash", WRAPPER, "--help"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    for command in ("run", "status", "switch", "check-config"):
        assert command in r.stdout
