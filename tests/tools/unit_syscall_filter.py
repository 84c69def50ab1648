#!/usr/bin/env python3
"""Print the system calls a unit's SystemCallFilter= lines allow, one per line.

usage: unit_syscall_filter.py UNIT-FILE [EXTRA-SYSCALL...]

Reads every SystemCallFilter= line of UNIT-FILE in order, as systemd does: the
first line without "~" starts an allow list; a "~" line takes names away
from it; a later line without "~" adds to it. Groups (@name) are expanded
with `systemd-analyze syscall-filter` (recursively). Used by the test
est_walkthrough_unit_filter (tests/meson.build) to run p11escrowd under the
packaged unit's filter without systemd as PID 1. EXTRA-SYSCALL names are
allowed besides (the sanitizer build adds ptrace: LeakSanitizer stops the
world with it, as src/daemon/sandbox.c allows it there too).
"""
import re
import subprocess
import sys


def groups():
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True,
                         text=True, check=True).stdout
    table, current = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            table[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            table[current].append(line.strip())
    return table


def expand(name, table, seen=None):
    seen = seen if seen is not None else set()
    if not name.startswith("@"):
        return {name}
    if name in seen:
        return set()
    seen.add(name)
    if name not in table:
        sys.exit(f"unit_syscall_filter: unknown group {name}")
    result = set()
    for member in table[name]:
        result |= expand(member, table, seen)
    return result


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__.split("\n\n")[1])
    table = groups()
    allowed = None
    for line in open(argv[1], encoding="utf-8"):
        m = re.match(r"^SystemCallFilter=(~?)(.*)$", line.strip())
        if not m:
            continue
        names = set()
        for word in m.group(2).split():
            names |= expand(word, table)
        if m.group(1) == "~":
            if allowed is None:
                sys.exit("unit_syscall_filter: a deny list without an allow list is not emulated here")
            allowed -= names
        else:
            allowed = names if allowed is None else allowed | names
    if allowed is None:
        sys.exit("unit_syscall_filter: no SystemCallFilter= in " + argv[1])
    allowed |= set(argv[2:])
    print("\n".join(sorted(allowed)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
