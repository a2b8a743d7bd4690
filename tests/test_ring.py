"""A session's output ring (actors/terminal/ring.py): shared by two processes, bounded by the
window, trimmed under pressure, and a read whose keeper died before committing it taken in
by its successor."""

from __future__ import annotations

import os
import pty

import msgpack
import pytest

from moorage.actors.terminal.ring import RingError, SessionRing
from moorage.actors.terminal.session import MetaPacker


@pytest.fixture
def ring():
    r = SessionRing.create(8192, 4096)
    yield r
    r.close()


def test_bytes_wrap_around_and_another_mapping_sees_them(ring):
    other = SessionRing.open(os.dup(ring.fd))
    try:
        for i in range(5):
            ring.write(bytes([65 + i]) * 3000)
            ring.ack_off = ring.write_off
        assert ring.write_off == 15000 and other.write_off == 15000
        assert other.read(15000 - 3000, 15000) == b"E" * 3000
        # what is held: the cap, less the window the keeper may be writing into next
        assert other.base == 15000 + 4096 - 8192
        assert other.read(0, 15000) == ring.read(other.base, 15000)
    finally:
        other.close()


def test_the_window_bounds_what_is_not_acknowledged(ring):
    assert ring.room() == 4096
    ring.write(b"x" * 4000)
    assert ring.room() == 96
    ring.ack_off = 1000
    assert ring.room() == 1096


def test_a_read_made_and_not_committed_is_taken_in_by_a_successor(ring):
    master, slave = pty.openpty()
    try:
        os.write(slave, b"abc" * 20)  # 60 bytes, CR/LF untouched (no newline)
        assert ring.read_from(master, 60) == 60 and ring.read(0, 60) == b"abc" * 20
        # A keeper killed right after its read returned: the bytes are in the ring, the
        # write offset is not moved. Set up exactly that state by hand.
        os.write(slave, b"xyz" * 10)
        got = ring.read_from(master, 30)
        ring._header[2] -= got  # back to before the commit
        ring._header[6] = got  # the intent, still written down
        ring._header[5] = ring.write_off
        successor = SessionRing.open(os.dup(ring.fd))
        try:
            assert successor.recover() == 30
            assert successor.read(60, successor.write_off) == b"xyz" * 10
            assert successor.recover() == 0  # once
        finally:
            successor.close()
    finally:
        os.close(master)
        os.close(slave)


def test_a_one_byte_read_made_and_not_committed_is_taken_in_whatever_text_byte_it_read(ring):
    """A keeper killed after reading a single byte: its canary is that short, and must not
    equal it (0xFF, which text never holds, is the canary's first byte)."""
    r, w = os.pipe()
    try:
        off = 1000  # one offset, so one canary, for all of them
        for value in range(0xFF):  # every byte but 0xFF
            os.write(w, bytes([value]))
            ring.start_at(off)
            assert ring.read_from(r, 1) == 1
            ring._header[2] = off  # killed before the commit: the intent still written down
            ring._header[6] = 1
            ring._header[5] = off
            assert ring.recover() == 1, value
            assert ring.read(off, ring.write_off) == bytes([value])
    finally:
        os.close(r)
        os.close(w)


def test_a_read_written_down_but_never_made_is_not_taken_in(ring):
    master, slave = pty.openpty()
    try:
        os.write(slave, b"hello")
        ring.read_from(master, 5)
        # the intent and canary of a read that never happened (killed before the syscall)
        os.write(slave, b"later")
        got = ring.read_from(master, 5)
        ring._header[2] -= got
        ring.write(b"")  # nothing
        data_before = ring.read(0, ring.write_off)
        # put the canary back where the read had written: as if it had not happened
        ring._header[6] = 5
        ring._header[5] = ring.write_off
        canary = (ring._header[8].to_bytes(8, "little")
                  + ring._header[9].to_bytes(8, "little"))[:5]
        ring._region(ring.write_off, 5)[0][:5] = canary
        assert ring.recover() == 0 and ring.read(0, ring.write_off) == data_before
    finally:
        os.close(master)
        os.close(slave)


def test_trimming_gives_back_all_but_the_last_bytes_before_the_ack(ring):
    ring.write(b"a" * 4000)
    ring.ack_off = 4000
    ring.write(b"b" * 2000)
    ring.ack_off = 6000
    assert ring.base == 6000 + 4096 - 8192  # 1904
    assert ring.trim(1000) == 5000 - 1904
    assert ring.base == 5000 and ring.read(0, 6000) == b"b" * 1000
    ring.write(b"c" * 100)
    assert ring.read(5000, 6100) == b"b" * 1000 + b"c" * 100


def test_trimming_never_frees_what_the_keeper_may_write_next(ring):
    # The keeper may write up to ack + window; those bytes land on the positions of the
    # bytes a cap before them, which are therefore not held (base), and never freed.
    ring.write(b"a" * 6000)
    ring.ack_off = 6000
    before = ring.base
    assert before == 6000 + 4096 - 8192
    assert ring.trim(0) == 6000 - before and ring.base == 6000
    ring.write(b"b" * 4096)  # all the keeper may write now, onto the freed positions too
    assert ring.read(6000, 10096) == b"b" * 4096


def test_a_descriptor_that_is_not_a_ring_is_refused(tmp_path):
    fd = os.open(tmp_path / "x", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"\0" * 10000)
        with pytest.raises(RingError):
            SessionRing.open(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("cell, value", [
    (7, 1 << 20),  # a window over the cap: the keeper would read past the data
    (7, 0),
    (3, 1 << 20),  # acknowledged past what was read
    (2, 1 << 20),  # read past the window
    (2, 1 << 63),  # offsets out of the signed range the compiled turn computes in
    (10, 4096),  # state slots of another size than the mapping is made of
])
def test_a_ring_whose_header_does_not_hold_together_is_refused(ring, cell, value):
    """Each holder can write a ring's header: one that says more than its mapping holds is
    refused before the keeper reads into it."""
    ring._header[cell] = value
    if cell == 2 and value >= 1 << 62:
        ring._header[3] = value  # (acknowledged as far: only the size is wrong)
    with pytest.raises(RingError):
        SessionRing.open(os.dup(ring.fd))


def test_a_ring_s_size_is_sealed_and_an_unsealed_memfd_is_refused(ring):
    with pytest.raises(PermissionError):
        os.ftruncate(ring.fd, 4096)  # (a holder that shrank it would fault every other)
    fd = os.memfd_create("not-a-ring", os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, os.fstat(ring.fd).st_size)
        os.pwrite(fd, os.pread(ring.fd, 128, 0), 0)  # the same header, unsealed
        with pytest.raises(RingError):
            SessionRing.open(fd)
    finally:
        os.close(fd)


class WritesDuringCopy:
    """A holder's view of the state slots whose next copy first lets the writer run
    (`during`): the interleaving of two processes, made to happen at that instant."""

    def __init__(self, view: memoryview, during) -> None:
        self.view, self.during = view, during

    def __getitem__(self, key):
        if self.during is not None:
            during, self.during = self.during, None
            during()
        return self.view[key]


def test_a_copy_of_the_state_during_which_the_writer_moved_on_is_not_taken(ring):
    """Two states written while a holder copies the current one: the first goes to the other
    slot, the second into the very slot being copied (it moves the counter only once done).
    A counter that moved by one does not prove the copy whole; the holder reads again and
    gets the newer state, never a mix of two."""
    assert ring.write_meta(b"third")
    other = SessionRing.open(os.dup(ring.fd))
    copied = other._meta
    try:
        current = ((ring._header[11] >> 32) % 2) * ring.meta_slot

        def writer() -> None:
            assert ring.write_meta(b"fourth")  # the other slot; the counter moves by one
            ring._meta[current : current + 4] = b"half"  # the next one, half-way through

        other._meta = WritesDuringCopy(copied, writer)
        assert other.read_meta() == b"fourth"
    finally:
        other._meta = copied
        other.close()


def test_the_sessions_state_is_in_the_ring_for_every_holder_and_a_half_write_keeps_the_last(
        ring):
    assert ring.read_meta() is None  # never written
    assert ring.write_meta(b"first") and ring.write_meta(b"second")
    other = SessionRing.open(os.dup(ring.fd))
    try:
        assert other.read_meta() == b"second"
        # A writer killed half-way through the next state: its bytes are in the slot that
        # is not current, and the current one is not moved; a holder still reads "second".
        cell = ring._header[11]
        spare = ((cell >> 32) + 1) % 2 * ring.meta_slot
        ring._meta[spare : spare + 4] = b"half"
        assert other.read_meta() == b"second"
        assert ring.write_meta(b"third") and other.read_meta() == b"third"
        assert not ring.write_meta(b"x" * (ring.meta_slot + 1))  # too big: the caller's
        assert other.read_meta() == b"third"
        assert ring.write_meta(b"") and other.read_meta() == b""  # "over the link"
    finally:
        other.close()


@pytest.mark.parametrize("extra", [0, 5, 14, 15, 16, 40])
def test_a_state_packed_with_its_spec_spliced_in_reads_back_whole(ring, extra):
    # MetaPacker packs `spec` once and splices it after the rest, fixing the map's header:
    # a fixmap below 16 entries, a map16 from there (both sides of that edge here).
    spec = {"shell": "bash", "env": {f"V{i}": "x" * 40 for i in range(75)}, "cols": 80}
    meta = {"nonce": "n" * 32, "mode": "integration", "spec": spec} | {
        f"k{i}": i for i in range(extra)}
    packer = MetaPacker()
    for step in range(3):
        meta["exec"] = {"id": step, "command": "echo test"}
        assert ring.write_meta(packer.pack(meta))
        assert msgpack.unpackb(ring.read_meta()) == meta
    meta["spec"] = {**spec, "cols": 100}  # a new spec object is packed anew
    assert msgpack.unpackb(packer.pack(meta)) == meta
    assert msgpack.unpackb(MetaPacker().pack({"nonce": "n"})) == {"nonce": "n"}  # no spec
    small = {"nonce": "n", "spec": {"cols": 80}}  # packed whole: cheaper than the splice
    assert msgpack.unpackb(MetaPacker().pack(small)) == small
