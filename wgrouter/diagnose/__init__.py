"""`wgrouter diagnose`: the WireGuard troubleshooting checklist as one command.

Three parts, each using only the ones before it: ``facts`` reads the system
(and only reads), ``checks`` turns config, facts and ``now`` into findings
without I/O, ``report`` ranks and prints them.  ``run`` returns the ubus
reply {"findings": [...], "worst": status}; ``main`` prints it and returns
the exit code 0 (ok), 1 (warn) or 2 (fail).
"""

import json
import time

import wgrouter
from wgrouter import config as config_mod
from wgrouter import runner as runner_mod
from wgrouter.diagnose.checks import FAIL, evaluate, finding  # noqa: F401
from wgrouter.diagnose.facts import SYSTEM_RESOLVER, Facts, gather, parse_conntrack, parse_route_get  # noqa: F401
from wgrouter.diagnose.report import EXIT_CODES, format_text, report, worst  # noqa: F401


def run(root, config=None, runner=None, now=None):
    """The diagnosis as the ubus reply dict.  Loads the config when None."""
    if config is None:
        try:
            config = config_mod.load(root)
        except wgrouter.Error as e:
            return report([finding("config", FAIL, "the configuration does not load", str(e),
                                   "wgrouter check-config, then fix what it names")])
    runner = runner or runner_mod.Runner()
    try:
        facts = gather(root, config, runner)
    except (OSError, wgrouter.Error) as e:
        return report([finding("diagnose", FAIL, "cannot read the system state", str(e),
                               "run as root on the router")])
    return report(evaluate(config, facts, time.time() if now is None else now))


def main(root, as_json=False):
    result = run(root)
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_text(result))
    return EXIT_CODES[result["worst"]]
