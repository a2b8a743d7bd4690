"""vtparse: a pure, bounded, incremental parser for terminal byte streams (no sockets).

It finds the shell-integration markers (OSC 633, 133, 7, 1337) with absolute stream offsets,
optionally every token and the text between them, and strips sequences from a command's
output. The parser actor serves it per stream; the terminal actor uses it in-process when
the parser actor is down.

Layout:
  _events    the event records (markers, tokens, text, warnings) and their wire form
  _markers   OSC 633/133/7/1337 payload -> marker event; unescaping; the nonce rules
  _machine   the DEC ANSI state machine, byte by byte, with every bound and policy documented
  _codec     bytes to values: CSI parameters (whole and across chunks), UTF-8 cut points
  _parser    `Parser`: the fast paths (find / regex) in front of the machine; feed, flush, mode
  _scan      the markers-only scan and its memo of decoded payloads; `CORE` says whether the
             compiled one (_cscan.c, an optional extension) or the Python one runs
  _recovery  the seed's recovery modes (5.1) and how the reported mode moves
  _text      `clean()` and `TextCollector`: a command's output without escape sequences
  _dispatch  `Dispatcher`: in-process delivery of events to callbacks by kind

    parser = Parser(nonce="N0NCE")
    for event in parser.feed(chunk):
        print(event.kind, event.start, event.end, event.to_wire())
"""

from moorage.actors.vtparse._dispatch import Dispatcher
from moorage.actors.vtparse._events import (
    EVENT_TYPES,
    KINDS,
    CommandFinished,
    CommandLine,
    Control,
    Csi,
    Cwd,
    Dcs,
    Esc,
    Event,
    Invalid,
    Mark,
    Marker,
    Osc,
    OutputStart,
    Overflow,
    PromptEnd,
    PromptStart,
    Property,
    Rejected,
    Text,
    Token,
)
from moorage.actors.vtparse._markers import unescape
from moorage.actors.vtparse._parser import Parser, inert
from moorage.actors.vtparse._recovery import MAX_BUFFER_SIZE, MAX_HEADER, RecoveryMode
from moorage.actors.vtparse._scan import CORE
from moorage.actors.vtparse._text import Cleaner, TextCollector, clean, clean_fast, layout

__all__ = [
    "CORE",
    "EVENT_TYPES",
    "KINDS",
    "MAX_BUFFER_SIZE",
    "MAX_HEADER",
    "Cleaner",
    "CommandFinished",
    "CommandLine",
    "Control",
    "Csi",
    "Cwd",
    "Dcs",
    "Dispatcher",
    "Esc",
    "Event",
    "Invalid",
    "Mark",
    "Marker",
    "Osc",
    "OutputStart",
    "Overflow",
    "Parser",
    "PromptEnd",
    "PromptStart",
    "Property",
    "RecoveryMode",
    "Rejected",
    "Text",
    "TextCollector",
    "Token",
    "clean",
    "clean_fast",
    "inert",
    "layout",
    "unescape",
]
