"""``python -m loraswitch.core.cli`` (how torchrun and the tests start a run)."""

import sys

from loraswitch.core.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
