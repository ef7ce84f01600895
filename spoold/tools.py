"""The console scripts gstat, ghist, glog and grequeue (pyproject's [project.scripts]).

Owns: nothing but the entry points. Each tool lives in its own module
(``gstat``, ``ghist``, ``glog``, ``grequeue``; what they share in ``toolbase``)
and is wrapped here by ``toolbase.entry``, so every one exits quietly on a
closed pipe (141), on Ctrl-C (130) and on an OS error (one line, 1).
Invariant: the tools only read the spool, except ``ghist --clean`` and
``grequeue``; they never ask the daemon anything.
"""

from __future__ import annotations

from . import ghist, glog, grequeue, gstat
from .ghist import history, render_ghist, render_timeline, timeline_rows  # noqa: F401
from .gstat import render_gstat, snapshot  # noqa: F401
from .spool import Spool  # noqa: F401
from .toolbase import Color, command_text, entry, esc  # noqa: F401

gstat_main = entry("gstat", gstat.main)
ghist_main = entry("ghist", ghist.main)
glog_main = entry("glog", glog.main)
grequeue_main = entry("grequeue", grequeue.main)
