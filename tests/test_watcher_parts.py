"""The watcher's parts without sockets: retry policy, cache, confinement, coalescing, journal,
walk and diff, watches, and the event pipeline, on real files in a temporary directory."""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import random
import shutil
import stat
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from queue import SimpleQueue

import msgpack
import pytest

from moorage.actors.watcher import guarded, snapshot
from moorage.actors.watcher.cache import FileCache, etag, stat_key
from moorage.actors.watcher.coalesce import CREATED, DELETED, MODIFIED, Coalescer
from moorage.actors.watcher.confine import Roots
from moorage.actors.watcher.files import FileService
from moorage.actors.watcher.journal import Clock, Journal
from moorage.actors.watcher.mounts import DirProbe, MountTable, mount_of
from moorage.actors.watcher.pipeline import Pipeline
from moorage.actors.watcher.retry import Attempts, RetryPolicy, Verdict, classify
from moorage.actors.watcher.snapshot import Index, diff, make_stat, walk
from moorage.actors.watcher.statahead import StatAhead
from moorage.actors.watcher.watches import MAX_WATCHES, Watch, Watches
from moorage.actors.watcher.workers import Workers
from moorage.protocol.envelope import Packed, decode_reply, encode_reply
from moorage.protocol.errors import MoorageError
from moorage.protocol.recovery import Backoff
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(30)


class Later:
    """A `schedule` that records each delay and runs the callback at once (no waiting)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, delay: float, fn):  # type: ignore[no-untyped-def]
        self.delays.append(delay)
        fn()

        class _T:
            def cancel(self) -> None:
                pass

        return _T()


def failing(*errnos: int, then=lambda: "ok"):  # type: ignore[no-untyped-def]
    """An attempt that raises the given errnos in turn, then returns `then()`."""
    left = list(errnos)
    calls = []

    def attempt():  # type: ignore[no-untyped-def]
        calls.append(1)
        if left:
            code = left.pop(0)
            raise OSError(code, os.strerror(code))
        return then()

    attempt.calls = calls  # type: ignore[attr-defined]
    return attempt


POLICY = RetryPolicy(retries=3, backoff=Backoff(0.01, 2.0, 0.5))


# --- retry policy ------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "verdict", "kind"), [
    (errno.EINTR, Verdict.RETRY_NOW, "io_error"),
    (errno.EIO, Verdict.TRANSIENT, "io_error"),
    (errno.ESTALE, Verdict.TRANSIENT, "io_error"),
    (errno.ETIMEDOUT, Verdict.TRANSIENT, "io_error"),
    (errno.ECONNRESET, Verdict.TRANSIENT, "io_error"),
    (errno.ECONNABORTED, Verdict.TRANSIENT, "io_error"),
    (errno.ENOENT, Verdict.PERMANENT, "not_found"),
    (errno.EACCES, Verdict.PERMANENT, "forbidden"),
    (errno.EISDIR, Verdict.PERMANENT, "is_directory"),
    (errno.ENOSPC, Verdict.PERMANENT, "no_space"),
    (errno.EFBIG, Verdict.PERMANENT, "file_too_large"),
    (errno.ENOTDIR, Verdict.PERMANENT, "not_a_directory"),
    (errno.ENXIO, Verdict.PERMANENT, "io_error"),
])
def test_errnos_are_classified_as_retry_now_transient_or_a_permanent_kind(code, verdict, kind):
    assert classify(OSError(code, "x")) == (verdict, kind)


def test_eintr_is_retried_at_once_without_any_back_off():
    later = Later()
    attempt = failing(errno.EINTR, errno.EINTR)
    p = Attempts(POLICY, attempt, later, "/f").run()
    assert p.done and p.value == "ok" and later.delays == [] and len(attempt.calls) == 3


def test_transient_errors_back_off_exponentially_then_succeed():
    later = Later()
    p = Attempts(POLICY, failing(errno.EIO, errno.ESTALE), later, "/f").run()
    assert p.value == "ok" and later.delays == [0.01, 0.02]


def test_transient_errors_give_up_after_the_matrix_retries_with_io_error():
    later = Later()
    attempt = failing(*[errno.ETIMEDOUT] * 10)
    p = Attempts(POLICY, attempt, later, "/f").run()
    assert later.delays == [0.01, 0.02, 0.04] and len(attempt.calls) == 4
    with pytest.raises(MoorageError) as e:
        p.unwrap()
    # (the budget is spent here: a client's resends would multiply it)
    assert e.value.name == "io_error" and not e.value.retryable
    assert e.value.error.detail["attempts"] == 4 and e.value.error.detail["errno"] == "ETIMEDOUT"


def test_an_io_error_is_retryable_only_when_transient_and_tried_once():
    no_retries = RetryPolicy(retries=0, backoff=Backoff(0.01, 2.0, 0.5))
    once = Attempts(no_retries, failing(errno.EIO), Later(), "/f").run()
    assert once.error.name == "io_error" and once.error.retryable
    permanent = Attempts(POLICY, failing(errno.ENXIO), Later(), "/f").run()
    assert permanent.error.name == "io_error" and not permanent.error.retryable


def test_a_retried_read_that_stays_torn_says_so_in_its_message():
    """A read a tight appender tore at every try fails `io_error`; its message says why (the
    errno's text alone, "Resource temporarily unavailable", does not)."""
    def torn() -> None:
        raise BlockingIOError(errno.EAGAIN, "changed while it was read (torn)", "/f")

    p = Attempts(POLICY, torn, Later(), "/f").run()
    assert p.error.name == "io_error" and p.error.error.message == (
        "/f: Resource temporarily unavailable: changed while it was read (torn)")
    # (an errno raised by the system keeps its one text)
    plain = Attempts(POLICY, failing(errno.ENOENT), Later(), "/f").run()
    assert plain.error.error.message == "/f: No such file or directory"


def test_back_off_is_capped():
    later = Later()
    policy = RetryPolicy(retries=6, backoff=Backoff(0.125, 2.0, 0.5))
    Attempts(policy, failing(*[errno.EIO] * 10), later, "/f").run()
    assert later.delays == [0.125, 0.25, 0.5, 0.5, 0.5, 0.5]


def test_an_attempt_that_raises_what_is_not_an_os_error_is_answered_internal():
    """A bug, or a MemoryError on a 16 MiB read: answered, not left pending (a write's
    bookkeeping waits on its answer to let the file's next write go)."""
    def attempt() -> None:
        raise MemoryError("no room for the read")

    p = Attempts(POLICY, attempt, Later(), "/f").run()
    assert p.done and p.error.name == "internal" and "MemoryError" in str(p.error)


def test_permanent_errors_are_answered_at_once_without_retrying():
    later = Later()
    attempt = failing(errno.ENOENT)
    p = Attempts(POLICY, attempt, later, "/f").run()
    assert len(attempt.calls) == 1 and later.delays == []
    assert p.error.name == "not_found"


def test_a_retry_that_is_scheduled_leaves_the_outcome_pending_until_it_runs():
    queued = []
    p = Attempts(POLICY, failing(errno.EIO), lambda d, fn: queued.append(fn), "/f").run()
    assert not p.done
    got = []
    p.then(got.append)
    queued.pop()()
    assert p.done and got == [p] and p.value == "ok"


# --- files: cache, stale fallback, confinement ---------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_bytes(b"alpha")
    (tmp_path / "outside.txt").write_bytes(b"secret")
    return root


def service(root: Path, **kw) -> FileService:  # type: ignore[no-untyped-def]
    return FileService(Roots([str(root)]), FileCache(), POLICY, Later(), **kw)


@pytest.mark.parametrize("gone", [1, 30])
def test_directories_gone_drop_every_cached_file_under_them_and_no_other(tmp_path, gone):
    """A few directories are matched as prefixes, many by each entry's ancestors: the same
    answer either way, a sibling whose name only begins like a gone one's kept."""
    st = os.stat(tmp_path)
    cache = FileCache()
    for d in range(40):
        for f in range(3):
            for real in (f"/w/d{d}/f{f}", f"/w/d{d}/sub/x/f{f}", f"/w/d{d}x/f{f}"):
                cache.put(real, real, st, b"x")
    cache.invalidate_trees([f"/w/d{d}" for d in range(gone)] + ["/w/none/"])
    left = set(cache.entries)
    assert not any(p.startswith(f"/w/d{d}/") for d in range(gone) for p in left)
    assert len(left) == 40 * 9 - gone * 6
    assert all(f"/w/d{d}x/f0" in left for d in range(40))


def test_a_read_is_cached_and_a_hit_is_revalidated_by_stat(tree):
    fs = service(tree)
    path = str(tree / "a.txt")
    assert fs.read(path).unwrap().attachments == [b"alpha"]
    hit = fs.read_cached(path, 0, None)
    assert hit is not None and hit.attachments == [b"alpha"] and fs.cache.hits == 1
    (tree / "a.txt").write_bytes(b"bravo")  # same size: mtime/ctime tell
    assert fs.read_cached(path, 0, None) is None
    assert fs.read(path).unwrap().attachments == [b"bravo"]


def test_a_whole_file_hit_answers_the_body_its_miss_answered_packed_once(tree):
    fs = service(tree)
    path = str(tree / "a.txt")
    miss = fs.read(path).unwrap()
    first, second = fs.read_cached(path, 0, None), fs.read_cached(path, 0, 99)
    assert first is not None and second is not None
    assert type(first.body) is Packed and second.body is first.body  # packed by the first
    assert msgpack.unpackb(first.body.data) == miss.body and first.attachments == [b"alpha"]
    part = fs.read_cached(path, 1, 2)  # a range is answered as before, not from the packing
    assert part is not None and part.attachments == [b"lp"]
    assert part.body == {**miss.body, "offset": 1, "length": 2}
    frames = encode_reply(7, "ep", first.body, first.attachments)
    assert frames[2] is first.body.data  # sent as it is
    assert decode_reply(frames).body == miss.body


def test_a_cp_p_replacement_with_the_same_mtime_and_size_is_not_a_cache_hit(tree):
    fs = service(tree)
    a, b = tree / "a.txt", tree / "b.txt"
    b.write_bytes(b"BRAVO")
    st = a.stat()
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fs.read(str(a)).unwrap().attachments == [b"alpha"]
    subprocess.run(["cp", "-p", str(b), str(a)], check=True)
    after = a.stat()
    assert after.st_mtime_ns == st.st_mtime_ns and after.st_size == st.st_size
    assert fs.read_cached(str(a), 0, None) is None
    assert fs.read(str(a)).unwrap().attachments == [b"BRAVO"]


def test_a_read_failing_transiently_after_retries_answers_the_cached_copy_marked_stale(tree):
    fs = service(tree)
    path = str(tree / "a.txt")
    fs.read(path).unwrap()
    (tree / "a.txt").write_bytes(b"changed")  # the cached copy is no longer current
    calls = []

    def broken(real, offset, length):  # type: ignore[no-untyped-def]
        calls.append(real)
        raise OSError(errno.EIO, "Input/output error")

    fs.reader = broken
    ans = fs.read(path).unwrap()
    assert ans.body["stale"] is True and ans.attachments == [b"alpha"]
    assert "Input/output error" in ans.body["stale_reason"]
    assert len(calls) == 4 and fs.cache.stale_served == 1


def test_a_permanent_failure_is_not_hidden_behind_a_stale_copy(tree):
    fs = service(tree)
    path = str(tree / "a.txt")
    fs.read(path).unwrap()
    os.unlink(path)
    os.mkdir(path)  # replaced by a directory: is_directory is permanent
    with pytest.raises(MoorageError) as e:
        fs.read(path).unwrap()
    assert e.value.name == "is_directory"


def test_a_transient_failure_with_nothing_cached_is_an_io_error(tree):
    fs = service(tree)
    fs.reader = lambda real, offset, length: (_ for _ in ()).throw(OSError(errno.ESTALE, "x"))
    with pytest.raises(MoorageError) as e:
        fs.read(str(tree / "a.txt")).unwrap()
    assert e.value.name == "io_error" and e.value.error.detail["attempts"] == 4


def test_paths_that_lead_outside_the_roots_are_forbidden(tree):
    fs = service(tree)
    os.symlink(tree.parent / "outside.txt", tree / "link-out")
    os.symlink(tree / "a.txt", tree / "link-in")
    (tree / "sub").mkdir()
    for bad in ["../outside.txt", str(tree / "sub/../../outside.txt"), str(tree / "link-out"),
                str(tree.parent / "outside.txt"), "/etc/passwd"]:
        with pytest.raises(MoorageError) as e:
            fs.read(bad).unwrap()
        assert e.value.name == "forbidden", bad
    assert fs.read("link-in").unwrap().attachments == [b"alpha"]
    assert fs.read(str(tree / "sub/../a.txt")).unwrap().attachments == [b"alpha"]
    with pytest.raises(MoorageError) as e:
        fs.write("link-out", b"x").unwrap()
    assert e.value.name == "forbidden"
    assert (tree.parent / "outside.txt").read_bytes() == b"secret"


def test_a_descriptor_swapped_outside_after_resolution_is_refused(tree):
    roots = Roots([str(tree)])
    fd = os.open(tree.parent / "outside.txt", os.O_RDONLY)
    try:
        with pytest.raises(MoorageError) as e:
            roots.check_fd(fd, "a.txt")
        assert e.value.name == "forbidden"
    finally:
        os.close(fd)


@pytest.mark.parametrize("on_loop", [False, True], ids=["worker", "loop"])
@pytest.mark.parametrize("target", ["inside", "outside"])
def test_a_directory_swapped_for_a_symlink_after_its_resolution_is_followed_only_inside(
        tree, target, on_loop):
    # The second read trusts the remembered resolution (the path and the real path still
    # reach one inode: the same string through the same swapped-in link), so only the open
    # stands between it and the file the link leads to: on the loop, the compiled read's
    # open where this process has it (tests/test_watcher_file_core.py).
    fs = service(tree, offload=(lambda work, done: done(work())) if on_loop else None)
    (tree / "d").mkdir()
    (tree / "d" / "x.txt").write_bytes(b"first")
    elsewhere = tree / "e" if target == "inside" else tree.parent / "e"
    elsewhere.mkdir()
    (elsewhere / "x.txt").write_bytes(b"other")
    path = str(tree / "d" / "x.txt")
    assert fs.read(path).unwrap().attachments == [b"first"]
    shutil.rmtree(tree / "d")
    os.symlink(elsewhere, tree / "d")
    if target == "inside":
        assert fs.read(path).unwrap().attachments == [b"other"]
    else:
        with pytest.raises(MoorageError) as e:
            fs.read(path).unwrap()
        assert e.value.name == "forbidden"


def test_a_confined_open_refuses_a_final_symlink_even_to_a_file_inside(tree):
    os.symlink(tree / "a.txt", tree / "link-in")
    with pytest.raises(OSError) as e:
        Roots([str(tree)]).open(str(tree / "link-in"), os.O_RDONLY | os.O_CLOEXEC, "link-in")
    assert e.value.errno == errno.ELOOP


def test_big_reads_are_refused_and_paged_reads_reassemble_the_file(tree):
    fs = service(tree, max_read=1000)
    data = bytes(range(256)) * 10
    (tree / "big").write_bytes(data)
    with pytest.raises(MoorageError) as e:
        fs.read("big").unwrap()
    assert e.value.name == "file_too_large" and e.value.error.detail["size"] == 2560
    parts = [fs.read("big", off, 1000).unwrap() for off in range(0, 2560, 1000)]
    assert b"".join(p.attachments[0] for p in parts) == data
    assert [p.body["length"] for p in parts] == [1000, 1000, 560]


def test_writes_honour_if_match_and_atomic_writes_leave_no_temporary_behind(tree):
    fs = service(tree)
    path = str(tree / "a.txt")
    tag = etag(stat_key(os.stat(path)))
    with pytest.raises(MoorageError) as e:
        fs.write(path, b"x", if_match="0-0-0-0-0").unwrap()
    assert e.value.name == "conflict" and e.value.error.detail["current"] == tag
    with pytest.raises(MoorageError) as e:
        fs.write(path, b"x", if_match="").unwrap()
    assert e.value.name == "conflict"
    out = fs.write(path, b"new", if_match=tag).unwrap()
    assert (tree / "a.txt").read_bytes() == b"new" and out["bytes"] == 3
    assert fs.write(str(tree / "n.txt"), b"fresh", if_match="").unwrap()["atomic"]
    assert sorted(os.listdir(tree)) == ["a.txt", "n.txt"]
    assert fs.read_cached(path, 0, None).attachments == [b"new"]


def test_listing_is_confined_recursive_and_filtered_by_glob(tree):
    fs = service(tree)
    (tree / "d").mkdir()
    (tree / "d" / "x.py").write_text("1")
    (tree / "d" / "y.txt").write_text("2")
    names = {e["name"] for e in fs.list_dir(str(tree), recursive=True).unwrap()["entries"]}
    assert names == {"a.txt", "d", "d/x.py", "d/y.txt"}
    listed = fs.list_dir(str(tree), True, "*.py").unwrap()["entries"]
    assert [e["name"] for e in listed] == ["d/x.py"]
    with pytest.raises(MoorageError) as e:
        fs.list_dir(str(tree / "a.txt")).unwrap()
    assert e.value.name == "not_a_directory"


def many_files(root: Path, dirs: int, files: int) -> set[str]:
    """`dirs` directories of `files` files (every third a .py); returns the .py names."""
    py = set()
    for d in range(dirs):
        (root / f"d{d}").mkdir()
        for f in range(files):
            name = f"d{d}/f{f}.py" if f % 3 == 0 else f"d{d}/f{f}.txt"
            (root / name).touch()
            if name.endswith(".py"):
                py.add(name)
    return py


def test_a_big_listing_walks_a_bounded_part_here_and_the_rest_on_a_worker(tree):
    py = many_files(tree, 30, 6)
    handed: SimpleQueue = SimpleQueue()  # what a worker hands back to "the loop" (here)
    workers = Workers("io", handed.put, threads=1)
    fs = service(tree, list_loop_entries=7, offload=workers.submit)
    small = fs.list_dir(str(tree / "d0"))  # 6 entries: all looked at here
    assert small.done and len(small.unwrap()["entries"]) == 6 and workers.done == 0
    big = fs.list_dir(str(tree), recursive=True, glob="*.py")
    # 7 entries looked at here, the other 204 on the worker
    got = on_the_worker(big, handed)
    assert {e["name"] for e in got["entries"]} == py and not got["truncated"]
    assert workers.done == 1 and workers.in_flight == 0


def test_a_listing_stops_truncated_at_the_entries_it_may_look_at(tree):
    many_files(tree, 5, 6)
    fs = service(tree, max_list_scanned=10)
    got = fs.list_dir(str(tree), recursive=True, glob="*.nomatch").unwrap()
    assert got == {"path": str(tree), "entries": [], "truncated": True}
    whole = service(tree).list_dir(str(tree), recursive=True, glob="*.nomatch").unwrap()
    assert whole["truncated"] is False


def test_what_a_job_holds_goes_once_it_ran_not_when_the_next_job_comes():
    """A quiet watcher's last checkpoint (its packed parts: 16 MiB for a 190,000-path index)
    stayed in memory while the worker waited for a next job that never came."""
    handed: SimpleQueue = SimpleQueue()
    workers = Workers("io", handed.put, threads=1)

    class Parts(list):  # (a list cannot be weakly referenced; a subclass can)
        pass

    parts = Parts([b"x" * 1000])
    gone = weakref.ref(parts)
    job = workers.submit(lambda parts=parts: len(parts))
    del parts
    handed.get(timeout=10)()  # the hand-back, run here as the loop would
    try:
        assert job.result() == 1
        assert gone() is None
    finally:
        workers.shutdown()


def test_a_callback_that_raises_strands_none_of_the_jobs_handed_back_with_it():
    """Jobs that finish together come back in one hand-back; one whose waiter raises (a bug,
    a MemoryError in what it finishes) must not keep the others from settling: their
    requests would never be answered, and the pool would count them in flight for ever."""
    handed: SimpleQueue = SimpleQueue()
    workers = Workers("io", handed.put, threads=1)
    second_go = threading.Event()
    first = workers.submit(lambda: 1)
    second = workers.submit(lambda: second_go.wait(10) and 2)
    settled: list[int] = []
    first.then(lambda job: 1 / 0)
    second.then(lambda job: settled.append(job.value))
    try:
        run_done = handed.get(timeout=10)  # the first came back: the loop is woken once
        second_go.set()
        wait_for(lambda: len(workers._done) == 2, "the second handed back with the first")
        run_done()
        assert settled == [2] and first.done and workers.in_flight == 0
    finally:
        second_go.set()
        workers.shutdown()


def test_a_listing_refused_by_full_workers_answers_busy(tree):
    many_files(tree, 3, 6)
    workers = Workers("io", lambda fn: None, threads=1, queue=0)
    fs = service(tree, list_loop_entries=2, offload=workers.submit)
    gate = threading.Event()
    workers.submit(gate.wait)  # the one place, taken until the test ends
    try:
        with pytest.raises(MoorageError) as e:
            fs.list_dir(str(tree), recursive=True).unwrap()
        assert e.value.name == "busy"
    finally:
        gate.set()
        workers.shutdown()


# --- slow file systems, and reads the page cache cannot answer -------------------------------


def mountinfo_line(n: int, point: str, fs_type: str) -> str:
    """One line of /proc/self/mountinfo's format (man 5 proc) for a mount at `point`."""
    escaped = point.replace("\\", "\\134").replace(" ", "\\040")
    return f"{n} 1 0:{n} / {escaped} rw,relatime shared:{n} - {fs_type} src{n} rw\n"


def test_the_mount_table_finds_slow_file_systems_by_the_deepest_mount_of_a_path(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(mountinfo_line(1, "/", "ext4") + mountinfo_line(2, "/mnt/nfs", "nfs4")
                    + mountinfo_line(3, "/mnt/nfs/local disk", "ext4")
                    + mountinfo_line(4, "/home/u/remote", "fuse.sshfs")
                    + mountinfo_line(5, "/proc", "proc"))
    table = MountTable(mountinfo=str(info), max_age_s=0)
    assert table.slow("/mnt/nfs") and table.slow("/mnt/nfs/a/b")
    assert not table.slow("/mnt/nfs/local disk/x")  # a local mount inside the remote tree
    assert table.slow("/mnt/nfs/local") and table.slow("/home/u/remote/f")
    assert not table.slow("/home/u/remotes") and not table.slow("/home/u/x")
    assert not table.slow("/proc/self") and not table.slow("/")
    assert mount_of("/mnt/nfs/local disk/x", str(info)) == ("/mnt/nfs/local disk", "ext4")
    assert mount_of("/mnt/nfs/a", str(info)) == ("/mnt/nfs", "nfs4")
    assert mount_of("/etc", str(info)) == ("/", "ext4")
    info.write_text(mountinfo_line(1, "/", "ext4"))  # unmounted: read again when asked
    assert not table.slow("/mnt/nfs/a")
    assert not MountTable(("nfs4",), mountinfo=str(tmp_path / "none")).slow("/mnt/nfs")
    only_nfs = MountTable(("nfs4",), mountinfo=str(info), max_age_s=0)
    info.write_text(mountinfo_line(1, "/", "ext4") + mountinfo_line(4, "/r", "fuse.sshfs"))
    assert not only_nfs.slow("/r/x") and MountTable(mountinfo=str(info)).slow("/r/x")
    # a rootless container's root: FUSE over local storage is not slow, unless named so
    info.write_text(mountinfo_line(1, "/", "fuse.fuse-overlayfs")
                    + mountinfo_line(2, "/home/u/remote", "fuse.sshfs"))
    assert not MountTable(mountinfo=str(info)).slow("/etc/x")
    assert MountTable(mountinfo=str(info)).slow("/home/u/remote/x")
    assert MountTable(("fuse.fuse-overlayfs",), mountinfo=str(info)).slow("/etc/x")


def remote_service(tree: Path, tmp_path: Path) -> tuple[FileService, Workers, SimpleQueue]:
    """A FileService whose mount table says `tree/remote` is an sshfs mount: ops there go to
    the returned workers, whose hand-backs the test runs from the queue as the loop would."""
    (tree / "remote").mkdir()
    info = tmp_path / "mountinfo"
    info.write_text(mountinfo_line(1, "/", "ext4")
                    + mountinfo_line(2, str(tree / "remote"), "fuse.sshfs"))
    handed: SimpleQueue = SimpleQueue()
    workers = Workers("remote", handed.put, threads=1)
    fs = service(tree, remote=workers.submit,
                 slow=MountTable(mountinfo=str(info), max_age_s=0).slow)
    return fs, workers, handed


def test_the_probe_looks_at_a_slow_path_only_on_a_worker_and_answers_what_it_found(
        tree, tmp_path):
    """The liveness check's isdir: a local path is looked at at once; one on a slow mount
    is "not known" (None) until a remote worker has looked, one look at a time; and while
    nothing slow is mounted, slow_check gives the pipeline nothing to ask."""
    far = tree / "remote"
    far.mkdir()
    info = tmp_path / "mountinfo"
    info.write_text(mountinfo_line(1, "/", "ext4"))
    table = MountTable(mountinfo=str(info), max_age_s=0)
    assert table.slow_check() is None
    info.write_text(mountinfo_line(1, "/", "ext4")
                    + mountinfo_line(2, str(far), "fuse.sshfs"))
    check = table.slow_check()
    assert check is not None and check(str(far / "x")) and not check(str(tree / "x"))
    handed: SimpleQueue = SimpleQueue()
    workers = Workers("remote", handed.put, threads=1)
    probe = DirProbe(table.slow, workers.submit)
    assert probe.look(str(tree)) is True and workers.done == 0
    assert probe.look(str(far)) is None and probe.look(str(far)) is None
    handed.get(timeout=10)()  # the worker's look, handed back as the loop would run it
    assert workers.in_flight == 0 and workers.done == 1  # one look for the two questions
    far.rmdir()
    assert probe.look(str(far)) is True  # what was found last, while the next look is out
    handed.get(timeout=10)()
    assert probe.look(str(far)) is False and workers.done == 2
    workers.shutdown()


def test_a_path_resolving_onto_a_slow_mount_is_slow_and_others_are_not(tree, tmp_path):
    """Roots.on_slow follows symlinks (absolute, relative, chained, `..`, a loop) the way
    realpath does, up to the first component on a slow mount."""
    far = tree / "remote"
    far.mkdir()
    (far / "f").write_bytes(b"x")
    near = tree / "near"
    near.mkdir()
    (near / "to_far").symlink_to(far)
    (near / "rel").symlink_to("../remote/f")
    (near / "chain").symlink_to("rel")
    (near / "loop").symlink_to("loop")
    (near / "up").symlink_to("..")
    info = tmp_path / "mountinfo"
    info.write_text(mountinfo_line(1, "/", "ext4"))
    roots = Roots([str(tree)])
    table = MountTable(mountinfo=str(info), max_age_s=0)
    roots.slow_check = table.slow_check
    assert not roots.on_slow(str(near / "to_far" / "f"))  # nothing slow is mounted
    info.write_text(mountinfo_line(1, "/", "ext4")
                    + mountinfo_line(2, str(far), "fuse.sshfs"))
    for slow in (far / "f", near / "to_far" / "f", near / "rel", near / "chain",
                 near / "up" / "remote"):
        assert roots.on_slow(str(slow)), slow
    for local in (near, near / "loop", near / "up" / "near", near / "missing" / "x"):
        assert not roots.on_slow(str(local)), local
    real = roots.resolve_fast(str(near / "up" / "near"))  # remembered: judged by its real path
    assert real == str(near) and not roots.on_slow(str(near / "up" / "near"))


def on_the_worker(p, handed: SimpleQueue):  # type: ignore[no-untyped-def]
    """`p` waited for a worker; its hand-back (run here, as the loop would) settles it."""
    assert not p.done
    handed.get(timeout=10)()
    return p.unwrap()


def test_every_op_on_a_slow_file_system_runs_on_the_remote_workers_and_is_not_cached(
        tree, tmp_path):
    fs, workers, handed = remote_service(tree, tmp_path)
    far = tree / "remote"
    (far / "f").write_bytes(b"far away")
    got = on_the_worker(fs.read(str(far / "f")), handed)
    assert got.attachments == [b"far away"] and got.body["size"] == 8
    assert fs.read_cached(str(far / "f"), 0, None) is None and len(fs.cache) == 0
    assert on_the_worker(fs.stat_path(str(far / "f")), handed)["size"] == 8
    listed = on_the_worker(fs.list_dir(str(far)), handed)
    assert [e["name"] for e in listed["entries"]] == ["f"]
    wrote = on_the_worker(fs.write(str(far / "g"), b"new"), handed)
    assert wrote["path"] == str(far / "g") and (far / "g").read_bytes() == b"new"
    assert fs.remote_ops == 4 and workers.done == 4
    with pytest.raises(MoorageError) as e:  # errors classified as anywhere else
        on_the_worker(fs.read(str(far / "missing")), handed)
    assert e.value.name == "not_found"
    # elsewhere, nothing changes: answered at once, cached
    assert fs.read(str(tree / "a.txt")).unwrap().attachments == [b"alpha"]
    assert fs.read_cached(str(tree / "a.txt"), 0, None) is not None and fs.remote_ops == 5


def evicted(path: Path) -> bool:
    """Drop `path`'s pages from the page cache; False where the file system keeps them
    (tmpfs: its pages are the file). The probe of its first byte may start a read-ahead of
    its first pages, so they are dropped again after it; the file is far bigger than any
    read-ahead, so a whole-file read cannot find it all in memory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
        except BlockingIOError:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return True
        return False
    finally:
        os.close(fd)


def test_a_read_the_page_cache_cannot_answer_is_done_on_a_worker(tree):
    cold = tree / "cold.bin"
    cold.write_bytes(os.urandom(8 << 20))
    if not evicted(cold):
        pytest.skip("this file system keeps a file's pages in memory: nothing to read cold")
    handed: SimpleQueue = SimpleQueue()
    workers = Workers("io", handed.put, threads=1)
    for _ in range(5):
        # A read-ahead the probe started may land after the eviction (its pages are locked
        # while they are read, so the second drop skips them): the page cache then answers
        # the whole file, on the loop, as it should. Evict again and read again.
        fs = service(tree, offload=workers.submit)
        pending = fs.read(str(cold))
        if not pending.done:
            break
        assert pending.unwrap().attachments == [cold.read_bytes()] and fs.reads_offloaded == 0
        assert evicted(cold)
    got = on_the_worker(pending, handed)
    assert got.attachments == [cold.read_bytes()] and fs.reads_offloaded == 1
    warm = fs.read(str(tree / "a.txt"))  # in the page cache: answered here
    assert warm.done and fs.reads_offloaded == 1 and workers.done == 1


# --- coalescing, journal ---------------------------------------------------------------------


@pytest.mark.parametrize(("first", "then", "result"), [
    (CREATED, DELETED, None), (DELETED, CREATED, MODIFIED), (CREATED, MODIFIED, CREATED),
    (MODIFIED, MODIFIED, MODIFIED), (MODIFIED, DELETED, DELETED)])
def test_coalescing_follows_the_settle_rules(first, then, result):
    c = Coalescer()
    c.add("/p", first, False)
    c.add("/p", then, False)
    got = c.take()
    assert (got["/p"][0] if got else None) == result


def test_coalesced_events_keep_the_order_in_which_paths_first_changed():
    c = Coalescer()
    for path, kind in [("/a", CREATED), ("/b", CREATED), ("/a", MODIFIED), ("/c", CREATED),
                       ("/b", DELETED), ("/b", CREATED)]:
        c.add(path, kind, False)
    assert [(p, v[0]) for p, v in c.take().items()] == [
        ("/a", CREATED), ("/c", CREATED), ("/b", CREATED)]


def journaled(j: Journal, *batches: list[str]) -> None:
    """Stamp and keep events, one batch per list of paths ("" for a marker), as the
    pipeline does before it publishes them."""
    for paths in batches:
        evs = [j.append({"kind": "created", "path": p} if p else {"kind": "warning"})
               for p in paths]
        j.keep(evs[0]["clock"][2], evs[-1]["clock"][2],
               msgpack.packb({"events": evs}), tuple(p for p in paths if p))


def test_since_answers_from_the_journal_or_says_fresh_instance():
    j = Journal("inst", max_events=5)
    journaled(j, *[[f"/{i}"] for i in range(3)])
    got = j.since(Clock("inst", 0, 1))
    assert [e["path"] for e in got["events"]] == ["/1", "/2"] and not got["fresh_instance"]
    assert got["clock"] == ["inst", 0, 3] and got["events"][0]["clock"] == ["inst", 0, 2]
    assert j.since(Clock("other", 0, 1))["fresh_instance"]
    journaled(j, *[[f"/{i}"] for i in range(3, 10)])
    old = j.since(Clock("inst", 0, 2))
    assert old["fresh_instance"] and "older" in old["reason"]
    page = j.since(Clock("inst", 0, 5), max_events=2)
    assert page["more"] and page["clock"] == ["inst", 0, 7]
    with pytest.raises(MoorageError):
        Clock.from_wire(["inst", "x", 3])


def test_the_journal_keeps_whole_batches_and_answers_from_inside_one():
    j = Journal("inst", max_events=6)
    journaled(j, ["/a", "/b", "/c"], ["/d", "", "/e"], ["/f", "/a"])
    # 8 events > 6: the oldest batch went whole; the rest is answered from its middle on
    assert j.stats()["retained"] == 5 and j.first_seq == 4
    got = j.since(Clock("inst", 0, 4))
    assert [(e["clock"][2], e.get("path")) for e in got["events"]] == [
        (5, None), (6, "/e"), (7, "/f"), (8, "/a")]
    assert [e["clock"][2] for e in j.since(Clock("inst", 0, 5), max_events=2)["events"]] == [6, 7]
    assert j.paths_since(4) == ["/e", "/f", "/a"] and j.paths_since(6) == ["/f", "/a"]
    assert j.paths_since(8) == [] and j.since(Clock("inst", 0, 8))["events"] == []


# --- walk, diff, index, checkpoint ------------------------------------------------------------


def test_the_diff_reports_creations_deletions_and_modifications_but_not_directory_times(tree):
    (tree / "d").mkdir()
    (tree / "d" / "gone").write_text("x")
    before = walk(str(tree))
    os.unlink(tree / "d" / "gone")
    (tree / "d" / "new").write_text("y")  # changes d's mtime: not a change of d
    (tree / "a.txt").write_bytes(b"alpha")  # same contents, new ctime
    got = diff(before, walk(str(tree)))
    assert got == [(DELETED, str(tree / "d/gone"), False), (MODIFIED, str(tree / "a.txt"), False),
                   (CREATED, str(tree / "d/new"), False)]


def test_a_checkpoint_survives_a_round_trip_and_diffs_clean(tree, tmp_path):
    entries = walk(str(tree))
    path = str(tmp_path / "snap.msgpack")
    snapshot.save(path, {"entries": entries, "seq": 7})
    doc = snapshot.load(path)
    assert doc["seq"] == 7 and diff(doc["entries"], walk(str(tree))) == []
    Path(path).write_bytes(b"\xc1garbage")
    assert snapshot.load(path) is None


def test_a_big_checkpoint_is_written_in_chunks_and_read_back_whole(tmp_path):
    """More entries than a chunk: the stream's header, chunks and count round trip; a
    stream that lost its end, and a format-2 file (one map) of an earlier version, are
    told apart from it."""
    n = snapshot.SAVE_CHUNK * 2 + 5
    entries = {f"/w/f{i}": make_stat(0o100644, 1, i, i, i, i) for i in range(n)}
    path = tmp_path / "snap.msgpack"
    size = snapshot.save(str(path), {"entries": entries, "seq": 3, "gen": 2})
    assert size == path.stat().st_size
    doc = snapshot.load(str(path))
    assert doc is not None and doc["entries"] == entries and doc["seq"] == 3
    whole = path.read_bytes()
    end = msgpack.packb({"chunks": 3})
    assert whole.endswith(end)
    path.write_bytes(whole[:-len(end)])
    assert snapshot.load(str(path)) is None
    path.write_bytes(msgpack.packb({"format": 2, "entries": entries, "seq": 1}))
    assert snapshot.load(str(path))["entries"] == entries


def test_a_checkpoint_written_while_the_index_changes_counts_those_changes_unknown(tmp_path):
    """The capture holds the live index; its write, a call later, reads each entry as it is
    then. A path changed since the capture (through the wal, as the pipeline does) is
    unknown to the restart whatever the file holds for it; the others are as captured."""
    from moorage.actors.watcher.state import State

    st = State(tmp_path / "state", "tree-1")
    st.open_wal()
    entries = {f"/w/f{i}": make_stat(0o100644, 1, i, 1, 1, 1) for i in range(10)}
    st.checkpoint(1, lambda: {"entries": entries})  # captured, not written
    st.log(["/w/f3", "/w/f4", "/w/new"])  # the pipeline's wal record, then its index change
    entries["/w/f3"] = make_stat(0o100644, 1, 3, 99, 99, 99)
    del entries["/w/f4"]
    entries["/w/new"] = make_stat(0o100644, 1, 50, 1, 1, 1)
    st.checkpoint(2, lambda: {"entries": entries})  # writes the first capture
    assert st.written == 1
    _, saved = st.load()
    base = st.restart_base(saved, lambda p: True)
    unknown = {p for p, s in base.items() if s == snapshot.UNKNOWN}
    assert unknown == {"/w/f3", "/w/f4", "/w/new"}
    assert {p: s for p, s in base.items() if p not in unknown} == {
        p: s for p, s in entries.items() if p not in unknown}
    st.close()


def streamed_state(tmp_path: Path, n: int) -> tuple:
    """A State with a capture of `n` entries waiting, a real io worker whose hand-backs come
    here (`handed`), and the loop's turns (`turns`) run by the test."""
    from moorage.actors.watcher.state import State

    st = State(tmp_path / "state", "tree-1")
    st.open_wal()
    entries = {f"/w/f{i:05d}": make_stat(0o100644, 1, i, 1, 1, 1) for i in range(n)}
    st.checkpoint(1, lambda: {"entries": entries})  # captured, written by the next call
    handed: SimpleQueue = SimpleQueue()
    return st, entries, Workers("io", handed.put, threads=1), handed, []


def test_a_checkpoint_is_written_as_the_loop_packs_it_not_held_whole(tmp_path):
    """The loop packs a checkpoint a part a turn and its worker writes each part as it comes:
    the file grows while the loop still packs, and no more than a part or two is held (the
    parts of a 190,000-path index, 16-19 MB, were held whole until the last was packed)."""
    st, entries, workers, handed, turns = streamed_state(tmp_path, snapshot.SAVE_CHUNK * 8)
    tmp = tmp_path / "state" / "snapshot.msgpack.tmp"
    try:
        st.checkpoint(2, lambda: {"entries": entries}, workers.submit, turns.append)
        for _ in range(4):  # four of the eight chunks of entries
            turns.pop(0)()
        # each entry at least 50 bytes (an 11-byte key, a 46-byte stat)
        wait_for(lambda: tmp.exists() and tmp.stat().st_size >= 4 * snapshot.SAVE_CHUNK * 50,
                 "the first parts written while the rest is still to pack")
        assert st.written == 0 and st.writing
        while turns:
            turns.pop(0)()
        handed.get(timeout=10)()  # the worker's hand-back, run here as the loop would
        assert st.written == 1 and not st.writing and not tmp.exists()
        _, saved = st.load()
        assert saved is not None and saved["entries"] == entries
    finally:
        workers.shutdown()
        st.close()


def test_a_stop_packs_what_is_left_of_a_checkpoint_and_waits_for_its_write(tmp_path):
    """The loop stops halfway through a checkpoint: the stop packs the rest, the worker's
    write ends, and then the newer capture is written over it (one temporary file: not
    both at once)."""
    st, entries, workers, _, turns = streamed_state(tmp_path, snapshot.SAVE_CHUNK * 6)
    try:
        st.checkpoint(2, lambda: {"entries": entries}, workers.submit, turns.append)
        turns.pop(0)()
        entries["/w/later"] = make_stat(0o100644, 1, 99, 1, 1, 1)
        st.log(["/w/later"])
        st.close()  # (the newer capture, taken by the call above, is written last)
        _, saved = st.load()
        assert saved is not None and saved["entries"] == entries and saved["seq"] == 2
        assert not (tmp_path / "state" / "snapshot.msgpack.tmp").exists()
    finally:
        workers.shutdown()


def test_a_stop_after_the_last_part_was_packed_waits_for_the_write_and_writes_the_newer(
        tmp_path):
    """The loop packed the whole checkpoint and stops before the write's hand-back came (the
    worker still writing, or done): the stop waits for that write, then writes the newer
    capture (one temporary file: not both at once). Once the loop was through packing, a
    stop waited for nothing and dropped the newer capture."""
    st, entries, workers, _, turns = streamed_state(tmp_path, snapshot.SAVE_CHUNK * 3)
    try:
        st.checkpoint(2, lambda: {"entries": entries}, workers.submit, turns.append)
        while turns:
            turns.pop(0)()
        assert st.writing and st.written == 0  # (its hand-back has not run here)
        st.close()
        _, saved = st.load()
        assert saved is not None and saved["entries"] == entries and saved["seq"] == 2
        assert not (tmp_path / "state" / "snapshot.msgpack.tmp").exists()
    finally:
        workers.shutdown()


def test_a_checkpoint_is_packed_no_further_ahead_of_its_worker_than_two_parts(tmp_path):
    """The only io worker busy with another job (an fsync, say): the loop packs two parts and
    stops; the worker, taking one, has it go on (a call on the loop's thread), and the
    file is whole. Unbounded, the loop packed every part (a 190,000-path index: 16-19 MB)
    while the worker could take none."""
    from moorage.actors.watcher.state import PARTS_AHEAD

    st, entries, workers, handed, turns = streamed_state(tmp_path, snapshot.SAVE_CHUNK * 8)
    busy = threading.Event()
    workers.submit(lambda: busy.wait(30))
    try:
        st.checkpoint(2, lambda: {"entries": entries}, workers.submit, turns.append,
                      handed.put)
        ran = 0
        while turns:  # the call packed the first part, each turn one more until two wait
            turns.pop(0)()
            ran += 1
        assert ran == PARTS_AHEAD and st.writing  # (the last turn found no room: no next)
        busy.set()
        while st.writing:  # the loop: its turns, and what the worker hands it
            while turns:
                turns.pop(0)()
            handed.get(timeout=10)()
        assert st.written == 1
        _, saved = st.load()
        assert saved is not None and saved["entries"] == entries and saved["seq"] == 1
    finally:
        busy.set()
        workers.shutdown()
        st.close()


def test_a_packed_stat_keeps_what_the_diff_and_queries_read(tree):
    """The index's stats are packed bytes: each field back as os.lstat gave it, the file
    type from the mode (a directory, a file, a symlink), and UNKNOWN no real stat."""
    (tree / "d").mkdir()
    (tree / "f").write_bytes(b"x" * 300)
    os.symlink("f", tree / "l")
    for name, fmt in (("d", stat.S_IFDIR), ("f", stat.S_IFREG), ("l", stat.S_IFLNK)):
        st = os.lstat(tree / name)
        s = snapshot.as_stat(st)
        assert snapshot.file_format(s) == fmt and snapshot.is_dir(s) == (name == "d")
        assert s == walk(str(tree))[str(tree / name)] != snapshot.UNKNOWN
        mode, dev, ino, size, mtime, ctime = snapshot.stat_fields(s)
        assert (mode, dev, ino) == (st.st_mode, st.st_dev, st.st_ino)
        if name != "d":  # a directory's size and times are not compared (module doc)
            assert (size, mtime, ctime) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    assert not snapshot.is_dir(snapshot.UNKNOWN)


def test_a_checkpoint_of_the_older_format_is_not_read(tree, tmp_path):
    """Format 1 held stats as lists of six ints: its entries would match no packed stat, so
    it is no base at all (the restart's resync then says it had none) rather than a wrong
    one."""
    path = tmp_path / "snap.msgpack"
    path.write_bytes(msgpack.packb({"format": 1, "entries": {str(tree / "a"): [1, 2, 3, 4, 4,
                                                                          0o100644]}}))
    assert snapshot.load(str(path)) is None


def test_removing_a_directory_from_the_index_removes_everything_below_it():
    idx = Index()
    for p in ["/r/d", "/r/d/a", "/r/d/e", "/r/d/e/f", "/r/x"]:
        idx.set(p, make_stat(0o040000, 1, 1, 0, 0, 0))
    idx.remove("/r/d")
    assert set(idx.entries) == {"/r/x"}


def test_the_paths_below_a_directory_are_those_a_scan_of_every_path_finds():
    """Index.below (fs.query's candidates) against the plain scan it replaces, through sets,
    removals, discards and a replace; with watched paths whose parents are not in the index
    (a watch of /r/deep/er/w under an unwatched /r/deep), a sibling sharing the scope's
    name as a prefix (/r/dx beside /r/d), and the root."""
    f, d = make_stat(0o100644, 1, 1, 5, 7, 7), make_stat(0o040000, 1, 1, 0, 0, 0)
    idx = Index()
    for p in ["/r/d", "/r/d/a", "/r/d/e", "/r/d/e/f", "/r/dx", "/r/dx/g", "/r/x",
              "/r/deep/er/w", "/r/deep/er/w/h", "/s/y"]:
        idx.set(p, d if "." not in p and p.count("/") < 4 else f)
    idx.remove("/r/d/e")
    idx.discard("/r/x")
    idx.set("/r/d/e2", f)

    def scan(root: str) -> set[str]:
        prefix = root.rstrip("/") + "/"
        return {p for p in idx.entries if p.startswith(prefix)}

    for root in ["/r/d", "/r/d/", "/r", "/r/deep", "/r/deep/er/w", "/", "/s", "/nowhere"]:
        got = idx.below(root)
        assert len(got) == len(set(got)) and set(got) == scan(root), root
    idx.replace({"/q/a": f, "/q/b/c": f, "/q/b": d})
    assert set(idx.below("/q")) == {"/q/a", "/q/b", "/q/b/c"}
    assert set(idx.below("/q/b")) == {"/q/b/c"}


# --- watches ---------------------------------------------------------------------------------


def test_watches_cover_their_scope_minus_excludes_and_are_observed_once():
    ws = Watches()
    w = ws.add("/r", True, ["node_modules", ".git/objects", "*.log"])
    assert w.covers("/r/src/a.py") and not w.covers("/r")
    assert not w.covers("/r/a/node_modules/x.js") and not w.covers("/r/.git/objects/ab")
    assert w.covers("/r/.git/HEAD") and not w.covers("/r/x/debug.log")
    flat = ws.add("/other", False, [])
    assert flat.covers("/other/a") and not flat.covers("/other/a/b")
    ws.add("/r/src", True, [])
    ws.add("/r/src/deep", False, [])
    assert ws.observed_roots() == {"/r": True, "/other": False}
    assert ws.matching("/r/src/a.py") == ("w1", "w3")
    with pytest.raises(MoorageError):
        ws.remove("w99")


def test_what_is_observed_is_each_recursive_watch_under_none_other_and_the_flat_ones_outside():
    """Against the rule written out pair by pair, on random sets of watches (siblings
    whose names only begin alike, the root, flat watches on and under recursive ones)."""
    rng = random.Random(7)
    names = ["/", "/a", "/a-b", "/a/b", "/a/b/c", "/a/bc", "/ab", "/x/y", "/x"]

    def by_pairs(watches: list[tuple[str, bool]]) -> dict[str, bool]:
        rec = sorted({p for p, r in watches if r})
        top: list[str] = []
        for p in rec:
            if not any(p == t or p.startswith(t.rstrip("/") + "/") for t in top):
                top.append(p)
        out = dict.fromkeys(top, True)
        for p, r in watches:
            if not r and not any(p == t or p.startswith(t.rstrip("/") + "/") for t in top):
                out[p] = False
        return out

    for _ in range(300):
        watches = [(rng.choice(names), rng.random() < 0.5) for _ in range(rng.randint(1, 6))]
        ws = Watches()
        for p, r in watches:
            ws.add(p, r, [])
        assert ws.observed_roots() == by_pairs(watches), watches


def test_a_watcher_holds_a_bounded_number_of_watches():
    ws = Watches()
    for i in range(MAX_WATCHES):
        ws.add(f"/r/{i}", False, [])
    with pytest.raises(MoorageError) as e:
        ws.add("/r/one-more", False, [])
    assert e.value.name == "resource_exhausted"
    ws.remove("w1")
    ws.add("/r/one-more", False, [])


# --- the pipeline, in memory ----------------------------------------------------------------


def stats(_path: str) -> tuple[bytes, int, int, int]:
    """A file's lstat fields as snapshot.lstat_fields gives them (mode, dev 1, ino 2,
    size 3, mtime and ctime 4)."""
    return make_stat(0o100644, 1, 2, 3, 4, 4), 0o100644, 3, 4


def pipeline(published: list, settle: float = 0.0) -> Pipeline:
    ws = Watches()
    ws.add("/w", True, [])
    return Pipeline(Journal("i"), ws, Index(), lambda body: published.append(
        msgpack.unpackb(body.data, use_list=False)), Later(), settle_s=settle, lstat=stats)


def test_events_get_consecutive_clocks_and_are_published_after_being_journaled():
    out: list = []
    p = pipeline(out)
    p.feed([("created", "/w/a", "", False), ("modified", "/w/a", "", False),
            ("created", "/elsewhere/x", "", False), ("moved", "/w/a", "/w/b", False)])
    events = [e for m in out for e in m["events"]]
    assert [(e["kind"], e["path"]) for e in events] == [("created", "/w/b")]
    assert events[0]["moved_from"] == "/w/a" and events[0]["clock"] == ("i", 0, 1)
    kept = p.journal.since(Clock("i", 0, 0))["events"]
    assert [(e["path"], e["clock"]) for e in kept] == [("/w/b", ["i", 0, 1])]
    assert set(p.index.entries) == {"/w/b"}


def test_a_path_gone_with_the_directory_it_was_made_in_is_neither_published_nor_indexed():
    """A directory made, a file made in it, and the directory moved away, in one window
    (the move's walk of its destination finding the file no more: moved again, or gone):
    the directory's creation and its move cancel, and the file is gone at the flush under a
    directory the index does not hold. No deletion of it will come (the kernel reported
    its directory's), so it is neither published nor kept (a fuzz of moves left
    hundreds of such paths in the index, each with an unknown stat). A path gone in a
    directory still held keeps its unknown stat: its own deletion follows."""
    out: list = []
    ws = Watches()
    ws.add("/w", True, [])
    gone = {"/w/x", "/w/x/f", "/w/y/g"}
    p = Pipeline(Journal("i"), ws, Index(), lambda body: out.append(
        msgpack.unpackb(body.data, use_list=False)), Later(), settle_s=10.0,
        lstat=lambda path: None if path in gone else stats(path))
    p.feed([("created", "/w/y", "", True)])
    p.flush()
    p.feed([("created", "/w/x", "", True), ("created", "/w/x/f", "", False),
            ("moved", "/w/x", "/w/z", True), ("created", "/w/y/g", "", False)])
    p.flush()
    events = [e for m in out for e in m["events"]]
    assert [(e["kind"], e["path"]) for e in events] == [
        ("created", "/w/y"), ("created", "/w/z"), ("created", "/w/y/g")]
    assert [e["clock"][2] for e in events] == [1, 2, 3]  # consecutive: nothing skipped
    assert set(p.index.entries) == {"/w/y", "/w/z", "/w/y/g"}
    assert p.index.entries["/w/y/g"] == snapshot.UNKNOWN
    assert p.stats()["orphans_dropped"] == 1


def test_a_path_whose_directories_the_index_lacks_brings_them_and_goes_with_them():
    """A file's event before the events of the directories it is in (a directory's arrival
    by a move takes watchdog's path, and a create in it read later can be handed over
    first): those directories exist (the file does), so they are reported before it and
    indexed, and the removal of one takes the file with it. Before, the file hung in the
    index under a directory it never held, and outlived that directory's removal."""
    out: list = []
    p = pipeline(out, settle=10.0)
    p.feed([("created", "/w/a/b/f", "", False)])
    p.flush()
    events = [e for m in out for e in m["events"]]
    assert [(e["kind"], e["path"], e["clock"][2]) for e in events] == [
        ("created", "/w/a", 1), ("created", "/w/a/b", 2), ("created", "/w/a/b/f", 3)]
    assert p.stats()["parents_filled"] == 2
    p.feed([("created", "/w/a", "", True), ("created", "/w/a/b", "", True)])  # (late)
    p.flush()
    p.feed([("deleted", "/w/a", "", True)])
    p.flush()
    assert p.index.entries == {} and p.stats()["parents_filled"] == 2


def test_a_stat_taken_ahead_of_its_directory_s_move_is_taken_again(tmp_path):
    """A directory made with a file in it, then moved away, in one window: the file's stat,
    taken ahead while the window was open, says it exists; its directory's creation and
    move cancel, so the index does not hold its directory. The flush stats it again, finds
    it gone, and neither publishes nor indexes it."""
    gate = GatedLstat(hold=(1,))
    with ahead_pipeline(tmp_path, gate) as (p, _, out):
        d, f, e = tmp_path / "d", tmp_path / "d" / "f", tmp_path / "e"
        d.mkdir()
        f.touch()
        p.feed([("created", str(d), "", True), ("created", str(f), "", False)])
        assert gate.returned[0].wait(20) and gate.calls[0] == [str(d), str(f)]
        os.rename(d, e)
        p.feed([("moved", str(d), str(e), True)])  # (e wanted: the next batch, held)
        assert gate.entered[1].wait(20)
        p.flush()
        events = [(ev["kind"], ev["path"]) for m in out for ev in m["events"]]
        assert events == [("created", str(e))]
        assert set(p.index.entries) == {str(e)}
        assert p.stats()["orphans_dropped"] == 1


def test_a_cookie_flushes_what_came_before_it_then_reports_itself():
    out: list = []
    seen = []
    p = pipeline(out, settle=10.0)
    p.on_cookie = lambda path, kind: seen.append((path, len(out)))
    p.feed([("created", "/w/a", "", False), ("created", "/w/.moorage-cookie-1", "", False)])
    assert seen == [("/w/.moorage-cookie-1", 1)] and out[0]["events"][0]["path"] == "/w/a"


def test_a_resync_publishes_markers_around_the_diff_and_replaces_the_index():
    out: list = []
    p = pipeline(out)
    p.feed([("created", "/w/a", "", False)])
    f = make_stat(0o100644, 1, 2, 3, 4, 4)
    summary = p.resync("overflow", {"/w/b": f}, p.index.entries)
    events = [e for m in out for e in m["events"]][1:]
    assert [(e["kind"], e.get("path")) for e in events] == [
        ("resync_begin", None), ("deleted", "/w/a"), ("created", "/w/b"), ("resync_end", None)]
    assert all(e["synthetic"] for e in events[1:3]) and events[0]["epoch"] == 1
    assert summary["changes"] == 2 and set(p.index.entries) == {"/w/b"}
    seqs = [e["clock"][2] for e in events]
    assert seqs == list(range(2, 6))


def test_a_create_and_delete_that_cancel_out_still_delete_what_a_resync_reported():
    """The R3 race, in memory: the restart walk sees a file created after the observer's
    buffer was taken, reports it (synthetic), and then the file's own `created` event and
    its deletion fall into one settle window. add+delete = nothing would leave subscribers
    believing in it; the index says they were told, so the deletion goes out."""
    out: list = []
    p = pipeline(out, settle=10.0)  # one window: `Later` fires it after the feed
    f = make_stat(0o100644, 1, 2, 3, 4, 4)
    p.resync("restart", {"/w/seen": f}, {})
    p.feed([("created", "/w/seen", "", False), ("modified", "/w/seen", "", False),
            ("deleted", "/w/seen", "", False),
            ("created", "/w/never", "", False), ("deleted", "/w/never", "", False),
            ("created", "/w/back", "", False), ("deleted", "/w/back", "", False),
            ("created", "/w/back", "", False)])
    live = [e for m in out for e in m["events"] if not e.get("synthetic") and "path" in e]
    assert [(e["kind"], e["path"]) for e in live] == [
        ("deleted", "/w/seen"), ("created", "/w/back")]
    assert live[0]["type"] == "file" and set(p.index.entries) == {"/w/back"}
    assert p.stats()["told_deletes"] == 1
    n = len(out)
    p.feed([("created", "/w/seen", "", False), ("deleted", "/w/seen", "", False)])
    assert len(out) == n  # told deleted by now: a later cancel-out needs no event


def test_own_writes_are_tagged_origin_self_not_hidden():
    out: list = []
    p = pipeline(out)
    p.note_self_write("/w/mine", (1, 2, 3, 4, 4))
    p.note_self_write("/w/.mine.moorage-1.tmp", None)
    p.feed([("created", "/w/mine", "", False), ("created", "/w/theirs", "", False)])
    p.flush()
    p.feed([("deleted", "/w/.mine.moorage-1.tmp", "", False)])
    origin = {e["path"]: e["origin"] for m in out for e in m["events"]}
    assert origin == {"/w/mine": "self", "/w/theirs": "external",
                      "/w/.mine.moorage-1.tmp": "self"}


def test_rmtree_of_a_watched_subtree_in_the_index_goes_in_one_event(tmp_path):
    out: list = []
    p = pipeline(out)
    for path in ["/w/d", "/w/d/x"]:
        p.index.set(path, make_stat(0o040000, 1, 1, 0, 0, 0))
    p.feed([("deleted", "/w/d", "", True)])
    assert p.index.entries == {} and out[-1]["events"][0]["kind"] == "deleted"
    shutil.rmtree(tmp_path, ignore_errors=True)


# --- the window's stats made ahead (statahead.py) ---------------------------------------------


class Held:
    """A `call_later` whose timer never fires: the test closes the window (`flush`)."""

    def __call__(self, delay: float, fn):  # type: ignore[no-untyped-def]
        class _T:
            def cancel(self) -> None:
                pass

        return _T()


class GatedLstat:
    """snapshot.lstat_many, with each batch's call told (`entered[k]`, `returned[k]`) and,
    for the batches in `hold`, let in only once `release[k]` is set."""

    def __init__(self, hold: tuple[int, ...] = (), fail: tuple[int, ...] = ()) -> None:
        self.fail = fail
        self.calls: list[list[str]] = []
        self.entered = [threading.Event() for _ in range(8)]
        self.returned = [threading.Event() for _ in range(8)]
        self.release = [threading.Event() for _ in range(8)]
        for k in range(8):
            if k not in hold:
                self.release[k].set()

    def __call__(self, paths: list[str]) -> list:
        k = len(self.calls)
        self.calls.append(list(paths))
        self.entered[k].set()
        assert self.release[k].wait(20)
        try:
            if k in self.fail:
                raise RuntimeError("an injected failure of this batch")
            return snapshot.lstat_many(paths)
        finally:
            self.returned[k].set()


@contextlib.contextmanager
def ahead_pipeline(root: Path, lstat: GatedLstat, slow=lambda: None  # type: ignore[no-untyped-def]
                   ) -> Iterator[tuple[Pipeline, StatAhead, list]]:
    """A pipeline with a stat-ahead thread over `lstat`, and what it published; the gates
    are opened and the thread stopped after, however the test ended."""
    published: list = []
    ws = Watches()
    ws.add(str(root), True, [])
    ahead = StatAhead(lstat)
    ahead.start()
    try:
        yield Pipeline(Journal("i"), ws, Index(), lambda body: published.append(
            msgpack.unpackb(body.data, use_list=False)), Held(), settle_s=10.0,
            ahead=ahead, slow_check=slow), ahead, published
    finally:
        for gate in lstat.release:
            gate.set()
        ahead.close()


def test_a_window_s_paths_are_stat_ed_while_it_is_open_and_its_flush_uses_those_stats(
        tmp_path):
    gate = GatedLstat(hold=(1,))
    with ahead_pipeline(tmp_path, gate) as (p, _, out):
        names = [str(tmp_path / f"f{i}") for i in range(50)]
        for i, name in enumerate(names):
            Path(name).write_bytes(b"x" * i)
        p.feed([("created", name, "", False) for name in names])
        assert gate.returned[0].wait(20) and gate.calls[0] == names
        # a second batch is taken only after the first one's stats were stored (and is held:
        # its path is stat'ed by the flush)
        p.feed([("created", str(tmp_path / "later"), "", False)])
        assert gate.entered[1].wait(20)
        assert p.flush() == 51
        events = {e["path"]: e for m in out for e in m["events"]}
        assert [events[n]["size"] for n in names] == list(range(50))
        assert "size" not in events[str(tmp_path / "later")]  # (no such file: no stat)
        assert p.statted_ahead == 50


def test_a_stat_made_before_its_path_changed_again_is_not_used(tmp_path):
    gate = GatedLstat(hold=(1,))
    with ahead_pipeline(tmp_path, gate) as (p, ahead, out):
        a = tmp_path / "a"
        a.write_bytes(b"abc")
        p.feed([("created", str(a), "", False)])
        assert gate.returned[0].wait(20)  # stat'ed at 3 bytes
        with open(a, "ab") as f:
            f.write(b"def")
        p.feed([("modified", str(a), "", False)])  # wanted again: the next batch
        assert gate.entered[1].wait(20)  # (so the first batch's stat was stored)
        assert p.flush() == 1
        (event,) = [e for m in out for e in m["events"]]
        assert event["kind"] == "created" and event["size"] == 6
        assert p.statted_ahead == 0
        gate.release[1].set()  # that batch lands after its window was taken: dropped
        ahead.close()
        assert ahead._thread is not None
        ahead._thread.join(20)
        assert ahead.dropped == 1


def test_a_batch_that_fails_leaves_its_stats_to_the_flush_and_the_thread_goes_on(tmp_path):
    gate = GatedLstat(hold=(2,), fail=(0,))
    with ahead_pipeline(tmp_path, gate) as (p, _, out):
        (tmp_path / "a").write_bytes(b"ab")
        (tmp_path / "b").write_bytes(b"abc")
        p.feed([("created", str(tmp_path / "a"), "", False)])
        assert gate.returned[0].wait(20)
        p.feed([("created", str(tmp_path / "b"), "", False)])  # the next batch works
        assert gate.returned[1].wait(20)
        p.feed([("created", str(tmp_path / "c"), "", False)])  # (so batch 1 was stored)
        assert gate.entered[2].wait(20)
        assert p.flush() == 3
        sizes = {e["path"]: e.get("size") for m in out for e in m["events"]}
        assert sizes == {str(tmp_path / "a"): 2, str(tmp_path / "b"): 3,
                         str(tmp_path / "c"): None}
        assert p.statted_ahead == 1


def test_a_path_on_a_slow_file_system_is_not_stat_ed_ahead(tmp_path):
    gate = GatedLstat()
    slow_path = str(tmp_path / "slow")
    with ahead_pipeline(tmp_path, gate, slow=lambda: (lambda path: path == slow_path)) as (
            p, _, out):
        Path(slow_path).write_bytes(b"x")
        (tmp_path / "fast").write_bytes(b"y")
        p.feed([("created", slow_path, "", False), ("created", str(tmp_path / "fast"), "",
                                                    False)])
        assert gate.returned[0].wait(20)
        assert gate.calls == [[str(tmp_path / "fast")]]
        p.flush()
        events = {e["path"]: e for m in out for e in m["events"]}
        assert "size" not in events[slow_path] and p.unstatted == 1


class CountedCondition(threading.Condition):
    """A Condition that counts its notifies (each one a futex wake of a waiting thread)."""

    notifies = 0

    def notify(self, n: int = 1) -> None:
        CountedCondition.notifies += 1
        super().notify(n)


def test_paths_wanted_while_the_thread_is_busy_wake_nobody_and_go_in_one_batch(tmp_path):
    """The first path wakes the idle thread; the 99 wanted while it stats are taken by it
    as one batch once it is done, without a wake each (a burst of directories hands its
    paths over one by one)."""
    gate = GatedLstat(hold=(0,))
    ahead = StatAhead(gate)
    ahead._wake = CountedCondition(ahead._lock)
    CountedCondition.notifies = 0
    ahead.start()
    try:
        paths = [str(tmp_path / f"d{i}") for i in range(100)]
        ahead.want(paths[:1])
        assert gate.entered[0].wait(20)
        for p in paths[1:]:
            ahead.want([p])
        gate.release[0].set()
        assert gate.returned[1].wait(20)
        assert gate.calls == [paths[:1], paths[1:]]
        assert CountedCondition.notifies <= 1
    finally:
        for g in gate.release:
            g.set()
        ahead.close()


def test_a_window_taken_while_its_batch_gathers_leaves_no_empty_batch(tmp_path, monkeypatch):
    """The flush takes the window while the thread gathers a batch for it: the thread goes
    back to waiting, stats nothing, and takes the next path as a batch of its own."""
    from moorage.actors.watcher import statahead

    gathering, idle = threading.Event(), threading.Event()

    class Marked(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            # (the lock is let go inside the wait, once this is set)
            (gathering if timeout is not None else idle).set()
            return super().wait(timeout)

    monkeypatch.setattr(statahead, "GATHER_S", 60.0)  # (the test ends each gather itself)
    gate = GatedLstat()
    ahead = StatAhead(gate)
    ahead._wake = Marked(ahead._lock)
    ahead.start()
    try:
        ahead.want([str(tmp_path / "p")])
        assert gathering.wait(20)
        gathering.clear()
        idle.clear()
        assert ahead.take_window() == ({}, {str(tmp_path / "p"): 0})
        with ahead._lock:
            ahead._wake.notify()  # the gather's end
        assert idle.wait(20)  # back to waiting for paths, nothing stat'ed
        assert gate.calls == []
        ahead.want([str(tmp_path / "q")])
        assert gathering.wait(20)
        with ahead._lock:
            ahead._wake.notify()
        assert gate.returned[0].wait(20)
        assert gate.calls == [[str(tmp_path / "q")]]
    finally:
        for g in gate.release:
            g.set()
        ahead.close()


# --- the observer's hand-off ---------------------------------------------------------------


def test_a_failing_handler_is_reported_and_a_full_buffer_is_flagged_not_silent():
    from watchdog.events import FileCreatedEvent

    from moorage.actors.watcher.observer import ObserverManager

    wakes = []
    mgr = ObserverManager(wakes.append, lambda: None, buffer_max=2)
    for i in range(3):
        mgr.handler.dispatch(FileCreatedEvent(f"/w/{i}"))
    mgr.handler.dispatch(FileCreatedEvent(None))  # type: ignore[arg-type]
    raws, overflowed, problems = mgr.take()
    assert [r[1] for r in raws] == ["/w/0", "/w/1"] and overflowed
    assert problems and problems[0][0] == "handler_error"
    assert len(wakes) == 1  # one wake-up per batch, not per event
    assert mgr.take() == ([], False, [])


def test_a_bounded_take_leaves_the_rest_pending_without_more_wake_ups():
    from watchdog.events import FileCreatedEvent

    from moorage.actors.watcher.observer import ObserverManager

    wakes = []
    mgr = ObserverManager(wakes.append, lambda: None)
    for i in range(5):
        mgr.handler.dispatch(FileCreatedEvent(f"/w/{i}"))
    first, _, _ = mgr.take(2)
    mgr.handler.dispatch(FileCreatedEvent("/w/5"))  # the taker comes back for it: no wake
    assert [r[1] for r in first] == ["/w/0", "/w/1"] and mgr.backlog == 4 and len(wakes) == 1
    rest, _, _ = mgr.take(10)
    assert [r[1] for r in rest] == ["/w/2", "/w/3", "/w/4", "/w/5"] and mgr.backlog == 0
    mgr.handler.dispatch(FileCreatedEvent("/w/6"))  # all taken: the next one wakes again
    assert len(wakes) == 2


@pytest.mark.skipif(not guarded.GUARDED, reason="watchdog's inotify classes are not there")
def test_a_new_root_is_walked_once_with_no_lock_of_watchdog_s_held(tmp_path):
    """The placement's base walk places the root's watches (each directory before it is
    read) after watchdog's schedule returned: another root can be placed meanwhile (it needs
    the observer's lock, which the whole walk used to hold)."""
    from moorage.actors.watcher.observer import ObserverManager

    root, other = tmp_path / "root", tmp_path / "other"
    for d in ("a/b", "c"):
        (root / d).mkdir(parents=True)
    other.mkdir()
    mgr = ObserverManager(lambda fn: None, lambda: None)
    seen: list[tuple[str, bool]] = []

    def base(on_dir) -> None:
        placed = threading.Event()
        t = threading.Thread(target=lambda: (mgr.place(str(other), True, "inotify"),
                                             placed.set()))
        t.start()
        try:
            assert placed.wait(10), "another root could not be placed during the walk"
        finally:
            t.join()
        seen.extend((d, on_dir(str(root / d))) for d in ("a", "a/b", "c"))

    try:
        got = mgr.place(str(root), True, "inotify", base=base)
        assert got.via == "inotify" and seen == [("a", True), ("a/b", True), ("c", True)]
        assert mgr.inotify_watches() == 5  # root, a, a/b, c (by the walk), and other
        # not recursive, or polled: the walk is not the group's to run, and the caller runs it
        flat = mgr.place(str(tmp_path / "root" / "a"), False, "inotify", base=base)
        assert flat.via == "inotify" and len(seen) == 3
    finally:
        mgr.stop()


@pytest.mark.skipif(not guarded.GUARDED, reason="watchdog's inotify classes are not there")
def test_every_watch_of_a_root_placed_without_a_walk_shares_its_group_s_callbacks(tmp_path):
    """A root no walk of ours claims is watched whole by watchdog's activation, inside the
    group's __post_init__: those watches share the group's one map of callbacks as later
    ones do (a map made after that activation left each of them a dict of its own)."""
    for i in range(5):
        (tmp_path / f"s{i}" / "t").mkdir(parents=True)
    r = LoopRead(tmp_path)
    try:
        watches = list(r.fd._watch_for_wd.values())
        assert len(watches) == 11
        assert all(w.callbacks is r.group.one_callback for w in watches)
        (tmp_path / "s3" / "t" / "x").touch()
        assert [raw[1] for raw in r.turns(1)] == [str(tmp_path / "s3" / "t" / "x")]
    finally:
        r.mgr.stop()


@pytest.mark.skipif(not guarded.GUARDED, reason="watchdog's inotify classes are not there")
def test_a_watch_two_roots_share_carries_both_and_each_root_s_other_watches_only_its_own(
        tmp_path):
    """A group's watches share one map of callbacks (copied on write): a second root on a
    directory the first watches adds its callback to that watch alone, and takes it away
    with it when dropped. Were the shared map written in place, every watch of the first
    root would carry the second's callback, and an event anywhere would come twice. A
    dropped root's group, whose map its own watches shared, is let go with them."""
    from moorage.actors.watcher.observer import Placement

    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    for d in ("root/a", "root/c", "elsewhere/d"):
        (tmp_path / d).mkdir(parents=True)
    r = LoopRead(root)

    def group_of(placed: Placement) -> weakref.ref:
        assert r.mgr.inotify is not None
        return weakref.ref(next(e._inotify for e in r.mgr.inotify.emitters
                                if e.watch == placed.watch))

    try:
        watches = r.mgr.inotify_watches()
        flat = r.mgr.place(str(root / "a"), False, "inotify")
        assert flat.via == "inotify" and r.mgr.inotify_watches() == watches  # (the same one)
        other = r.mgr.place(str(elsewhere), True, "inotify")  # watches of its own
        assert other.via == "inotify" and r.mgr.inotify_watches() == watches + 2
        flat_group, other_group = group_of(flat), group_of(other)
        (root / "c" / "x").touch()
        assert [raw[1] for raw in r.turns(1)] == [str(root / "c" / "x")]
        (root / "a" / "y").touch()  # both roots' callbacks: watchdog's path, the lane
        r.readable()
        r.fd.read_ready()
        assert [raw[1] for raw in r.from_the_lane(2)] == [str(root / "a" / "y")] * 2
        r.caught_up()
        assert r.mgr.inotify is not None and flat.watch is not None and other.watch
        r.mgr.inotify.unschedule(flat.watch)
        r.mgr.inotify.unschedule(other.watch)
        assert r.mgr.inotify_watches() == watches  # the first root's watch of a stays
        on_lane = r.fd.on_lane
        (root / "a" / "z").touch()
        (root / "c" / "w").touch()
        assert [raw[1] for raw in r.turns(2)] == [str(root / "a" / "z"), str(root / "c" / "w")]
        assert r.fd.on_lane == on_lane  # one callback again: the loop's
        gc.collect()
        assert flat_group() is None and other_group() is None
    finally:
        r.mgr.stop()


def test_resyncs_run_at_once_after_quiet_and_back_off_while_they_keep_coming():
    from moorage.actors.watcher.resync import ResyncScheduler

    clock = [100.0]
    timers: list = []
    ran: list = []
    sched = ResyncScheduler(lambda d, fn: timers.append((d, fn)) or object(),
                            lambda reason, recreate: ran.append((reason, recreate)),
                            backoff_max=0.3, now=lambda: clock[0])

    def fire() -> None:
        _, fn = timers.pop(0)
        fn()
        sched.done()

    assert sched.request("overflow") == 0.0
    assert sched.request("enospc", recreate=True) is None  # joins the scheduled one
    fire()
    assert ran == [("enospc+overflow", True)]
    delays = []
    for _ in range(4):
        delays.append(sched.request("overflow"))
        fire()
    assert delays == [0.05, 0.1, 0.2, 0.3]
    clock[0] += 60
    assert sched.request("overflow") == 0.0


class LoopRead:
    """A root watched by an ObserverManager with no loop: the test turns the loop's read
    (`turns`) and waits for what the lane thread hands over (`from_the_lane`)."""

    def __init__(self, root: Path) -> None:
        from moorage.actors.watcher.observer import ObserverManager

        self.woken: SimpleQueue = SimpleQueue()
        self.problems: list = []
        self.mgr = ObserverManager(self.woken.put, lambda: None)
        try:
            assert self.mgr.place(str(root), True, "inotify").via == "inotify"
            assert self.mgr.inotify is not None
            self.fd = self.mgr.inotify.inotify_fd
            (emitter,) = self.mgr.inotify.emitters
            self.group = emitter._inotify
        except BaseException:
            self.mgr.stop()
            raise

    def readable(self) -> None:
        import select

        assert select.select([self.fd.fd], [], [], 10)[0], "no inotify event in 10 s"

    def take(self) -> list:
        """What was handed over; the problems reported with it go to `problems`."""
        raws, _, problems = self.mgr.take()
        self.problems += problems
        return raws

    def turns(self, n: int) -> list:
        """What the loop does when the instance is readable, until `n` events came."""
        got: list = []
        while len(got) < n:
            self.readable()
            self.fd.read_ready()
            got += self.take()
        return got

    def sources_until(self, last: Path) -> list[str]:
        """The paths of what the loop hands over, read by read, up to `last` (a file made
        last, after the changes a test looks for)."""
        seen: list[str] = []
        while str(last) not in seen:
            seen += [src for _, src, _, _ in self.turns(1)]
        return seen

    def from_the_lane(self, n: int) -> list:
        got: list = []
        while len(got) < n:
            self.woken.get(timeout=10)
            got += self.take()
        return got

    def caught_up(self) -> None:
        """Wait until the lane has dispatched what it was handed and the emitter has
        handed over what waited in the grouper (nothing counted any more)."""
        end = time.monotonic() + 10
        while self.fd.lane_busy or self.group._pending:
            assert time.monotonic() < end, f"not caught up: {self.group._pending} counted"
            time.sleep(0.001)  # sleep-ok: polling a fact the lane and emitter threads record


@pytest.mark.skipif(not guarded.GUARDED, reason="watchdog's inotify classes are not there")
def test_the_loop_hands_plain_events_over_itself_and_the_lane_keeps_their_order(tmp_path):
    """The loop's read hands plain events over itself, in the kernel's order; while a
    group's lock is held (a placement walking), that event and every one after it go to the
    lane thread, which hands them over once the lock is free; the loop takes over again
    once the lane has caught up; a file renamed with both halves in one read is the loop's
    too, a directory moved takes watchdog's path, and a create after it waits behind it."""
    r = LoopRead(tmp_path)
    fd, mgr, group, woken = r.fd, r.mgr, r.group, r.woken
    loop_turns, from_the_lane = r.turns, r.from_the_lane
    try:
        def names(raws: list) -> list[tuple[str, str]]:
            return [(kind, os.path.basename(dest or src)) for kind, src, dest, _ in raws]

        for name in "abc":
            (tmp_path / name).touch()
        assert names(loop_turns(3)) == [("created", "a"), ("created", "b"), ("created", "c")]
        assert (fd.on_loop, fd.on_lane) == (3, 0)

        with group._lock:  # a placement's walk holds it
            for name in "de":
                (tmp_path / name).touch()
            r.readable()
            fd.read_ready()  # the loop does not wait for the lock: the lane does
            assert mgr.take()[0] == [] and fd.on_loop == 3 and fd.lane_busy
            while not woken.empty():
                woken.get()
        assert names(from_the_lane(2)) == [("created", "d"), ("created", "e")]
        r.caught_up()
        assert fd.on_lane == 2

        (tmp_path / "f").touch()
        assert names(loop_turns(1)) == [("created", "f")] and fd.on_loop == 4
        os.rename(tmp_path / "f", tmp_path / "g")
        assert names(loop_turns(1)) == [("moved", "g")] and (fd.on_loop, fd.on_lane) == (6, 2)

        (tmp_path / "m").mkdir()
        assert names(loop_turns(1)) == [("created", "m")] and fd.on_loop == 7
        os.rename(tmp_path / "m", tmp_path / "n")
        (tmp_path / "h").touch()
        r.readable()
        fd.read_ready()
        assert mgr.take()[0] == []  # the move and the create after it: the lane's
        assert names(from_the_lane(2)) == [("moved", "n"), ("created", "h")]
    finally:
        mgr.stop()


@pytest.mark.skipif(not guarded.NODE_TREE, reason="watchdog 7.1.1's tree of watched directories")
def test_what_waits_on_watchdog_s_path_is_counted_exactly_and_the_loop_takes_over_after(
        tmp_path):
    """The loop may not overtake what is still on watchdog's path: each event is counted
    as it enters the move grouper and again as the emitter hands it over, one for an event,
    two for a move's pair (both are tuples to Python: counting a lone event as a pair let
    the count reach zero with a directory's move still on its way, and the loop's events,
    under paths that move had made, went out before it). Directories moved within the
    watch and files the lane takes (the group's lock held as the loop read them): once all
    is handed over the count is zero, never below (that would be reported), and the loop
    takes its events again."""
    r = LoopRead(tmp_path)
    fd, mgr, group = r.fd, r.mgr, r.group
    try:
        for i in range(20):
            (tmp_path / f"d{i}" / "sub").mkdir(parents=True)
        assert len(r.turns(40)) == 40 and fd.on_lane == 0
        with group._lock:
            for i in range(20):
                os.rename(tmp_path / f"d{i}", tmp_path / f"m{i}")  # a pair, and its sub
                (tmp_path / f"f{i}").touch()  # one event
            r.readable()
            fd.read_ready()
        assert fd.lane_busy
        got = r.from_the_lane(60)
        assert sorted((k, os.path.basename(dest or src)) for k, src, dest, _ in got) == sorted(
            [("created", f"f{i}") for i in range(20)] + [("moved", f"m{i}") for i in range(20)]
            + [("moved", "sub")] * 20)
        r.caught_up()
        r.take()
        assert r.problems == []
        on_loop = fd.on_loop
        (tmp_path / "after").touch()
        assert [os.path.basename(src) for _, src, _, _ in r.turns(1)] == ["after"]
        assert fd.on_loop == on_loop + 1
    finally:
        mgr.stop()


@pytest.mark.skipif(not guarded.NODE_TREE, reason="watchdog 7.1.1's tree of watched directories")
def test_a_directory_made_or_removed_in_a_recursive_watch_is_taken_by_the_loop(tmp_path):
    """The loop places a new directory's watch and reports what it already holds (files
    and directories made before the loop read its creation, each directory watched and read
    in turn, a symlink to one reported and not followed), as watchdog's path would; a tree
    over the loop's budget takes watchdog's path on the lane. A directory removed is
    forgotten by the loop too (its node, and its watch with the kernel's IN_IGNORED), and
    one made again at its path is watched anew."""
    import select

    r = LoopRead(tmp_path)
    fd, mgr, group, loop_turns = r.fd, r.mgr, r.group, r.turns
    try:
        def rel(raws: list) -> list[tuple[str, str, bool]]:
            return [(kind, os.path.relpath(src, tmp_path), is_dir)
                    for kind, src, _, is_dir in raws]

        def node(path: Path) -> object:
            return group._find_node_by_path(os.fsencode(path))

        d = tmp_path / "d"
        d.mkdir()
        for name in ("f1", "f2"):
            (d / name).touch()  # before the loop reads d's creation: found by its read
        got = rel(loop_turns(3))
        assert got[0] == ("created", "d", True)
        assert sorted(got[1:]) == [("created", "d/f1", False), ("created", "d/f2", False)]
        assert (fd.on_loop, fd.on_lane) == (1, 0) and node(d) is not None
        (d / "f3").touch()  # and its watch is placed
        assert rel(loop_turns(1)) == [("created", "d/f3", False)]

        e = tmp_path / "e"
        (e / "sub" / "deeper").mkdir(parents=True)  # a tree made before the loop reads it
        (e / "sub" / "f").touch()
        (e / "link").symlink_to(e / "sub")
        got = rel(loop_turns(5))
        assert got[0] == ("created", "e", True) and sorted(got[1:]) == [
            ("created", "e/link", True), ("created", "e/sub", True),
            ("created", "e/sub/deeper", True), ("created", "e/sub/f", False)]
        assert got.index(("created", "e/sub", True)) < got.index(("created", "e/sub/f", False))
        assert fd.on_lane == 0 and node(e / "sub" / "deeper") is not None
        assert node(e / "link") is None  # (a symlink: not watched, not followed)
        (e / "sub" / "deeper" / "g").touch()  # its watch is placed
        assert rel(loop_turns(1)) == [("created", "e/sub/deeper/g", False)]

        big = tmp_path / "big"  # over the loop's budget: watchdog's path, on the lane
        for i in range(guarded.CREATED_SCAN_MAX // 2 + 1):
            (big / f"d{i}").mkdir(parents=True)
            (big / f"d{i}" / "x").touch()
        r.readable()
        fd.read_ready()
        got = mgr.take()[0]
        n = 1 + 2 * (guarded.CREATED_SCAN_MAX // 2 + 1)
        got += r.from_the_lane(n - len(got))
        assert len(got) == n and rel(got)[0] == ("created", "big", True)
        assert fd.on_lane == 1 and node(big / "d0") is not None

        wd = node(d).wd  # type: ignore[attr-defined]
        for name in ("f1", "f2", "f3"):
            (d / name).unlink()
        d.rmdir()
        end = time.monotonic() + 10
        got = []
        while wd in fd._watch_for_wd:  # the IN_IGNORED comes last
            assert time.monotonic() < end, "the removed directory's watch was not forgotten"
            if select.select([fd.fd], [], [], 1)[0]:
                fd.read_ready()
                got += mgr.take()[0]
        assert sorted(rel(got)[:3]) == [("deleted", f"d/f{i}", False) for i in (1, 2, 3)]
        assert rel(got)[3:] == [("deleted", "d", True)]
        assert fd.on_lane == 1 and node(d) is None and wd not in group._nodes_by_wd

        d.mkdir()  # again, at the same path
        assert rel(loop_turns(1)) == [("created", "d", True)]
        (d / "g").touch()
        assert rel(loop_turns(1)) == [("created", "d/g", False)] and fd.on_lane == 1
    finally:
        mgr.stop()


@pytest.mark.skipif(not guarded.NODE_TREE, reason="watchdog 7.1.1's tree of watched directories")
@pytest.mark.parametrize("taken_by", ["loop", "lane"])
def test_a_watched_directory_moved_into_one_not_watched_yet_keeps_its_watches(
        tmp_path, taken_by):
    """`mkdir b; mv a/x b/` read after both: b had no watch when x moved in, so the kernel
    sends no IN_MOVED_TO and x's IN_MOVED_FROM goes out unpaired after half a second, as a
    move out of the watch (watchdog then removes the watches below its old path). x's watch
    is the inode's: taking b (on the loop, or on the lane for a tree over the loop's budget)
    meets it again and moves its node, with y's below it, to b/x. A second node there left
    the old one at a/x, and the unpaired half took x's and y's watches from where they
    are: what was made in them next was never seen."""
    r = LoopRead(tmp_path)
    fd, mgr, group = r.fd, r.mgr, r.group
    try:
        (tmp_path / "a" / "x" / "y").mkdir(parents=True)
        assert len(r.turns(3)) == 3
        b = tmp_path / "b"
        b.mkdir()
        if taken_by == "lane":
            for i in range(guarded.CREATED_SCAN_MAX + 1):
                (b / f"f{i}").touch()
        os.rename(tmp_path / "a" / "x", b / "x")
        r.readable()
        fd.read_ready()
        got = r.take()
        while ("deleted", str(tmp_path / "a" / "x")) not in [(k, s) for k, s, _, _ in got]:
            got += r.from_the_lane(1)  # (the unpaired half, after its half second)
        r.caught_up()
        assert ("created", str(b / "x" / "y"), "", True) in got
        assert group._find_node_by_path(os.fsencode(tmp_path / "a" / "x")) is None
        assert fd.on_lane >= 1
        (b / "x" / "y" / "f").touch()
        (tmp_path / "sentinel").touch()
        seen = r.sources_until(tmp_path / "sentinel")
        assert seen == [str(b / "x" / "y" / "f"), str(tmp_path / "sentinel")]
        assert r.problems == []
    finally:
        mgr.stop()



@pytest.mark.parametrize("watch, tree, overlaps", [
    ("/w/a", "/w/a", True),  # the same tree
    ("/w", "/w/a", True),  # holds it
    ("/w/a/b", "/w/a", True),  # lies inside it
    ("/", "/w/a", True),
    ("/w/a", "/", True),
    ("/w/b", "/w/a", False),  # beside it
    ("/w/ab", "/w/a", False),  # a name that begins the same is not inside
    ("/w/a", "/w/ab", False),
])
def test_a_watch_overlaps_a_tree_it_holds_or_lies_in_and_no_other(watch, tree, overlaps):
    w = Watch("w1", watch)
    assert w.overlaps(tree) is overlaps
    # what matters of it: a watch that does not overlap a tree covers none of its paths
    if not overlaps:
        assert not any(w.covers(tree.rstrip("/") + "/" + rel) for rel in ("x", "d/x"))


@pytest.mark.skipif(not guarded.NODE_TREE, reason="watchdog 7.1.1's tree of watched directories")
@pytest.mark.parametrize("moved_from", ["inside", "outside"])
def test_a_move_whose_directory_a_walk_met_at_its_destination_first_keeps_its_watches(
        tmp_path, moved_from):
    """The disk runs ahead of the events: a walk (here the one that places the watches a
    new watch needs) meets a moved directory at its destination before its move's events
    are taken, and its node goes there (_rehang), or is made there (moved in from outside
    the watch). When the move's IN_MOVED_TO comes its source has no node (or there is no
    source): watchdog took the node at the destination for one the move displaced,
    removed it and the watches below it (dropping the events queued for them, a move's
    pair among them) and watched the tree again. The node, and the watches, stay; the move
    goes out, and what is made below it next is seen there."""
    root = tmp_path / "root"
    (root / "b").mkdir(parents=True)
    (tmp_path / "out" / "x" / "y").mkdir(parents=True)
    r = LoopRead(root)
    fd, group = r.fd, r.group
    try:
        def node(path: Path) -> object:
            return group._find_node_by_path(os.fsencode(path))

        src = tmp_path / "out" / "x"
        if moved_from == "inside":
            src = root / "a" / "x"
            (root / "a").mkdir()
            os.rename(tmp_path / "out" / "x", src)
            assert len(r.turns(1)) == 1 + 2  # (a, and what it holds)
        x = root / "b" / "x"
        os.rename(src, x)
        group.add_missing()  # (a walk, before the move's events are read)
        wds = node(x).wd, node(x / "y").wd
        r.readable()
        fd.read_ready()
        got = r.take()
        last = ("moved", str(src / "y")) if moved_from == "inside" else ("created", str(x / "y"))
        while last not in [(k, s) for k, s, _, _ in got]:
            got += r.from_the_lane(1)  # (the move, then what it holds)
        r.caught_up()
        assert (node(x).wd, node(x / "y").wd) == wds
        (x / "y" / "g").touch()
        (root / "sentinel").touch()
        seen = r.sources_until(root / "sentinel")
        assert seen == [str(x / "y" / "g"), str(root / "sentinel")]
        assert r.problems == []
    finally:
        r.mgr.stop()


@pytest.mark.skipif(not guarded.NODE_TREE, reason="watchdog 7.1.1's tree of watched directories")
def test_a_directory_whose_path_moved_on_before_its_watch_is_watched_where_the_move_took_it(
        tmp_path):
    """`mkdir p/c; mv p q`, both before the loop reads them: the group's paths follow the
    events, so c's watch is placed at p/c, where nothing is any more (ENOENT). The move of
    p, taken next, brings no event for c: c is kept as not watched and watched where the
    move took it, q/c, and what is made in it next is seen."""
    r = LoopRead(tmp_path)
    fd, group = r.fd, r.group
    try:
        (tmp_path / "p").mkdir()
        assert len(r.turns(1)) == 1
        (tmp_path / "p" / "c").mkdir()
        os.rename(tmp_path / "p", tmp_path / "q")
        r.readable()
        fd.read_ready()
        got = r.take()
        while ("moved", str(tmp_path / "p" / "c")) not in [(k, s) for k, s, _, _ in got]:
            got += r.from_the_lane(1)  # (the move, then what it holds)
        r.caught_up()
        assert ("created", str(tmp_path / "p" / "c"), "", True) in got  # (its event's path)
        assert group._find_node_by_path(os.fsencode(tmp_path / "q" / "c")) is not None
        assert group._unplaced == {}
        (tmp_path / "q" / "c" / "f").touch()
        (tmp_path / "sentinel").touch()
        seen = r.sources_until(tmp_path / "sentinel")
        assert seen == [str(tmp_path / "q" / "c" / "f"), str(tmp_path / "sentinel")]
        assert r.problems == []
    finally:
        r.mgr.stop()


@pytest.mark.skipif(not guarded.NODE_TREE, reason="watchdog 7.1.1's tree of watched directories")
def test_more_directories_than_the_group_keeps_unwatched_is_reported_not_dropped(
        tmp_path, monkeypatch):
    """Past UNPLACED_MAX the directories kept as not watched are dropped, and that is
    reported ("unplaced": the watcher resyncs with observers made anew), not silent."""
    monkeypatch.setattr(guarded, "UNPLACED_MAX", 1)
    r = LoopRead(tmp_path)
    try:
        (tmp_path / "p").mkdir()
        assert len(r.turns(1)) == 1
        for name in ("c", "d"):
            (tmp_path / "p" / name).mkdir()
        os.rename(tmp_path / "p", tmp_path / "q")
        r.readable()
        r.fd.read_ready()
        r.take()
        assert [kind for kind, _ in r.problems] == ["unplaced"]
        assert r.group._unplaced == {}
    finally:
        r.mgr.stop()


@pytest.mark.skipif(not guarded.NODE_TREE, reason="watchdog 7.1.1's tree of watched directories")
def test_directories_kept_unwatched_under_one_removed_since_are_dropped_not_reported(
        tmp_path, monkeypatch):
    """`mkdir p/c; rm -r p`, both before the loop reads them: c's watch fails (ENOENT) and
    c is kept by p's node, which p's removal then takes out of the tree: no move can bring
    c back. Past UNPLACED_MAX such records are dropped first, and only those still in the
    tree count: a build that makes and removes directories faster than the lane takes
    their events costs no resync."""
    monkeypatch.setattr(guarded, "UNPLACED_MAX", 2)
    r = LoopRead(tmp_path)
    try:
        for k, top in enumerate(("p1", "p2", "p3")):
            (tmp_path / top).mkdir()
            assert len(r.turns(1)) == 1
            (tmp_path / top / "c").mkdir()
            shutil.rmtree(tmp_path / top)
            (tmp_path / f"s{k}").touch()
            r.sources_until(tmp_path / f"s{k}")
            # (each round's record is kept: by the node of a directory removed since)
            assert len(r.group._unplaced) == (k + 1 if k < 2 else 1)
        assert r.problems == []
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "f").touch()
        assert r.sources_until(tmp_path / "d" / "f")[-1] == str(tmp_path / "d" / "f")
    finally:
        r.mgr.stop()


@pytest.mark.skipif(not guarded.NODE_TREE, reason="watchdog 7.1.1's tree of watched directories")
def test_a_move_s_walk_watches_each_directory_before_it_reads_it(tmp_path):
    """What a moved directory holds is read from the disk when the emitter takes the move,
    and the disk runs ahead of the events: a directory made in it since has no watch yet
    (its own event not taken). Read unwatched, what it held went into the index with
    nothing to say it left again; each directory is now watched before it is read, so a
    file moved out of it next is seen leaving."""
    r = LoopRead(tmp_path)
    try:
        (emitter,) = r.mgr.inotify.emitters
        q = tmp_path / "q"
        q.mkdir()
        assert len(r.turns(1)) == 1
        (q / "c").mkdir()  # its event not taken yet: no watch
        (q / "c" / "f").touch()
        emitter._below(str(tmp_path / "p"), str(q))  # (the walk of a move p -> q)
        got = [(k, s, d) for k, s, d, _ in r.take()]
        assert got == [("moved", str(tmp_path / "p" / "c"), str(q / "c")),
                       ("moved", str(tmp_path / "p" / "c" / "f"), str(q / "c" / "f"))]
        assert r.group._find_node_by_path(os.fsencode(q / "c")) is not None
        os.rename(q / "c" / "f", tmp_path / "g")
        seen: list = []
        while not any(s == str(tmp_path / "g") or d == str(tmp_path / "g") for _, s, d in seen):
            r.readable()
            r.fd.read_ready()
            seen += [(k, s, d) for k, s, d, _ in r.take()]
            if r.fd.lane_busy or r.group._pending:
                r.caught_up()
                seen += [(k, s, d) for k, s, d, _ in r.take()]
        assert ("moved", str(q / "c" / "f"), str(tmp_path / "g")) in seen
        assert r.problems == []
    finally:
        r.mgr.stop()


def test_a_root_moved_to_polling_whole_takes_no_more_subtrees_and_stays_polled():
    """One placement's walk reports ENOSPC for each directory past the limit: after the
    root's `max_polled` subtrees it is polled whole, and the reports still coming (from the
    same walk) poll nothing apart under it nor move it to polling again (they did, every
    `max_polled` reports, each with a warning and a full walk). Placed again later (found
    missing, then back), it is placed with polling, not inotify."""
    from moorage.actors.watcher.observer import ObserverManager, Root

    mgr = ObserverManager(lambda fn: None, lambda: None, max_polled=4)
    mgr.roots["/r"] = Root("/r", True, "inotify")
    scopes = [got[1] if (got := mgr.poll_subtree(f"/r/pkg{i}")) else None for i in range(40)]
    assert scopes == ["subtree"] * 4 + ["root"] + [None] * 35
    assert mgr.polled == {} and mgr.roots["/r"].via == "placing"
    assert mgr.roots["/r"].target == "polling"
    # a recreate before that placement ends places it with polling too, not inotify
    assert [(r.path, via) for r, via in mgr.begin_recreate().todo] == [("/r", "polling")]
