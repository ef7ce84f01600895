"""The watcher (spoold/watch.py) on its own, in each of its inotify layouts:
watchdog's reader calling the daemon directly (watchdog >= 7), and an
observer with the daemon's own mask (the layout of watchdog 4-6, the
fallback). Each must hand pending/ news to the queue with its kind, wake the
loop for requests/ and for a shepherd's exit in the run folder, and say
nothing of the daemon's own creations and removals there."""

from __future__ import annotations

import os
import queue
import shutil
import threading
from types import SimpleNamespace

import pytest
from conftest import wait_for

from spoold import watch
from spoold.spool import Spool


class Waker:
    def __init__(self):
        self.count = 0
        self.lock = threading.Lock()

    def wake(self) -> None:
        with self.lock:
            self.count += 1


def daemon_like(sp: Spool) -> SimpleNamespace:
    """What watch.start uses of a daemon."""
    return SimpleNamespace(spool=sp, o=SimpleNamespace(host="h", polling=False),
                           queue=SimpleNamespace(events=queue.SimpleQueue()), waker=Waker(),
                           next_rescan=5.0, run_news=queue.SimpleQueue())


@pytest.fixture(params=["direct", "observer"])
def watched(request, tmp_path, monkeypatch):
    sp = Spool(tmp_path / "spool")
    sp.create()
    sp.run_dir("h").mkdir(parents=True)
    if request.param == "observer":
        monkeypatch.setattr(watch, "_direct", lambda d, news: None)
    d = daemon_like(sp)
    obs = watch.start(d)
    if request.param == "direct":
        from watchdog.observers.inotify_c import InotifyFD

        assert isinstance(obs, InotifyFD), "watchdog >= 7 has InotifyFD: use it"
    # An observer's emitters add their watches from their own threads, after
    # start() returns: wait until the kernel lists a watch on each folder.
    wait_for(lambda: {os.stat(f).st_ino for f in (sp.pending, sp.requests, sp.run_dir("h"))}
             <= watched_inodes(), 5, "the watches to be set")
    yield sp, d
    obs.stop()
    obs.join(2)


def watched_inodes(pid: int | str = "self") -> set[int]:
    """Inodes process ``pid`` has an inotify watch on (/proc/PID/fdinfo)."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                found.update(int(w[4:], 16) for line in f if line.startswith("inotify wd:")
                             for w in line.split() if w.startswith("ino:"))
        except OSError:
            continue
    return found


def events(d) -> list:
    out = []
    while not d.queue.events.empty():
        out.append(d.queue.events.get())
    return out


def test_pending_news_reach_the_queue_with_their_kind(watched):
    sp, d = watched
    tmp = sp.tmp / "x"
    tmp.write_text("argv: [true]\n")
    os.rename(tmp, sp.pending / "0010-00000001.yaml")  # gsub's way
    (sp.pending / "dropped.yaml").write_text("argv: [true]\n")  # a program's way
    os.unlink(sp.pending / "dropped.yaml")
    seen: list = []
    want = [("dropped.yaml", "created"), ("dropped.yaml", "closed"),
            ("dropped.yaml", "deleted")]
    # (an observer calls a rename whose other half it was not asked for "created";
    # the queue takes both kinds alike)
    moved = {("0010-00000001.yaml", "moved_to"), ("0010-00000001.yaml", "created")}
    wait_for(lambda: seen.extend(events(d)) or all(w in seen for w in want)
             and moved & set(seen), 5, "the four events")
    assert [e for e in seen if e[0] == "dropped.yaml"] == want
    assert d.waker.count >= 1


def test_the_run_folder_wakes_the_loop_only_for_a_closed_file(watched):
    sp, d = watched
    run, start = sp.run_dir("h"), d.waker.count
    fd = os.open(run / "7.lock", os.O_RDWR | os.O_CREAT, 0o600)  # the daemon creates it
    os.write(fd, b"s\n")
    os.unlink(run / "7.lock")  # removed while still open: no news either
    os.close(fd)  # the last close of a file open for writing: a shepherd's exit
    wait_for(lambda: d.waker.count > start, 5, "a wake-up for the closed run file")
    os.close(os.open(run / "8.lock", os.O_RDONLY | os.O_CREAT, 0o600))  # made, never written
    os.close(os.open(run / "9.lock", os.O_WRONLY | os.O_CREAT, 0o600))  # a marker after it
    wait_for(lambda: d.waker.count >= start + 2, 5, "the marker's wake-up")
    # (one watch delivers in order: had 8.lock woken the loop, that came first)
    assert d.waker.count == start + 2
    assert events(d) == []  # nothing of the run folder goes to the pending queue
    closed = []
    while not d.run_news.empty():
        closed.append(d.run_news.get())
    assert closed == ["7.lock", "9.lock"]  # the run files closed, for the executor to probe


def test_a_folder_that_is_a_link_is_left_to_an_observer(tmp_path):
    """The direct reader never watches through a link (IN_DONT_FOLLOW,
    IN_ONLYDIR); where a folder is one, the watcher falls back to an observer
    instead of failing the daemon's start."""
    sp = Spool(tmp_path / "spool")
    sp.create()
    (tmp_path / "elsewhere").mkdir()
    sp.run_dir("h").parent.mkdir(parents=True, exist_ok=True)
    os.symlink(tmp_path / "elsewhere", sp.run_dir("h"))
    obs = watch.start(daemon_like(sp))
    try:
        from watchdog.observers.api import BaseObserver

        assert isinstance(obs, BaseObserver)
    finally:
        obs.stop()
        obs.join(2)


def test_a_removed_pending_folder_is_watched_again_once_the_daemon_makes_it(spool, daemon):
    """`rm -rf pending` takes its inotify watch along: the daemon makes the
    folder again and watches the new one (else a submission would wait for a
    full re-list, every 5 s or more, instead of its event)."""
    pending = spool.root / "pending"
    wait_for(lambda: os.stat(pending).st_ino in watched_inodes(daemon.proc.pid), 10,
             "the daemon's watch on pending/")
    shutil.rmtree(pending)
    wait_for(pending.is_dir, 15, "pending/ to be made again")
    wait_for(lambda: os.stat(pending).st_ino in watched_inodes(daemon.proc.pid), 10,
             "a watch on the new pending/")
    spool.wait_state(spool.gsub("-n", "0", "--", "true"), "done")
