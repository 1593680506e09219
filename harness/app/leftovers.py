"""`python -m harness.leftovers [list|reap|record|stop-set]`: what the project started that nothing will
stop (harness/core/processes.py), and stopping it.

    python -m harness.leftovers                 # list: leftovers, and the daemon sets that still belong
    python -m harness.leftovers reap            # stop every leftover (identity checked: PID + start time)
    python -m harness.leftovers record --what "team server" --folder DIR -- STOP COMMAND...   # scripts
    python -m harness.leftovers stop-set TOKEN  # stop whatever carries a set's mark, forget the set
    python -m harness.leftovers loopback TOKEN  # exit 1, naming them, if a set listens past loopback
"""

from __future__ import annotations

import argparse
import sys

from harness.core import processes


def _list() -> int:
    items = processes.leftovers()
    for item in items:
        print(f"leftover: {processes.describe(item)}")
    leftover_tokens = {i.daemon_set.token for i in items if i.daemon_set}
    for entry in processes.daemon_sets():
        if entry.token not in leftover_tokens:
            print(f"running: {entry.what} in {entry.folder} (stop: {' '.join(entry.stop_command)})")
    if items:
        print("stop them: python -m harness.leftovers reap")
    else:
        print("no leftovers")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.leftovers", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("list")
    sub.add_parser("reap")
    rec = sub.add_parser("record")
    rec.add_argument("--what", required=True)
    rec.add_argument("--folder", required=True)
    rec.add_argument("--token")
    rec.add_argument("stop_command", nargs="+")
    stop_set = sub.add_parser("stop-set")
    stop_set.add_argument("token")
    loopback = sub.add_parser("loopback")
    loopback.add_argument("token")
    args = parser.parse_args(argv)
    if args.command in (None, "list"):
        return _list()
    if args.command == "reap":
        items = processes.leftovers()
        for item in items:
            print(f"stopping {processes.describe(item)}")
        stopped = processes.reap(items)
        print(f"stopped {len(stopped)} process(es)" if items else "no leftovers")
        return 0
    if args.command == "record":
        print(processes.record(args.what, args.folder, args.stop_command, args.token))
        return 0
    if args.command == "loopback":
        beyond = processes.beyond_loopback(args.token)
        for line in beyond:
            print(f"listens beyond loopback: {line}", file=sys.stderr)
        return 1 if beyond else 0
    stopped = processes.stop([p for p, _ in processes.marked(processes.DAEMONS_ENV, args.token)])
    processes.forget(args.token)
    if stopped:
        print(f"stopped {len(stopped)} process(es) still marked {args.token}", file=sys.stderr)
    return 0
