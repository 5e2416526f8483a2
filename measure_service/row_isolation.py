"""Finds the rows that spoiled a batch, so that one client's bad row costs no one else an answer.

Misses of every client share upstream batches, and one row's input may spoil the whole request
it is in, in many ways: a 5xx, a 400 refusing the request, no answer in time (a hang, or an
answer far slower than usual), a dropped connection, a body that is not Scope3's shape, or a
200 that leaves rows out, answers one row under another's identifier, or fails every row. The
:class:`Isolator` sends a batch and treats all of these the same way: the rows left without a
trustworthy answer form a failed part, which is split and sent again:

1. first by owner (the API key whose request started each fetch), so every client's rows are
   retried apart from everyone else's, then by halves (bisection) within a failed part. The
   parts of a split are sent at once, each in its own greenlet, so that a part that hangs
   delays no other;
2. a send holding rows of several owners gets a shorter read timeout than upstream's (a few
   times the usual answer time, see :meth:`Isolator.deadline_s`): a row that makes upstream
   slow or hang makes such a send fail soon, and the split sends the other owners' rows apart.
   A part of one owner gets the whole read timeout: a slow answer for its own rows is still
   its answer;
3. rows are matched to answers by identity (the upstream client drops an identifier it finds
   twice); a row upstream left out is a failed part. A row error is the row's answer when the
   row was sent alone, or with rows of the same owner some of which were answered; otherwise
   (rows of several owners, or every row failed) it may be another row's doing, and the rows
   are sent again, split;
4. a row that fails alone, after failing in the batch, is at fault: its verdict is a row
   error, which the caller caches like any upstream row error. For a 400 that is certain. Any
   other failure is put down to the row only when upstream answered some other request since
   the batch was first sent; otherwise upstream itself may be failing, and the row just fails.
   A row upstream leaves out of its answer even alone is never cached as an error: it fails;
5. parts that fail while upstream answers nothing else are not split further: an upstream that
   is down costs a batch one request per owner and two more, not one per row. Each batch also
   has a budget of sends, so a client sending many bad rows pays with its own rows' answers.

Answers found after the first send (by a split) are handed to the caller as they come
(``on_answers``): a row answered by a split does not wait until its batch's slowest part is
judged, which for a hang takes a whole read timeout.

Owners whose part failed, or answered only after the shorter timeout, while another part was
answered in time are *suspects*: the caller batches their rows apart for a while, and may cut
short their sends still in flight outside their lane (a send cut short, :class:`CutShort`, is
sent again whole, not split, and its owner is a suspect of the batch too). The caller times
each send from when it leaves (a send may first wait for a slot), so it watches a send of one
owner's rows for outliving :meth:`Isolator.deadline_s` itself, with
:meth:`Isolator.answered_others_since`. A lone row whose failure took no time (a dropped
connection) is judged once another send was answered after it, waiting up to the shorter
timeout for one (a request that never reached upstream is upstream's failure, never a
row's: the upstream client does not leave it to be judged).

The breaker hears once per batch: an ordinary failure when some row failed without a culprit
(or nothing explained the failure at all: no culprit, no suspect), else nothing, since one
row's input says nothing about upstream's health. It hears at once, not when the batch is
judged, of each send of one client's rows that failed after a whole deadline (or timed out,
however short upstream's read timeout) while upstream answered no send at all: upstream is
failing everyone, so such a batch is not split either (its parts would wait as long again).
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import gevent
from gevent.event import Event

from measure_service.greenlets import spawn
from measure_service.upstream import RowResult, UpstreamError

R = TypeVar("R")

# 4xx statuses by which upstream refuses a request for what is in it; others (401, 403, 404,
# 429, ...) are about us or upstream, and the same for any row.
REFUSAL_STATUSES = frozenset({400, 413, 422})
# Failures one row's input may cause, besides refusals.
_ROW_MAY_CAUSE = frozenset({"http_5xx", "timeout", "connection_error", "malformed"})
# Sends a failed batch may spend finding its culprits per level of halving, beyond the one send
# per owner: two bad rows in one part need both halves searched at each level.
_SENDS_PER_LEVEL = 4
# A send of several owners' rows may take this many times the usual answer time (the 90th
# percentile of recent answers) before it is taken as spoiled by one of them: far beyond a
# healthy answer's spread, well within the time a waiting caller comes back.
DEADLINE_FACTOR = 3.0
# The usual answer time before enough answers were seen (near the low end of Scope3's usual
# answer times, see bench/README.md), and the fewest answers that replace it.
INITIAL_ANSWER_S = 0.15
_MIN_SAMPLES = 8
_SAMPLES = 64
# Share of that read timeout after which a part of a split batch still unanswered, while another
# part was answered, is overdue: half the usual answer time beyond it.
_PART_OVERDUE = 1.5 / DEADLINE_FACTOR
# The shortest read timeout a send of several owners gets: scheduling noise on a busy host.
MIN_DEADLINE_S = 0.2


class BudgetSpent(Exception):
    """A failed batch spent its sends before these rows were answered or judged."""


class CutShort(UpstreamError):
    """A send stopped before upstream answered: its owner became a suspect while the send held
    one of the slots everyone shares. Its rows go again, whole, in the owner's lane."""

    def __init__(self) -> None:
        """Nothing was learnt of upstream: the breaker hears nothing of it."""
        super().__init__("timeout", "the send was cut short: its client is set apart")


class Incomplete(UpstreamError):
    """Upstream answered, but without a trustworthy answer for these rows."""

    def __init__(self, message: str) -> None:
        """Upstream's HTTP answer was fine: the breaker has heard of it already."""
        super().__init__("malformed", message)


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
    # Owners whose rows were at fault, or failed (or were slow) while others' rows were answered.
    suspects: set[Hashable] = field(default_factory=set)
    sends: int = 0


# Sends the rows at the given positions of the batch, with a read timeout in seconds (None:
# upstream's own); raises UpstreamError.
Send = Callable[[Sequence[int], float | None], Mapping[int, RowResult]]
# Reports a failure whose ``judged`` is False to the breaker: (error, explained).
Settle = Callable[[UpstreamError, bool], None]
# Hands over answers by position before the batch is judged.
Deliver = Callable[[Mapping[int, RowResult]], None]


def _ignore(owner: Hashable) -> None:
    """No one hears of suspects."""


class Isolator:
    """Sends batches, splitting failed ones to find the rows at fault (see the module doc)."""

    def __init__(
        self,
        settle: Settle,
        *,
        confirm: bool = True,
        is_suspect: Callable[[Hashable], bool] = lambda owner: False,
        on_suspect: Callable[[Hashable], None] = _ignore,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[Event, float], object] = Event.wait,
    ) -> None:
        """Report judged failures through ``settle``; ``clock`` times the answers.

        ``confirm``: a batch of one row that fails is sent once more before it is judged
        (False when upstream calls must not be repeated, ``UPSTREAM_RETRIES=0``).
        ``is_suspect(owner)``: whether the owner's rows recently spoiled a batch; sends holding
        its rows do not time the usual answer. ``on_suspect(owner)`` hears of a suspect as soon
        as it is found, before the batch is judged (a hang takes a timeout or two to judge).
        ``wait(event, timeout)`` waits for the next answer (tests inject it).
        """
        self._settle = settle
        self._confirm = confirm
        self._is_suspect = is_suspect
        self._on_suspect = on_suspect
        self._clock = clock
        self._wait = wait
        self._answered_at = -math.inf
        # When a send holding each owner's rows was last answered (owners are client keys:
        # a bounded set).
        self._answered_by: dict[Hashable, float] = {}
        self._answered = Event()
        self._answer_s: deque[float] = deque(maxlen=_SAMPLES)

    def fetch(self, owners: Sequence[Hashable], send: Send) -> Verdicts:
        """Send every position of a batch (``owners[i]`` started position i) and judge each."""
        isolation = self.begin(owners, send)
        if not isolation.done:
            isolation.go_on(send)
        return isolation.verdicts

    def begin(
        self, owners: Sequence[Hashable], send: Send, on_answers: Deliver | None = None
    ) -> Isolation:
        """Send the whole batch once; when rows were left unanswered, the result must go on.

        The caller may go on elsewhere (the splitting takes several round trips, and need not
        delay the batches behind this one). ``on_answers`` hears of the answers found while a
        spoilt batch is being split, as they come (see :attr:`Isolation.delivered`).
        """
        isolation = Isolation(self, owners, on_answers)
        isolation.begin(send)
        return isolation

    def deadline_s(self) -> float:
        """The read timeout of a send of several owners' rows (see the module doc)."""
        samples = sorted(self._answer_s)
        if len(samples) < _MIN_SAMPLES:
            usual = INITIAL_ANSWER_S
        else:
            usual = samples[int(0.9 * (len(samples) - 1))]
        return max(MIN_DEADLINE_S, DEADLINE_FACTOR * usual)

    def _answered_since(self, moment: float) -> bool:
        return self._answered_at >= moment

    def answered_others_since(self, moment: float, owners: set[Hashable]) -> bool:
        """Whether a send holding rows of owners other than ``owners`` was answered since
        ``moment``: a client is slow compared with the others, not with itself."""
        return any(at >= moment for owner, at in self._answered_by.items()
                   if owner not in owners)

    def _answered_soon(self, moment: float, within_s: float) -> bool:
        """Whether upstream answered a send since ``moment``, waiting up to ``within_s`` for
        one: a failure that takes no time (a dropped connection, an instant 5xx) leaves no
        time for other answers to come in."""
        if not self._answered_since(moment):
            self._wait(self._answered, within_s)
        return self._answered_since(moment)

    def _note_answer(self, elapsed: float, owners: set[Hashable]) -> None:
        self._answered_at = self._clock()
        for owner in owners:
            self._answered_by[owner] = self._answered_at
        answered, self._answered = self._answered, Event()
        answered.set()
        if not any(self._is_suspect(owner) for owner in owners):
            self._answer_s.append(elapsed)


@dataclass(slots=True)
class _Attempt:
    """One send of a part: the positions left without an answer, why, and how long it took."""

    failed: list[int]
    error: UpstreamError | None
    elapsed: float
    # The send took longer than a send of several owners may (see Isolator.deadline_s).
    late: bool = False


class Isolation:
    """One batch's fetch: its verdicts so far, its unsettled errors and its budget of sends."""

    def __init__(
        self, isolator: Isolator, owners: Sequence[Hashable], on_answers: Deliver | None = None
    ) -> None:
        """Start judging a batch whose position ``i`` was started by ``owners[i]``."""
        self.isolator = isolator
        self.owners = owners
        self.verdicts = Verdicts()
        self.on_answers = on_answers
        # Positions whose answers went to ``on_answers`` already: a row answered by a split
        # need not wait until its batch's slowest part is judged (a hang takes a timeout).
        self.delivered: set[int] = set()
        self.started = isolator._clock()
        self.unsettled: list[UpstreamError] = []
        self.unexplained = False
        self.counted = False  # the breaker heard of this batch already
        self.done = False
        self.send: Send | None = None
        self.first: _Attempt | None = None
        self.deadline_s = isolator.deadline_s()
        depth = max(1, math.ceil(math.log2(max(1, len(owners)))))
        self.budget = 1 + len(set(owners)) + _SENDS_PER_LEVEL * depth

    def begin(self, send: Send) -> None:
        """Send the whole batch; settle it unless rows were left that splitting may answer."""
        self.send = send
        positions = list(range(len(self.owners)))
        first = self.first = self.attempt(positions)
        if first.error is not None:
            if self.counted:
                # Upstream answered no one: parts of the batch would fail as the whole did.
                self.fail(first.failed, first.error)
            elif isinstance(first.error, CutShort) or (
                len(first.failed) > 1 and _splittable(first.error)
            ):
                return
            else:
                if (len(first.failed) == 1 and _splittable(first.error)
                        and self.isolator._confirm and not _certain(first.error)):
                    # A lone row is judged on two failures, like a row found by splitting:
                    # one failure may be upstream's own passing trouble.
                    first = self.attempt(first.failed)
                if first.error is not None:
                    self.give_up_or_judge(first.failed, first.error)
        self.finish()

    @property
    def answered_first(self) -> bool:
        """Whether upstream answered the first send of the whole batch."""
        return self.first is not None and not (
            self.first.error is not None and not isinstance(self.first.error, Incomplete)
        )

    def go_on(self, send: Send) -> None:
        """Split what the first send left, sending the parts with ``send``, until all is judged."""
        self.send = send
        first = self.first
        assert first is not None
        try:
            if isinstance(first.error, CutShort):
                self.send_parts([first.failed])
            else:
                self.split_failed(first.failed)
        finally:
            self.finish()

    def give_up_or_judge(self, positions: list[int], error: UpstreamError) -> None:
        """Judge a lone row's splittable failure; fail any other failed rows as they are."""
        if len(positions) == 1 and _splittable(error):
            self.judge_alone(positions[0], error)
        else:
            self.fail(positions, error)

    def split_failed(self, positions: list[int]) -> None:
        """Send each part of a failed group of rows at once; go on with the parts that fail."""
        self.send_parts(self.split(positions))

    def send_parts(self, parts: list[list[int]]) -> None:
        """Send ``parts`` at once; split the ones that fail, send the ones cut short again."""
        attempts = self.attempt_all(parts)
        healthy = self.isolator._answered_since(self.started)
        follow_ups = []
        again = []
        for attempt in attempts:
            if attempt.error is None:
                continue
            if isinstance(attempt.error, CutShort):
                again.append(attempt.failed)
            elif len(attempt.failed) > 1 and _splittable(attempt.error):
                # Failures from an upstream that answers nothing else are not split further.
                if (not healthy and not _certain(attempt.error)) or self.budget <= 0:
                    self.fail(attempt.failed, attempt.error)
                else:
                    follow_ups.append(attempt.failed)
            else:
                self.give_up_or_judge(attempt.failed, attempt.error)
        bad = [part for part, a in zip(parts, attempts, strict=True)
               if a.error is not None or a.late]
        if bad and len(bad) < len(parts):
            for part in bad:
                self.suspect(part)
        _run_all([functools.partial(self.split_failed, part) for part in follow_ups]
                 + [functools.partial(self.send_parts, [part]) for part in again])

    def attempt_all(self, parts: list[list[int]]) -> list[_Attempt]:
        """Send ``parts`` at once. A part still unanswered well past the usual answer time,
        while another part was answered, makes its owners suspects now (its batch already
        failed once: no need to wait for a whole timeout to batch them apart)."""
        if len(parts) == 1:
            return [self.attempt(parts[0])]
        greenlets = [spawn(self.attempt, part) for part in parts]
        waited = 0.0
        for wait_s in (self.deadline_s * _PART_OVERDUE, self.deadline_s):
            gevent.wait(greenlets, timeout=wait_s - waited)
            waited = wait_s
            if any(g.ready() and g.successful() and g.value.error is None for g in greenlets):
                for part, greenlet in zip(parts, greenlets, strict=True):
                    if not greenlet.ready():
                        self.suspect(part)
                break
        gevent.joinall(greenlets)
        return [greenlet.get() for greenlet in greenlets]

    def _silent(self, error: UpstreamError, owners: set[Hashable], started: float,
                elapsed: float) -> bool:
        """Whether ``error`` shows upstream failing everyone: one client's send that failed
        after a whole deadline, or timed out, while no send at all was answered.

        A timeout counts whatever it took: upstream's read timeout may be shorter than the
        deadline (which follows the usual answer time, and a busy host stretches it).
        """
        waited = error.outcome == "timeout" or elapsed >= self.deadline_s
        return (len(owners) == 1 and not _certain(error) and not isinstance(error, CutShort)
                and waited and not self.isolator._answered_since(started))

    def suspect(self, positions: list[int]) -> None:
        """Make the owners of ``positions`` suspects, and say so at once."""
        for owner in {self.owners[p] for p in positions} - self.verdicts.suspects:
            self.verdicts.suspects.add(owner)
            self.isolator._on_suspect(owner)

    def split(self, positions: list[int]) -> list[list[int]]:
        """By owner when there are several, else in halves."""
        by_owner: dict[Hashable, list[int]] = {}
        for position in positions:
            by_owner.setdefault(self.owners[position], []).append(position)
        if len(by_owner) > 1:
            return list(by_owner.values())
        middle = len(positions) // 2
        return [positions[:middle], positions[middle:]]

    def attempt(self, positions: list[int]) -> _Attempt:
        """Send ``positions``; record the trustworthy answers, and say what is left and why.

        Rows answered already are not sent again, and the first trustworthy answer of a row is
        the one kept.
        """
        positions = [p for p in positions if p not in self.verdicts.answers]
        if not positions:
            return _Attempt([], None, 0.0)
        if self.budget <= 0 and self.verdicts.sends:
            self.fail(positions, BudgetSpent("the batch's sends ran out before these rows"))
            return _Attempt([], None, 0.0)
        self.budget -= 1
        self.verdicts.sends += 1
        owners = {self.owners[p] for p in positions}
        timeout_s = self.deadline_s if len(owners) > 1 else None
        assert self.send is not None
        started = self.isolator._clock()
        try:
            answers = self.send(positions, timeout_s)
        except UpstreamError as exc:
            elapsed = self.isolator._clock() - started
            if not exc.judged:
                if self._silent(exc, owners, started, elapsed):
                    # Upstream answered no one while one client's rows waited a whole
                    # deadline: its own trouble, which the breaker must hear now, not
                    # after the splits have waited as long again.
                    self.counted = True
                    self.isolator._settle(exc, False)
                else:
                    self.unsettled.append(exc)
            if isinstance(exc, CutShort):
                self.suspect(positions)  # the caller set its owner apart: so does the batch
            return _Attempt(list(positions), exc, elapsed, elapsed >= self.deadline_s)
        elapsed = self.isolator._clock() - started
        self.isolator._note_answer(elapsed, owners)
        missing: list[int] = []
        doubtful: list[int] = []
        # A row error is the row's own only when the send could not have spread it: the row
        # was alone, or one owner's rows were sent and some of them were answered.
        clean = any(
            (answer := answers.get(p)) is not None and answer.error is None for p in positions
        )
        trusted = len(positions) == 1 or (len(owners) == 1 and clean)
        fresh: dict[int, RowResult] = {}
        for position in positions:
            answer = answers.get(position)
            if answer is None:
                missing.append(position)
            elif answer.error is not None and not trusted:
                doubtful.append(position)
            elif position not in self.verdicts.answers:
                self.verdicts.answers[position] = fresh[position] = answer
        if fresh and (missing or doubtful or self.first is not None):
            self.deliver(fresh)
        late = elapsed > self.deadline_s
        if missing:
            return _Attempt(missing + doubtful, Incomplete("upstream's answer left out rows"),
                            elapsed, late)
        if doubtful:
            return _Attempt(doubtful, Incomplete("upstream failed every row of the request"),
                            elapsed, late)
        return _Attempt([], None, elapsed, late)

    def deliver(self, answers: Mapping[int, RowResult]) -> None:
        """Hand ``answers`` over now, while the rest of the batch is still being judged."""
        if self.on_answers is not None:
            self.delivered.update(answers)
            self.on_answers(answers)

    def judge_alone(self, position: int, error: UpstreamError) -> None:
        """A row that failed alone: at fault for a refusal, or for a failure while upstream
        answers others; a row left out of the answer fails, its owner a suspect."""
        if position in self.verdicts.answers:
            return
        if isinstance(error, Incomplete):
            self.fail([position], error)
            self.suspect([position])
            return
        if not _certain(error) and not self.isolator._answered_soon(
            self.started, self.deadline_s
        ):
            self.fail([position], error)
            return
        self.verdicts.answers[position] = RowResult(None, None, _row_error(error))
        self.verdicts.culprits.add(position)
        self.suspect([position])

    def fail(self, positions: list[int], error: BaseException) -> None:
        positions = [p for p in positions if p not in self.verdicts.answers]
        if not positions:
            return
        for position in positions:
            self.verdicts.failures[position] = error
        if (isinstance(error, UpstreamError) and _splittable(error) and not _certain(error)
                and not isinstance(error, Incomplete)):
            self.unexplained = True

    def finish(self) -> None:
        """Settle every error the breaker has not heard of: at most one counts as a failure."""
        self.done = True
        explained = bool(self.verdicts.culprits or self.verdicts.suspects)
        counts = (not self.counted and bool(self.unsettled)
                  and (self.unexplained or not explained))
        for index, error in enumerate(self.unsettled):
            self.isolator._settle(error, not (counts and index == 0))


def _run_all(tasks: Sequence[Callable[[], R]]) -> list[R]:
    """Run ``tasks`` at once, each in a greenlet; their results in order (errors re-raised)."""
    if len(tasks) <= 1:
        return [task() for task in tasks]
    greenlets = [spawn(task) for task in tasks]
    gevent.joinall(greenlets)
    return [greenlet.get() for greenlet in greenlets]


def _splittable(error: UpstreamError) -> bool:
    """Whether one row's input may explain ``error``."""
    if error.outcome in _ROW_MAY_CAUSE:
        return True
    return error.outcome == "http_4xx" and error.status in REFUSAL_STATUSES


def _certain(error: UpstreamError) -> bool:
    """A refusal: upstream answered, and said the request's input is at fault."""
    return error.outcome == "http_4xx"


def _row_error(error: UpstreamError) -> str:
    """The cached error of a row found at fault for ``error``."""
    if error.outcome == "http_4xx":
        return f"upstream refused this row (HTTP {error.status})"
    if error.outcome == "http_5xx":
        return f"upstream failed on this row (HTTP {error.status})"
    if error.outcome == "timeout":
        return "upstream gave no answer for this row in time"
    if error.outcome == "connection_error":
        return "upstream dropped the connection on this row"
    return "upstream answered this row with a malformed answer"
