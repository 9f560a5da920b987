"""The report of `wgrouter diagnose`: the worst status of the findings, the
ubus reply ({"findings": [...], "worst": status}) and its text form."""

from wgrouter.diagnose.checks import FAIL, OK, WARN

# A status's rank is also the exit code of `wgrouter diagnose`.
EXIT_CODES = {OK: 0, WARN: 1, FAIL: 2}


def worst(findings):
    status = OK
    for f in findings:
        if EXIT_CODES[f["status"]] > EXIT_CODES[status]:
            status = f["status"]
    return status


def report(findings):
    return {"findings": findings, "worst": worst(findings)}


def format_text(result):
    lines = []
    for f in result["findings"]:
        where = f["tunnel"] or ""
        if f["peer"]:
            where += " peer %s" % f["peer"]
        line = "[%s]%s %s%s: %s" % (f["status"], " " * (4 - len(f["status"])), f["check"],
                                    " (%s)" % where if where else "", f["summary"])
        if f["fix"]:
            line += " -- fix: %s" % f["fix"]
        lines.append(line)
        if f["evidence"] and f["status"] != OK:
            lines.append("       evidence: %s" % f["evidence"])
    counts = {s: sum(1 for f in result["findings"] if f["status"] == s) for s in (OK, WARN, FAIL)}
    lines.append("%d ok, %d warn, %d fail: %s" % (counts[OK], counts[WARN], counts[FAIL],
                                                 result["worst"]))
    return "\n".join(lines)

