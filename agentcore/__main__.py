"""`python -m agentcore`: the agentcore command."""

import sys

from .cli import main

sys.exit(main())
