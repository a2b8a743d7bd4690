"""The `moorage` command line, apart from the supervisor process (which never imports it).

  common     exit codes, the usage error, finding a live tree
  commands   the subcommands and the argument parser (`main`)
  frame      one frame of `top`: the tree, pressure, per-op rows with the clients' beside them
  top        `moorage top`: gathering frames from a live tree, keys, the refresh loop
  top_view   drawing a frame (rich)
  slo_view   `moorage slo`: the SLO report as tables
"""
