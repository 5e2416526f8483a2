"""The policy's queues: intrusive LRU lists of entries in cost units.

The window, probation and protected are each a ``Segment`` linked through
the entries' own ``prev``/``next`` slots, so queueing allocates nothing and
an entry's ``where`` code says which queue holds it.
"""

from __future__ import annotations

from collections.abc import Iterator

from .store import REMOVED, Entry


class Segment:
    """An LRU queue of entries linked through their ``prev``/``next`` slots.

    A sentinel closes the ring, so linking never tests for an empty queue.
    ``cost`` is the summed cost of the entries queued.
    """

    __slots__ = ("cost", "count", "head", "tag")

    def __init__(self, tag: int) -> None:
        head = Entry(None, None, 0, 0.0)
        head.prev = head.next = head
        self.head = head
        self.tag = tag
        self.cost: float = 0
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Entry]:
        """Entries from least to most recently used."""
        head = self.head
        entry = head.next
        while entry is not head:
            following = entry.next
            yield entry
            entry = following

    def append(self, entry: Entry, tag: int = 0) -> None:
        """Queue ``entry`` as the most recently used, tagged ``tag`` or the queue's own."""
        head = self.head
        last = head.prev
        entry.prev = last
        entry.next = head
        last.next = entry
        head.prev = entry
        entry.where = tag or self.tag
        self.cost += entry.cost
        self.count += 1

    def unlink(self, entry: Entry) -> None:
        """Take ``entry`` out of the queue."""
        before, after = entry.prev, entry.next
        before.next = after
        after.prev = before
        entry.prev = entry.next = None
        entry.where = REMOVED
        self.cost -= entry.cost
        self.count -= 1

    def move_to_end(self, entry: Entry) -> None:
        """Mark ``entry`` as the most recently used."""
        head = self.head
        last = head.prev
        if last is entry:
            return
        before, after = entry.prev, entry.next
        before.next = after
        after.prev = before
        entry.prev = last
        entry.next = head
        last.next = entry
        head.prev = entry

    def clear(self) -> None:
        """Unlink every entry."""
        for entry in self:
            entry.prev = entry.next = None
            entry.where = REMOVED
        self.head.prev = self.head.next = self.head
        self.cost = 0
        self.count = 0
