"""Running system commands: one synchronous call, or an async child for the loop.

Everything wgrouter does to the system that is not a socket goes through a
``Runner``, so that tests can swap in a recording fake.
"""

import os
import subprocess
import typing

import wgrouter


class CannotStart(wgrouter.Error):
    """command could not be started"""


class CommandMissing(CannotStart):
    """command not found"""


class Result(typing.NamedTuple):
    rc: int
    out: str
    err: str


# rc reported for a command that had to be killed (same as coreutils timeout).
TIMEOUT_RC = 124
# rc reported for a command that could not be started (as the shell does):
# fork or exec failed, e.g. ENOMEM or EAGAIN on a router short of memory.
CANNOT_START_RC = 126


class Runner:
    """Runs commands for real."""

    def run(self, argv, timeout=5.0, input=None) -> Result:
        """Run argv to completion. A non-zero exit is a Result, not an error;
        a command running longer than ``timeout`` is killed and gets rc 124,
        one that cannot be started (fork failed) rc 126.  A missing command
        raises CommandMissing."""
        argv = [str(a) for a in argv]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                close_fds=True,
            )
        except FileNotFoundError:
            raise CommandMissing("command not found: %s" % argv[0]) from None
        except OSError as e:
            return Result(CANNOT_START_RC, "", _cannot_start(argv, e))
        data = input.encode() if isinstance(input, str) else input
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return Result(TIMEOUT_RC, _text(out), "%s: timed out after %gs" % (argv[0], timeout))
        return Result(proc.returncode, _text(out), _text(err))

    def spawn(self, argv, cwd=None) -> subprocess.Popen:
        """Start argv as an async child: stdout and stderr are pipes the
        caller reads (stdout through the selectors loop) and reaps.  Raises
        CannotStart (CommandMissing when it is not installed)."""
        argv = [str(a) for a in argv]
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                close_fds=True,
                cwd=cwd,
            )
        except FileNotFoundError:
            raise CommandMissing("command not found: %s" % argv[0]) from None
        except OSError as e:
            raise CannotStart(_cannot_start(argv, e)) from None


def _cannot_start(argv, error):
    return "cannot start %s: %s" % (argv[0], error.strerror or error)


def _read_available(fd):
    """What a pipe holds now, without waiting for a writer that may linger."""
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            return data
        if not chunk:
            return data
        data += chunk


def _text(data):
    return data.decode("utf-8", "replace") if data else ""


class Watched:
    """What the shell's selectors loop watches until it is done: a child
    process, or a request answered in process (ping.Echo, resolve.Query).

    The loop waits for ``fileobj`` (a pipe or a socket, set by the subclass)
    to be readable and calls ``read()`` until it says False; then ``reap()``
    gives (rc, out, err) and ``finish(rc, out, err)`` turns that into events.
    ``on_timeout()`` gives the events for one killed (``reap(kill=True)``) at
    its hard ``deadline`` (time.monotonic()).  ``group`` ties those of one
    action together (ProbeWan: one ping per target, one answer is enough).
    """

    def __init__(self, deadline, finish, on_timeout, name="", group=None):
        self.deadline = deadline
        self.finish = finish
        self.on_timeout = on_timeout
        self.name = name
        self.group = group


class Child(Watched):
    """An async child process: its stdout is what the loop watches."""

    def __init__(self, proc, deadline, finish, on_timeout, name="", group=None):
        super().__init__(deadline, finish, on_timeout, name, group)
        self.proc = proc
        self.fileobj = proc.stdout
        self.out = bytearray()

    def read(self) -> bool:
        """Read what stdout has; False at end of file."""
        try:
            data = os.read(self.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return True
        if not data:
            return False
        self.out += data
        return True

    def reap(self, kill=False):
        """Wait for the process (killing it first if asked) and close its pipes.
        Returns (rc, out, err)."""
        proc = self.proc
        if kill and proc.poll() is None:
            proc.kill()
        try:
            rc = proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            # stdout closed but the process lingers: do not hold the loop.
            proc.kill()
            rc = proc.wait()
        err = b""
        if proc.stderr is not None:
            err = _read_available(proc.stderr.fileno())
            proc.stderr.close()
        if proc.stdout is not None:
            proc.stdout.close()
        return rc, _text(bytes(self.out)), _text(err)
