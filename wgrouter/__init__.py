"""wgrouter: keeps WireGuard tunnels up across a router's two WAN uplinks."""

__version__ = "0.1.0"


def log(msg):
    """One line to stderr, which procd passes to the system log."""
    import sys
    try:
        sys.stderr.write("wgrouter: %s\n" % msg)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class Error(Exception):
    """wgrouter error"""

    def __str__(self):
        if self.args:
            return str(self.args[0])
        return self.__doc__ or self.__class__.__name__
