"""The pair's claim table (worker/claims.py, worker/_claims.c): the first
worker to miss a key asks upstream, the other asks it; claims end when
settled or at their deadline; a key whose slots are all taken says so."""
from __future__ import annotations

import mmap
import os
import subprocess
import sys
import time

import pytest

from contract.claimtable import TABLE_BYTES, make_table_fd
from worker.claims import CLAIMS, ClaimTable, Held

# CI builds the extension (tests/unit/test_fastwire.py checks the build is used).
pytestmark = pytest.mark.skipif(CLAIMS is None, reason="worker._claims is not built")

A, B = 0, 1


def pair_of_views(fd: int | None = None) -> tuple[ClaimTable, ClaimTable]:
    """Both workers' views of one table, as the supervisor hands it to them."""
    fd = make_table_fd() if fd is None else fd
    try:
        return ClaimTable(fd, A), ClaimTable(fd, B)
    finally:
        os.close(fd)


def test_the_first_to_miss_a_key_resolves_it_and_the_other_is_told_to_ask():
    a, b = pair_of_views()
    assert a.claim(b"k1", 5.0) == Held.MINE
    assert b.claim(b"k1", 5.0) == Held.PEER
    assert a.claim(b"k1", 5.0) == Held.MINE          # ours already
    assert b.claim(b"k2", 5.0) == Held.MINE          # another key: another claim
    assert a.claim(b"k2", 5.0) == Held.PEER


def test_a_settled_claim_holds_for_the_share_then_frees_the_key():
    a, b = pair_of_views()
    assert a.claim(b"k", 5.0) == Held.MINE
    assert a.settle(b"k", 0.05)
    assert b.claim(b"k", 5.0) == Held.PEER           # the answer is on its way: ask a (a hit there)
    time.sleep(0.08)
    assert b.claim(b"k", 5.0) == Held.MINE           # a's is over: b's miss is its own
    assert b.settle(b"k", 0) and a.claim(b"k", 5.0) == Held.MINE
    assert not b.settle(b"other", 0)                 # nothing to settle


def test_a_claim_nobody_settles_ends_at_its_deadline():
    a, b = pair_of_views()
    assert a.claim(b"k", 0.01) == Held.MINE
    time.sleep(0.05)
    assert b.claim(b"k", 5.0) == Held.MINE


def test_a_key_whose_slots_are_all_taken_is_full_and_the_table_must_be_a_table():
    fd = os.memfd_create("t")
    os.ftruncate(fd, 8 * CLAIMS.PROBES)             # the smallest table: every key has the same slots
    a, b = pair_of_views(fd)
    assert [a.claim(f"k{i}".encode(), 5.0) for i in range(CLAIMS.PROBES)] == [Held.MINE] * CLAIMS.PROBES
    assert a.claim(b"one more", 5.0) == Held.FULL and b.claim(b"one more", 5.0) == Held.FULL
    assert b.claim(b"k3", 5.0) == Held.PEER          # full, but its own claim is still found
    bad = os.memfd_create("t")
    os.ftruncate(bad, 8 * CLAIMS.PROBES * 3)
    assert ClaimTable.open(bad, A) is None           # not a power of two: the crc32 rule, not a crash
    with pytest.raises(ValueError):
        CLAIMS.claim(mmap.mmap(-1, 24), b"k", A, 10)


def test_the_supervisors_table_cannot_be_shrunk_under_the_workers():
    fd = make_table_fd()
    try:
        assert os.fstat(fd).st_size == TABLE_BYTES
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


RACER = """
import mmap, sys
from worker.claims import ClaimTable
table, me, lockstep, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
view = ClaimTable(table, me)
steps = memoryview(mmap.mmap(lockstep, 16)).cast("Q")
verdicts = []
for i in range(1, n + 1):
    steps[me] = i
    while steps[1 - me] < i:        # both at key i: claim it at the same moment
        pass
    verdicts.append(str(view.claim(b"key%d" % i, 60.0)))
sys.stdout.write("".join(verdicts))
"""


def test_two_workers_missing_the_same_keys_at_the_same_moment_claim_each_once():
    """Two processes claim the same keys in lockstep (each waits for the
    other before the next key): each key must be claimed by exactly one
    of them. A load and a store instead of the compare-and-swap gives both
    some keys (seen: ~930 of the 3,000)."""
    n = 3000                                         # a fifth of the table's slots
    table, lockstep = make_table_fd(), os.memfd_create("lockstep")
    os.ftruncate(lockstep, 16)
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(table), str(me), str(lockstep), str(n)],
                               pass_fds=(table, lockstep), stdout=subprocess.PIPE, text=True) for me in (A, B)]
    outs = [r.communicate(timeout=120)[0] for r in racers]
    os.close(table)
    os.close(lockstep)
    assert [len(o) for o in outs] == [n, n], outs
    verdicts = list(zip(*outs))
    both = [i for i, v in enumerate(verdicts) if v == ("0", "0")]
    assert not both, f"{len(both)} keys claimed by both workers, e.g. key{both[0] + 1}"
    assert all(v in (("0", "1"), ("1", "0"), ("2", "2")) for v in verdicts), set(verdicts)
    assert sum(v.count("0") for v in verdicts) > n * 0.99     # full only by bad luck
