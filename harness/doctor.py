"""`python -m harness.doctor [overrides]`: is this machine quiet enough to measure on?

The check itself is harness/app/doctor.py."""

import sys

from harness.app.doctor import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
