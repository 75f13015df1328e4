"""``python -m drift_gate``: the only place that reads ``sys.argv``."""

import sys

from drift_gate.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
