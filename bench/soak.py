"""Long chaos soak: tests/lab/soak.py for ``--minutes`` (30 by default), its
figures merged into bench/results.json under "soak" (other keys kept).

    make soak                                   # 30 minutes, random seed
    make soak SOAK="--minutes 45 --seed 7"      # python3 -m bench.soak ...
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def merge(out, soak):
    """Put ``soak`` into the results file ``out`` as its "soak" entry."""
    try:
        with open(out) as f:
            results = json.load(f)
    except FileNotFoundError:
        results = {}
    results["soak"] = soak
    tmp = out + ".new"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, out)


def main(argv=None):
    from tests.lab import soak
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--ipv4-only", action="store_true", help="the IPv4 lab (default: IPv6 too)")
    ap.add_argument("--out", default=os.path.join(HERE, "results.json"))
    args = ap.parse_args(argv)
    run = soak.Soak(args.seed, args.minutes * 60, ipv6=not args.ipv4_only)
    print("soak seed %d, %g minutes" % (run.seed, args.minutes), flush=True)
    res = run.run()
    res["generated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    merge(args.out, res)
    print(json.dumps(res, indent=2, sort_keys=True))
    for line in res["problems"]:
        print("soak seed %d: %s" % (run.seed, line), file=sys.stderr)
    return 1 if res["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
