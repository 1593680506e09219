"""`python -m harness`: the Hydra app of harness/app/cli.py (the `mprec` script too)."""

import sys

try:
    from harness.app.cli import run
except KeyboardInterrupt:  # Ctrl-C while Python imports the harness: nothing has started
    print("interrupted: nothing was recorded yet; run the same command again to measure", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    run()
