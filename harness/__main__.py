"""`python -m harness` and the `mprec` script: the Hydra app of harness/app/cli.py."""

import signal
import sys


def main() -> None:
    """Ctrl-C while Python imports the harness (a second or two) has started nothing: one line, no
    traceback, as later (harness/app/cli.py). The import runs with SIGINT noted, not raised: a
    KeyboardInterrupt raised inside a third-party import can be swallowed by its own `except`, and the run
    then went on as if never interrupted (once in fresh-ci, under load)."""
    noted: list[int] = []
    python_handler = signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    try:
        from harness.app.cli import run
    finally:
        signal.signal(signal.SIGINT, python_handler)
    if noted:
        print("interrupted: nothing was recorded yet; run the same command again to measure", file=sys.stderr)
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
