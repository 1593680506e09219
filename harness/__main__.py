"""`python -m harness`: the Hydra app of harness/app/cli.py (the `mprec` script too)."""

from harness.app.cli import run

if __name__ == "__main__":
    run()
