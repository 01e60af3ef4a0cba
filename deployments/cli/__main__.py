"""``python -m deployments.cli ...``: the `rlhf` command."""

import sys

from deployments.cli.parser import main

sys.exit(main())
