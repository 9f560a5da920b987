"""A Runner stand-in: records every argv and answers from a script.

    fake = FakeRunner()
    fake.on(["wg", "set"], rc=1, err="Unable to modify interface")
    fake.on(["conntrack"], missing=True)
    ...
    assert fake.calls == [[...], [...]]

Rules match on an argv prefix; the most recently added matching rule wins,
and a rule with ``times`` stops matching after that many uses.  Unmatched
commands succeed with empty output.  ``spawn`` starts a real tiny process
(``python3 -c``) that prints the scripted output and exits with the scripted rc, so
the selectors loop sees real pipes.
"""

import subprocess
import sys

from wgrouter import runner


class FakeRunner:
    def __init__(self):
        self.calls = []  # argv lists given to run()
        self.spawned = []  # argv lists given to spawn()
        self.rules = []

    def on(self, prefix, rc=0, out="", err="", missing=False, times=None, delay=0.0):
        """Script the answer to commands starting with ``prefix``."""
        self.rules.append({"prefix": list(prefix), "result": runner.Result(rc, out, err),
                           "missing": missing, "times": times, "delay": delay})
        return self

    def _match(self, argv):
        for rule in reversed(self.rules):
            if argv[:len(rule["prefix"])] != rule["prefix"]:
                continue
            if rule["times"] is not None:
                if rule["times"] <= 0:
                    continue
                rule["times"] -= 1
            return rule
        return None

    def run(self, argv, timeout=5.0, input=None):
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        rule = self._match(argv)
        if rule is None:
            return runner.Result(0, "", "")
        if rule["missing"]:
            raise runner.CommandMissing("command not found: %s" % argv[0])
        return rule["result"]

    def spawn(self, argv, cwd=None):
        argv = [str(a) for a in argv]
        self.spawned.append(argv)
        rule = self._match(argv)
        if rule is not None and rule["missing"]:
            raise runner.CommandMissing("command not found: %s" % argv[0])
        result = rule["result"] if rule is not None else runner.Result(0, "", "")
        script = (
            "import sys, time\n"
            "time.sleep(float(sys.argv[4]))\n"
            "sys.stdout.write(sys.argv[1]); sys.stderr.write(sys.argv[2])\n"
            "sys.exit(int(sys.argv[3]))\n"
        )
        delay = rule["delay"] if rule is not None else 0.0
        return subprocess.Popen(
            [sys.executable, "-c", script, result.out, result.err, str(result.rc), str(delay)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
        )

    def commands(self, name):
        """The recorded run() argv lists whose program is ``name``."""
        return [argv for argv in self.calls if argv[0] == name]


# ------------------------------------------------------------ netns helper

import json  # noqa: E402
import os  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_counter = [0]


def netns_unavailable():
    """Why lab tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    name = "t%dprobe" % os.getpid()
    try:
        r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    except FileNotFoundError:
        return "ip (iproute2) not installed"
    if r.returncode != 0:
        return "cannot create a network namespace: %s" % r.stderr.strip()
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


class NetNS:
    """A throwaway network namespace named t<pid>n<k>, deleted on exit."""

    def __init__(self):
        _counter[0] += 1
        self.name = "t%dn%d" % (os.getpid(), _counter[0])

    def __enter__(self):
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        # kill whatever still runs inside, then drop the namespace
        r = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        for pid in r.stdout.split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def ip(self, *args):
        r = subprocess.run(["ip", "-n", self.name] + [str(a) for a in args], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("ip %s: %s" % (" ".join(map(str, args)), r.stderr.strip()))
        return r.stdout

    def exec_argv(self, argv):
        return ["ip", "netns", "exec", self.name] + [str(a) for a in argv]

    def python(self, code, timeout=60):
        """Run python code inside the namespace; its last stdout line is JSON."""
        r = subprocess.run(
            self.exec_argv([sys.executable, "-c", code]),
            capture_output=True, text=True, cwd=REPO, timeout=timeout,
        )
        if r.returncode != 0:
            raise RuntimeError("python in %s failed:\n%s" % (self.name, r.stderr))
        return json.loads(r.stdout.strip().splitlines()[-1])
