"""
Read an Autobahn|Testsuite index.json and fail on any case that did not pass.

A case passes when its behaviour is OK, NON-STRICT or INFORMATIONAL and its close behaviour OK or
INFORMATIONAL, or when it sends a message larger than relayd's max_message_size and relayd closed
it with 1009 (Message Too Big), which is what production limits must do. wstest itself always
exits 0, so this script is what makes a conformance run fail.

    python3 conformance/check.py REPORT_DIR --limit 65536 [--markdown docs/conformance-table.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASSING_CLOSE = {"OK", "INFORMATIONAL"}
_SIZE = re.compile(r"payload of length (\d+)(?: \* 2\*\*(\d+))?")


def payload_size(description: str) -> int | None:
    match = _SIZE.search(description)
    if not match:
        return None
    base, power = int(match.group(1)), match.group(2)
    return base * 2 ** int(power) if power else base


def _case_key(case: str) -> tuple:
    return tuple(int(part) for part in case.split("."))


def verdicts(report_dir: str, limit: int) -> dict[str, dict[str, str]]:
    with open(os.path.join(report_dir, "index.json")) as f:
        index = json.load(f)
    out: dict[str, dict[str, str]] = {}
    for agent, cases in index.items():
        for case, result in cases.items():
            behavior, close = result["behavior"], result["behaviorClose"]
            if behavior in PASSING and close in PASSING_CLOSE:
                verdict = behavior
            else:
                with open(os.path.join(report_dir, result["reportfile"])) as f:
                    detail = json.load(f)
                size = payload_size(detail.get("description", ""))
                if size is not None and size > limit and detail.get("remoteCloseCode") == 1009:
                    verdict = "LIMIT-1009"
                else:
                    verdict = f"FAILED ({behavior}/{close})"
            out.setdefault(agent, {})[case] = verdict
    return out


def markdown(results: dict[str, dict[str, str]]) -> str:
    lines = []
    for agent, cases in sorted(results.items()):
        groups: dict[str, dict[str, int]] = {}
        for case, verdict in cases.items():
            group = case.split(".")[0]
            groups.setdefault(group, {})
            groups[group][verdict] = groups[group].get(verdict, 0) + 1
        lines.append(f"| {agent} | cases | verdicts |")
        lines.append("|---|---|---|")
        for group in sorted(groups, key=int):
            counts = groups[group]
            total = sum(counts.values())
            lines.append(f"| | {group}.* ({total}) | " + ", ".join(f"{v}: {n}" for v, n in sorted(counts.items())) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report_dir")
    parser.add_argument("--limit", type=int, default=65536, help="relayd's max_message_size in the run")
    parser.add_argument("--markdown", help="write the result table here")
    args = parser.parse_args(argv)
    results = verdicts(args.report_dir, args.limit)
    failed = sorted(
        ((agent, case, v) for agent, cases in results.items() for case, v in cases.items() if v.startswith("FAILED")),
        key=lambda item: (item[0], _case_key(item[1])),
    )
    table = markdown(results)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    print(table)
    total = sum(len(c) for c in results.values())
    print(f"{total - len(failed)} passed, {len(failed)} failed")
    for agent, case, verdict in failed:
        print(f"  {agent} {case}: {verdict}")
    return 1 if failed or not total else 0


if __name__ == "__main__":
    sys.exit(main())
