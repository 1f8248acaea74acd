"""Wegweiser persistent agent (example): entry point, as installed in the field.

Run from the agent directory: ``python nats_agent.py``. Stops cleanly on
SIGTERM or SIGINT.
"""

import sys

from core.agent import main

if __name__ == "__main__":
    sys.exit(main())
