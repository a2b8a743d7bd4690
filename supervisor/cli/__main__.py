"""`python -m moorage.supervisor.cli`: what the `moorage` console script runs.

`python -m` puts the working directory first on sys.path; an editor starts the tree in the
user's workspace, whose files must never be importable by it (a `start =` naming a module
there, or a module shadowing ours), so that entry goes before anything is imported from it.
"""

import os
import sys

if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from moorage.supervisor.cli.commands import main

sys.exit(main())
