"""Tasks waiting for a channel: one FIFO per company, taken round-robin across companies.

A company with 500 waiting tasks and a company with one each get every other free
channel, so a burst from one tenant never starves another.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    def __init__(self, key: Callable[[T], str]) -> None:
        self._key = key
        self._queues: dict[str, deque[T]] = {}
        self._turns: deque[str] = deque()  # companies with waiting items, next to be served first
        self._len = 0

    def push(self, item: T) -> None:
        company = self._key(item)
        queue = self._queues.get(company)
        if queue is None:
            queue = self._queues[company] = deque()
            self._turns.append(company)
        queue.append(item)
        self._len += 1

    def push_front(self, item: T) -> None:
        """Put ``item`` back at the head: next of its company, and that company served next."""
        company = self._key(item)
        queue = self._queues.get(company)
        if queue is None:
            queue = self._queues[company] = deque()
        else:
            self._turns.remove(company)
        self._turns.appendleft(company)
        queue.appendleft(item)
        self._len += 1

    def pop(self) -> T:
        """The next item: the head of the company whose turn it is (IndexError when empty)."""
        company = self._turns.popleft()
        queue = self._queues[company]
        item = queue.popleft()
        if queue:
            self._turns.append(company)
        else:
            del self._queues[company]
        self._len -= 1
        return item

    def remove(self, item: T) -> bool:
        """Take ``item`` (compared by ``==``) out of the queue; False when it is not waiting."""
        company = self._key(item)
        queue = self._queues.get(company)
        if queue is None:
            return False
        try:
            queue.remove(item)
        except ValueError:
            return False
        if not queue:
            del self._queues[company]
            self._turns.remove(company)
        self._len -= 1
        return True

    def drain(self) -> list[T]:
        items = list(self)
        self._queues.clear()
        self._turns.clear()
        self._len = 0
        return items

    def waiting_by_company(self) -> dict[str, int]:
        return {company: len(queue) for company, queue in self._queues.items()}

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[T]:
        for company in self._turns:
            yield from self._queues[company]
