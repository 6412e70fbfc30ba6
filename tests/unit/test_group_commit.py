"""GroupCommit, the batcher behind replica reports: callers arriving while a
commit is in progress share the next one, each caller's items are committed
in the order it submitted them, one refused item fails only its own caller,
and no caller gets an answer before the commit holding its item returned.
An in-memory all-or-nothing ledger plays the store; a gate holds a commit
open so callers pile up behind it deterministically, whatever the speed."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from controlplane.services.group_commit import GroupCommit


class Ledger:
    """All or nothing: ``commit`` appends every item, or raises (an item
    starting with "bad" is refused) with nothing appended."""

    def __init__(self) -> None:
        self.committed: list[str] = []
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.down = False

    def commit(self, items: Sequence[str]) -> list[str]:
        self.sizes.append(len(items))
        self.entered.set()
        assert self.gate.wait(30)
        if self.down:
            raise ConnectionError("store unavailable")
        refused = [i for i in items if i.startswith("bad")]
        if refused:
            raise ValueError(f"refused {refused[0]}")
        self.committed.extend(items)
        return [f"ok:{i}" for i in items]


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


class Callers:
    """Threads each submitting one item; ``out`` holds each item's answer
    (its result or its error) once its ``submit`` returned."""

    def __init__(self, batcher: GroupCommit[str, str]) -> None:
        self.batcher = batcher
        self.out: dict[str, object] = {}
        self.threads: list[threading.Thread] = []

    def start(self, *items: str) -> None:
        for item in items:
            thread = threading.Thread(target=self._call, args=(item,))
            thread.start()
            self.threads.append(thread)

    def _call(self, item: str) -> None:
        try:
            self.out[item] = self.batcher.submit(item)
        except Exception as exc:
            self.out[item] = exc

    def join(self) -> dict[str, object]:
        for thread in self.threads:
            thread.join(30)
        return self.out


def pile_up(ledger: Ledger, batcher: GroupCommit[str, str], first: str,
            *rest: str) -> Callers:
    """``first`` commits alone and is held at the gate; ``rest`` queue behind
    it, one after the other in the order given."""
    ledger.gate.clear()
    callers = Callers(batcher)
    callers.start(first)
    assert ledger.entered.wait(30)
    for n, item in enumerate(rest, 1):
        callers.start(item)
        wait_until(lambda n=n: len(batcher._queued) == n)
    return callers


def test_items_arriving_during_a_commit_share_the_next_one() -> None:
    ledger = Ledger()
    batcher = GroupCommit(ledger.commit)
    items = [f"r-{i}" for i in range(12)]
    callers = pile_up(ledger, batcher, *items)
    ledger.gate.set()
    out = callers.join()
    assert ledger.sizes == [1, 11]
    assert ledger.committed == items  # in arrival order, inside the batch too
    assert out == {i: f"ok:{i}" for i in items}
    assert (batcher.batches, batcher.largest_batch) == (2, 11)


def test_no_caller_is_answered_before_its_commit_returned() -> None:
    ledger = Ledger()
    batcher = GroupCommit(ledger.commit)
    callers = pile_up(ledger, batcher, "first", "second")
    time.sleep(0.05)  # time enough for a wrong early answer to show
    assert callers.out == {} and ledger.committed == []
    ledger.gate.set()
    assert callers.join() == {"first": "ok:first", "second": "ok:second"}


def test_a_lone_item_commits_at_once_and_alone() -> None:
    ledger = Ledger()
    batcher = GroupCommit(ledger.commit)
    assert [batcher.submit("a"), batcher.submit("b")] == ["ok:a", "ok:b"]
    assert ledger.sizes == [1, 1]


def test_each_callers_items_are_committed_in_the_order_it_submitted_them() -> None:
    ledger = Ledger()
    batcher = GroupCommit(ledger.commit, max_batch=7)

    def stream(name: str) -> None:
        for n in range(40):
            batcher.submit(f"{name}:{n}")

    streams = [threading.Thread(target=stream, args=(f"s{i}",)) for i in range(8)]
    for thread in streams:
        thread.start()
    for thread in streams:
        thread.join(60)
    for i in range(8):
        mine = [int(item.split(":")[1]) for item in ledger.committed if item.startswith(f"s{i}:")]
        assert mine == list(range(40))
    assert max(ledger.sizes) <= 7


def test_a_refused_item_fails_alone_and_the_others_commit() -> None:
    ledger = Ledger()
    batcher = GroupCommit(ledger.commit)
    callers = pile_up(ledger, batcher, "r-0", "r-1", "bad-2", "r-3")
    ledger.gate.set()
    out = callers.join()
    assert isinstance(out["bad-2"], ValueError) and "bad-2" in str(out["bad-2"])
    assert {k: v for k, v in out.items() if k != "bad-2"} == {
        i: f"ok:{i}" for i in ("r-0", "r-1", "r-3")}
    # The batch of three was refused whole, then each item was tried alone.
    assert ledger.sizes == [1, 3, 1, 1, 1]
    assert sorted(ledger.committed) == ["r-0", "r-1", "r-3"]


def test_an_outage_fails_every_caller_and_acknowledges_nothing() -> None:
    ledger = Ledger()
    ledger.down = True
    batcher = GroupCommit(ledger.commit)
    callers = pile_up(ledger, batcher, "r-0", "r-1", "r-2")
    ledger.gate.set()
    out = callers.join()
    assert all(isinstance(answer, ConnectionError) for answer in out.values())
    assert len(out) == 3 and ledger.committed == []
    ledger.down = False
    assert batcher.submit("r-3") == "ok:r-3"  # the leadership was handed back


def test_a_commit_that_miscounts_its_results_fails_its_batch_without_a_retry() -> None:
    calls: list[Sequence[str]] = []

    def commit(items: Sequence[str]) -> list[str]:
        calls.append(list(items))
        return []

    with pytest.raises(RuntimeError, match="returned 0 results"):
        GroupCommit(commit).submit("a")
    assert calls == [["a"]]


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupCommit(lambda items: list(items), max_batch=0)
