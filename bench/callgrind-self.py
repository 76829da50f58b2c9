#!/usr/bin/env python3
"""Top functions by self cost (instructions spent in the function itself) of a callgrind file.

Usage: bench/callgrind-self.py FILE [N] [--per DIVISOR]
Prints the N (default 30) most expensive functions; with --per, also the cost per unit (e.g.
per request). Reads the format directly: callgrind_annotate of some valgrind versions
attributes everything to the thread's first frame when the file comes from a triggered dump.
"""

import re
import sys
from collections import defaultdict


def main() -> int:
    args = [a for a in sys.argv[1:]]
    per = None
    if "--per" in args:
        i = args.index("--per")
        per = int(args[i + 1])
        del args[i : i + 2]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    path = args[0]
    top = int(args[1]) if len(args) > 1 else 30

    names: dict[str, str] = {}
    objects: dict[str, str] = {}
    self_cost: defaultdict[str, int] = defaultdict(int)
    total = 0
    current = None
    obj = ""
    skip_next = False
    compressed = re.compile(r"\((\d+)\)(?: (.*))?")

    def resolve(table: dict[str, str], value: str) -> str:
        m = compressed.match(value)
        if not m:
            return value
        if m.group(2) is not None:
            table[m.group(1)] = m.group(2)
        return table.get(m.group(1), value)

    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            if line.startswith("ob="):
                obj = resolve(objects, line[3:])
            elif line.startswith("fn="):
                current = (resolve(names, line[3:]), obj)
            elif line.startswith(("cfn=", "cfi=", "cfl=", "cob=")):
                if line.startswith("cfn="):
                    resolve(names, line[4:])
                elif line.startswith("cob="):
                    resolve(objects, line[4:])
            elif line.startswith("calls="):
                skip_next = True
            elif line.startswith("summary:"):
                total = int(line.split()[1])
            elif line[0].isdigit() or line[0] in "+-*":
                parts = line.split()
                if len(parts) < 2:
                    continue
                if skip_next:
                    skip_next = False
                    continue
                if current is not None:
                    self_cost[current] += int(parts[1])

    width = 16
    print(f"{'self Ir':>{width}} {'%':>6}" + (f" {'per unit':>10}" if per else "") + "  function")
    for (name, obj), cost in sorted(self_cost.items(), key=lambda kv: -kv[1])[:top]:
        share = 100.0 * cost / total if total else 0.0
        unit = f" {cost / per:>10.0f}" if per else ""
        short = obj.rsplit("/", 1)[-1]
        print(f"{cost:>{width},} {share:>5.1f}%{unit}  {name[:150]} [{short}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
