"""Watching the spool: watchdog wakes the daemon when news arrives.

Owns: which folders are watched, for which kinds of event, and how an event
reaches the loop (a (name, kind) on the pending queue's event queue for
pending/, a run file's name on ``run_news`` for the run folder, and a
wake-up of the loop's self-pipe).

Invariants:
- Events only wake the loop; it re-lists what changed (inotify can drop
  events, and a timer re-lists everything anyway).
- Only news is watched: pending/, requests/ and this host's run folder
  (there, only files closed after writing: a shepherd's exit).
  The daemon's own writes (records through tmp/, logs, heartbeats) wake
  nothing: on a busy queue they were ~17 events per job, each costing
  watchdog's two threads more than the loop's own work on it.
- An event costs one thread: watchdog's inotify reader calls the daemon
  (``_direct``, watchdog >= 7); an observer, the fallback for older
  layouts, passes it through two more threads first.
- No event is ever held back. watchdog holds a rename's "moved from" half
  for 0.5 s, and every event behind it, waiting for its "moved to" half in
  the same watch; so the inotify mask of these watches has no "moved from"
  (a job leaving pending/ is the daemon's own doing, and the next re-list
  sees anything else). Where that mask cannot be set (another watchdog
  layout), one recursive watch on the whole spool pairs the halves instead.
- On a network filesystem (or ``--polling``) these folders are polled.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from .options import NETWORK_FS, filesystem_type

log = logging.getLogger("spoold")


def start(d):
    """Start watching for daemon ``d``; returns the running observer."""
    from watchdog.events import (
        FileClosedEvent,
        FileCreatedEvent,
        FileDeletedEvent,
        FileMovedEvent,
        FileSystemEventHandler,
    )

    pending = d.spool.pending
    news = (pending, d.spool.requests, d.spool.run_dir(d.o.host))

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            dest = getattr(event, "dest_path", "") or ""
            wake = False
            for path, kind in ((event.src_path, event.event_type), (dest, "moved_to")):
                if not path:
                    continue
                p = Path(os.fsdecode(path))
                wake = wake or p.parent in news
                if p.parent == pending:
                    d.queue.events.put((p.name, kind))
                elif p.parent == news[2]:
                    d.run_news.put(p.name)
            if wake:
                d.waker.wake()

    polling = d.o.polling
    if polling is None:
        fs = filesystem_type(d.spool.root)
        polling = fs in NETWORK_FS
        if polling:
            log.info("spool is on %s: watching by polling (other hosts' writes are "
                     "invisible to inotify)", fs)
    handler = Handler()
    kinds = [FileCreatedEvent, FileMovedEvent, FileClosedEvent, FileDeletedEvent]
    if polling:
        from watchdog.observers.polling import PollingObserver

        obs = PollingObserver(timeout=0.5)
        for folder in news:
            obs.schedule(handler, str(folder), recursive=False)
    elif (obs := _direct(d, news)) is not None:
        pass
    elif (obs := _news_observer(news[2])) is not None:
        for folder in news:
            obs.schedule(handler, str(folder), recursive=False,
                         event_filter=[FileCreatedEvent, FileClosedEvent, FileDeletedEvent])
    else:
        from watchdog.observers import Observer

        obs = Observer()
        try:
            obs.schedule(handler, str(d.spool.root), recursive=True, event_filter=kinds)
        except TypeError:  # watchdog < 4 has no event_filter
            obs.schedule(handler, str(d.spool.root), recursive=True)
    obs.daemon = True
    obs.start()
    return obs


def _news_observer(run_dir: Path):
    """An inotify observer whose watches never ask for "moved from" (see the
    module's invariants), or None where this watchdog is not laid out as
    4.x-7.x are (an emitter class chosen by the observer, whose mask comes
    from ``get_event_mask_from_filter``). In ``run_dir`` only a closed file is
    news (a shepherd's exit closes its run file); the daemon's own creations
    and removals there were half of the events of each job."""
    try:
        from watchdog.observers.inotify import InotifyEmitter, InotifyObserver
        from watchdog.observers.inotify_c import InotifyConstants as IN
    except ImportError:
        return None
    if not hasattr(InotifyEmitter, "get_event_mask_from_filter"):
        return None

    class NewsEmitter(InotifyEmitter):
        def get_event_mask_from_filter(self):
            return _mask(IN, Path(os.fsdecode(self.watch.path)) == run_dir)

    obs = InotifyObserver()
    if getattr(obs, "_emitter_class", None) is not InotifyEmitter:
        return None
    obs._emitter_class = NewsEmitter  # watchdog has no public way to choose the mask
    return obs


def _mask(IN, run_dir: bool) -> int:
    """What a watch asks for: no "moved from" (see the module's invariants);
    in the run folder only closed files (a shepherd's exit closes its run
    file; the daemon's own creations and removals there are no news)."""
    if run_dir:
        return IN.IN_CLOSE_WRITE | IN.IN_DELETE_SELF
    return IN.IN_CREATE | IN.IN_MOVED_TO | IN.IN_CLOSE_WRITE | IN.IN_DELETE | IN.IN_DELETE_SELF


def _direct(d, news: tuple):
    """watchdog's inotify reader (``InotifyFD``, watchdog >= 7), to be started:
    it calls us from its own thread; None where this watchdog has none. An
    observer passes each event on through two more threads (an emitter and a
    dispatcher), a GIL hand-off each: of the daemon's CPU for an event that
    only wakes the loop, the three threads took over half."""
    try:
        from watchdog.observers.inotify_c import InotifyConstants as IN
        from watchdog.observers.inotify_c import InotifyFD
    except ImportError:
        return None
    if not hasattr(InotifyFD, "add_callback"):
        return None
    kinds = ((IN.IN_MOVED_TO, "moved_to"), (IN.IN_CREATE, "created"),
             (IN.IN_CLOSE_WRITE, "closed"), (IN.IN_DELETE, "deleted"))

    class News:
        def __init__(self, folder: Path, reader):
            self.folder, self.reader = folder, reader
            self.pending = folder == d.spool.pending
            self.runs = folder == news[2]

        def on_event(self, event) -> None:
            if self.pending and event.name:
                kind = next((k for bit, k in kinds if event.mask & bit), None)
                if kind:
                    d.queue.events.put((os.fsdecode(event.name), kind))
            elif self.runs and event.name:
                d.run_news.put(os.fsdecode(event.name))
            d.waker.wake()

        def on_watch_deleted(self, wd) -> None:
            self.reader.lost.add(self.folder)  # the loop makes it again, then `again`
            d.waker.wake()

        def on_queue_overflow(self) -> None:
            d.next_rescan = 0.0  # events were lost: re-list everything now
            d.waker.wake()

    class Reader(InotifyFD):
        def __init__(self):
            super().__init__()
            self.lost: set[Path] = set()  # folders whose watch went with them

        def watch(self, folder: Path) -> None:
            self.add_callback(os.fsencode(folder), _mask(IN, folder == news[2]) | IN.IN_ONLYDIR
                              | IN.IN_DONT_FOLLOW, News(folder, self), "spoold")

        def again(self) -> None:
            for folder in list(self.lost):
                with contextlib.suppress(OSError):  # not back yet: at the next repair
                    self.watch(folder)
                    self.lost.discard(folder)

    reader = Reader()
    try:
        for folder in news:
            reader.watch(folder)
    except OSError as e:  # (a folder that is a link, say): an observer does what it can
        log.info("watching %s directly failed (%s); using a watchdog observer", folder, e)
        reader.close()
        return None
    return reader


def again(watcher) -> None:
    """Watch again the folders the loop has just made again (a watch goes with
    its folder). Only the direct reader can; where an observer watches, the
    full re-lists find what comes into them."""
    if hasattr(watcher, "again"):
        watcher.again()
