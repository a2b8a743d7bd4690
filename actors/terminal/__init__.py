"""The terminal actor's parts (the actor itself is actors/terminal.py).

Layout:
  scrollback   `Ring` (a session's scrollback) and `Scrollback` (the parse hop's bytes): a
               byte stream's recent past, addressed by absolute offset
  parsehop     `ParserLink` and `ParseHop`: output to the parser actor and its markers back,
               with the in-process fallback and raw output behind it
  keeperside   the terminal actor's side of the pty keeper link: requests, output, acks
  execs        a `term.exec` as its session tracks it; cutting output without markers
  specs        what each session was created from (for a successor)
  keeper_ptys  the pty keeper's PTYs: reading, writing, reaping, hanging up
"""
