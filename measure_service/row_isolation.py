"""Finds the row that failed a batch, so that one client's bad row costs no one else an answer.

Misses of every client share upstream batches, and upstream may fail a whole request because of
one row's input: a 5xx for any batch holding it, or a 400 refusing the request. The
:class:`Isolator` sends a batch and, when it fails that way, splits it and sends the parts:

1. first by owner (the API key whose request started each fetch), so every client's rows are
   retried apart from everyone else's, then by halves (bisection) within a failed part;
2. a row that fails alone, after failing in the batch (a batch of one row is sent twice unless
   retries are off), is at fault: its verdict is a row error, which the caller caches like any
   upstream row error. For a 400 that is certain (upstream answered, and refused that row). A
   5xx is put down to the row only when upstream answered some other request since the batch
   was first sent; otherwise upstream itself may be failing, and the row just fails;
3. parts that fail while upstream answers nothing else are not split further: an upstream that
   is down costs a batch three requests, not one per row. Each split batch also has a budget
   of sends, so a client sending many bad rows pays with its own rows' answers only.

The breaker hears once per batch: an ordinary failure when some row failed without a culprit
(or no culprit was found at all, a transient failure), else nothing, since one row's input
says nothing about upstream's health.

Timeouts, connection errors, 429 and malformed answers are never split: no row explains them.
After the first failed send, the splitting may go on elsewhere (see :meth:`Isolator.begin`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from measure_service.upstream import RowResult, UpstreamError

# 4xx statuses by which upstream refuses a request for what is in it; others (401, 403, 404,
# 429, ...) are about us or upstream, and the same for any row.
REFUSAL_STATUSES = frozenset({400, 413, 422})
# Sends a failed batch may spend finding its culprits per level of halving, beyond the one send
# per owner: two bad rows in one part need both halves searched at each level.
_SENDS_PER_LEVEL = 4


class BudgetSpent(Exception):
    """A failed batch spent its sends before these rows were answered or judged."""


@dataclass(slots=True)
class Verdicts:
    """What became of each position of a batch.

    ``answers`` holds upstream's answer for every position that got one, and a row error for
    each culprit; ``failures`` the error of every position left without an answer (the caller
    fails those fetches, caching nothing); ``suspects`` the owners to batch apart from others.
    """

    answers: dict[int, RowResult] = field(default_factory=dict)
    failures: dict[int, BaseException] = field(default_factory=dict)
    culprits: set[int] = field(default_factory=set)
    # Owners whose rows were at fault, or failed while other owners' rows were answered.
    suspects: set[Hashable] = field(default_factory=set)
    sends: int = 0


# Sends the rows at the given positions of the batch; raises UpstreamError.
Send = Callable[[Sequence[int]], Mapping[int, RowResult]]
# Reports a failure whose ``judged`` is False to the breaker: (error, explained).
Settle = Callable[[UpstreamError, bool], None]


class Isolator:
    """Sends batches, splitting failed ones to find the rows at fault (see the module doc)."""

    def __init__(
        self,
        settle: Settle,
        *,
        confirm: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Report judged failures through ``settle``; ``clock`` times the answers.

        ``confirm``: a batch of one row that fails with 5xx is sent once more before it is
        judged (False when upstream calls must not be repeated, ``UPSTREAM_RETRIES=0``).
        """
        self._settle = settle
        self._confirm = confirm
        self._clock = clock
        self._answered_at = -math.inf

    def fetch(self, owners: Sequence[Hashable], send: Send) -> Verdicts:
        """Send every position of a batch (``owners[i]`` started position i) and judge each."""
        isolation = self.begin(owners, send)
        if not isolation.done:
            isolation.go_on(send)
        return isolation.verdicts

    def begin(self, owners: Sequence[Hashable], send: Send) -> Isolation:
        """Send the whole batch once; when it failed for its rows, the result must go on.

        The caller may go on elsewhere (the splitting takes several round trips, and need not
        delay the batches behind this one).
        """
        isolation = Isolation(self, owners)
        isolation.begin(send)
        return isolation

    def _answered_since(self, moment: float) -> bool:
        return self._answered_at >= moment

    def _note_answer(self) -> None:
        self._answered_at = self._clock()


class Isolation:
    """One batch's fetch: its verdicts so far, its unsettled errors and its budget of sends."""

    def __init__(self, isolator: Isolator, owners: Sequence[Hashable]) -> None:
        """Start judging a batch whose position ``i`` was started by ``owners[i]``."""
        self.isolator = isolator
        self.owners = owners
        self.verdicts = Verdicts()
        self.started = isolator._clock()
        self.unsettled: list[UpstreamError] = []
        self.unexplained = False
        self.done = False
        self.send: Send | None = None
        depth = max(1, math.ceil(math.log2(max(1, len(owners)))))
        self.budget = 1 + len(set(owners)) + _SENDS_PER_LEVEL * depth

    def begin(self, send: Send) -> None:
        """Send the whole batch; settle it unless it failed in a way its rows may explain."""
        self.send = send
        positions = list(range(len(self.owners)))
        error = self.attempt(positions)
        if error is not None and _splittable(error) and len(positions) > 1:
            return
        if (
            error is not None
            and error.outcome == "http_5xx"
            and len(positions) == 1
            and self.isolator._confirm
        ):
            # A lone row is judged on two failures, like a row found by splitting: one
            # 5xx may be upstream's own passing trouble.
            error = self.attempt(positions)
        if error is not None:
            self.give_up_or_judge(positions, error)
        self.finish()

    def go_on(self, send: Send) -> None:
        """Split the failed batch, sending the parts with ``send``, until every row is judged."""
        self.send = send
        try:
            self.split_failed(list(range(len(self.owners))))
        finally:
            self.finish()

    def give_up_or_judge(self, positions: list[int], error: UpstreamError) -> None:
        """Judge a lone row's splittable failure; fail any other failed rows as they are."""
        if len(positions) == 1 and _splittable(error):
            self.judge_alone(positions[0], error)
        else:
            self.fail(positions, error)

    def split_failed(self, positions: list[int]) -> None:
        """Send each part of a failed group of rows; go on with the parts that fail too."""
        failed: list[tuple[list[int], UpstreamError]] = []
        for part in self.split(positions):
            part_error = self.attempt(part)
            if part_error is not None:
                failed.append((part, part_error))
        healthy = self.isolator._answered_since(self.started)
        for part, part_error in failed:
            if len(part) > 1 and _splittable(part_error):
                # Failures from an upstream that answers nothing else are not split further.
                if (part_error.outcome == "http_5xx" and not healthy) or self.budget <= 0:
                    self.fail(part, part_error)
                else:
                    self.split_failed(part)
            else:
                self.give_up_or_judge(part, part_error)
        if failed and len(failed) < len(self.split(positions)):
            for part, _ in failed:
                self.verdicts.suspects.update(self.owners[p] for p in part)

    def split(self, positions: list[int]) -> list[list[int]]:
        """By owner when there are several, else in halves."""
        by_owner: dict[Hashable, list[int]] = {}
        for position in positions:
            by_owner.setdefault(self.owners[position], []).append(position)
        if len(by_owner) > 1:
            return list(by_owner.values())
        middle = len(positions) // 2
        return [positions[:middle], positions[middle:]]

    def attempt(self, positions: list[int]) -> UpstreamError | None:
        """Send ``positions``; record their answers, or return the error (None on success)."""
        if self.budget <= 0 and self.verdicts.sends:
            self.fail(positions, BudgetSpent("the batch's sends ran out before these rows"))
            return None
        self.budget -= 1
        self.verdicts.sends += 1
        assert self.send is not None
        try:
            answers = self.send(positions)
        except UpstreamError as exc:
            if not exc.judged:
                self.unsettled.append(exc)
            return exc
        self.isolator._note_answer()
        for position in positions:
            answer = answers.get(position)
            if answer is not None:
                self.verdicts.answers[position] = answer
        return None

    def judge_alone(self, position: int, error: UpstreamError) -> None:
        """A row that failed alone: at fault for a refusal, or a 5xx while upstream answers."""
        if error.outcome == "http_4xx":
            message = f"upstream refused this row (HTTP {error.status})"
        elif self.isolator._answered_since(self.started):
            message = f"upstream failed on this row (HTTP {error.status})"
        else:
            self.fail([position], error)
            return
        self.verdicts.answers[position] = RowResult(None, None, message)
        self.verdicts.culprits.add(position)
        self.verdicts.suspects.add(self.owners[position])

    def fail(self, positions: list[int], error: BaseException) -> None:
        for position in positions:
            self.verdicts.failures[position] = error
        if isinstance(error, UpstreamError) and error.outcome == "http_5xx":
            self.unexplained = True

    def finish(self) -> None:
        """Settle every error the breaker has not heard of: at most one counts as a failure."""
        self.done = True
        counts = bool(self.unsettled) and (self.unexplained or not self.verdicts.culprits)
        for index, error in enumerate(self.unsettled):
            self.isolator._settle(error, not (counts and index == 0))


def _splittable(error: UpstreamError) -> bool:
    """Whether one row's input may explain ``error``."""
    if error.outcome == "http_5xx":
        return True
    return error.outcome == "http_4xx" and error.status in REFUSAL_STATUSES
