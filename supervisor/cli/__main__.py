"""`python -m moorage.supervisor.cli`: what the `moorage` console script runs."""

import sys

from moorage.supervisor.cli.commands import main

sys.exit(main())
