"""`python -m harness` and the `mprec` script: the Hydra app of harness/app/cli.py."""

import sys


def main() -> None:
    """Ctrl-C while Python imports the harness (a second or two) has started nothing: one line, no
    traceback, as later (harness/app/cli.py)."""
    try:
        from harness.app.cli import run
    except KeyboardInterrupt:
        print("interrupted: nothing was recorded yet; run the same command again to measure", file=sys.stderr)
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
