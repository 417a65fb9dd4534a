"""`python -m agentcore.cli`: the agentcore command."""

import sys

from . import main

sys.exit(main())
