"""What every driver script shares: the environment the test hands it (pgsplit's URL, the servers' ports) and
failing with the name of the step that failed.

Env: DATABASE_URL (pgsplit), PRIMARY_PORT, REPLICA_PORTS (comma-separated)."""

import contextlib
import os
import sys
import traceback

URL = os.environ["DATABASE_URL"]
PRIMARY = int(os.environ["PRIMARY_PORT"])
REPLICAS = {int(p) for p in os.environ["REPLICA_PORTS"].split(",")}


class Script:
    """The checks of the driver script `name`, whose driver raises `errors` (an exception class or a tuple)."""

    def __init__(self, name, errors):
        self.name = name
        self.errors = errors

    def expect(self, cond, what):
        if not cond:
            print(f"{self.name}: FAILED: {what}", file=sys.stderr)
            sys.exit(1)

    @contextlib.contextmanager
    def step(self, what):
        """Turns a driver error in `what` into a failure that names the step."""
        try:
            yield
        except self.errors as e:
            traceback.print_exc()
            self.expect(False, f"{what}: {type(e).__name__}: {e}")
