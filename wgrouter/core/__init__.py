"""The decision core: which WAN each tunnel uses, when to probe, how to recover.

A pure core (no I/O): ``Engine`` in ``engine``, its parts in ``state``,
``wan``, ``names``, ``paths``, ``health`` and ``status``.
"""

from wgrouter.core.engine import Engine
from wgrouter.core.state import (  # noqa: F401  the names the shell, the CLI and tests use
    ANSWER_GRACE, BACKOFF_JITTER, CHECK_JITTER, DNS_CONFIRM_ANSWERS, DNS_FLIP_WINDOW, DNS_JITTER,
    DNS_REFRESH_MIN, DOWN, FLAP_FREE_LOSSES, FLAP_WINDOW, KEEPALIVE_BYTES, LINK_SETTLE, RECOVERING,
    RESOLVE_ANSWER_TIMEOUT, RESTART_SETTLE, STARTING, STEP_CANDIDATE, STEP_RERESOLVE, STEP_RESTART,
    STEP_WAN, SUSPECT, SUSPECT_HOLD_MAX, UP, WAN_CONFIRM_ROUNDS, WAN_RETRY, BadEvent, bad_address,
)

__all__ = ["Engine", "BadEvent", "bad_address"]
