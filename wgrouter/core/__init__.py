"""The decision core: which WAN each tunnel uses, when to probe, how to recover.

A pure core (no I/O): ``Engine`` in ``engine``, its parts in ``state``,
``wan``, ``names``, ``paths``, ``health`` and ``status``.
"""

from wgrouter.core.engine import Engine  # noqa: F401
from wgrouter.core.state import *  # noqa: F401,F403  the constants and BadEvent, bad_address
