"""`python -m harness`: the Hydra app of harness/app/cli.py (the `mprec` script too)."""

from harness.app.cli import main

if __name__ == "__main__":
    main()
