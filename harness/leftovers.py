"""`python -m harness.leftovers [list|reap|record|stop-set|loopback]`: what the project started that nothing
will stop, and stopping it. The command is harness/app/leftovers.py; the mechanism is
harness/core/processes.py."""

import sys

from harness.app.leftovers import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
