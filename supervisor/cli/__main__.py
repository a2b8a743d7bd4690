"""`python -m moorage.supervisor.cli`: the `moorage` command, run as a module.

`python -m` puts the working directory first on sys.path; an editor starts the tree in the
user's workspace, whose files must never be importable by it (a `start =` naming a module
there, or a module shadowing ours), so that entry goes before anything is imported from it.
Importing commands then takes off what PYTHONPATH's empty or relative elements put there
(commands.keep_workspace_off_path), before its own imports.
"""

import os
import sys

if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from moorage.supervisor.cli.commands import main

sys.exit(main())
