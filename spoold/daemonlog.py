"""The daemon's own log: private, one line per event, and not floodable.

Owns: the handlers and filters of the ``spoold`` logger.

Invariants:
- ``state/spoold.log`` (and its rotations) is created 0600 without following
  links: it names other users' jobs and folders.
- Every message is one line: control characters that came from file names or
  fields (a newline in a name would forge a line) are escaped.
- A message template that fires more than ``BURST`` times in ``WINDOW``
  seconds is counted instead of written, and the count is logged once the
  window ends: a user planting thousands of bad files can neither fill the
  disk nor rotate away the history, and a step that keeps failing logs once.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import time

BURST = 10
WINDOW = 60.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape(text: str) -> str:
    """``text`` with control characters shown as \\n, \\x1b and so on."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class OneLineFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging API
        record.message = escape(record.message)
        return super().formatMessage(record)


class RateLimit(logging.Filter):
    """Per message template: at most BURST records per WINDOW, then a count."""

    def __init__(self):
        super().__init__()
        self.windows: dict[str, list] = {}  # template -> [window start, written, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        now = time.monotonic()
        key = str(record.msg)
        w = self.windows.get(key)
        if w is None or now - w[0] >= WINDOW:
            if w is not None and w[2]:
                record.msg = f"{record.msg} [and {w[2]} more like it in the last {WINDOW:g}s]"
            if len(self.windows) > 1000:
                self.windows.clear()
            self.windows[key] = [now, 1, 0]
            return True
        if w[1] < BURST:
            w[1] += 1
            return True
        w[2] += 1
        return False


class PrivateRotatingFile(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler whose files are 0600 and never opened through a link."""

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, "a", encoding=self.encoding or "utf-8", errors="backslashreplace")


def setup(logger: logging.Logger, path) -> None:
    """Add the spool's log file to ``logger`` and make every handler one-line
    and rate-limited (stderr too: under systemd that is the journal)."""
    h = PrivateRotatingFile(path, maxBytes=1 << 20, backupCount=3)
    for i in range(1, h.backupCount + 1):  # rotations made before they were private
        try:
            fd = os.open(f"{path}.{i}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
    logger.addHandler(h)
    limit = RateLimit()
    logger.addFilter(limit)
    fmt = "%(asctime)s %(levelname)s %(message)s"
    h.setFormatter(OneLineFormatter(fmt))
    for other in logging.getLogger().handlers:
        other.setFormatter(OneLineFormatter(other.formatter._fmt if other.formatter else fmt))
