"""The broker's side of periodic schedules: a thin shell around the ScheduleBook.

A mixin of Broker (runner/broker/server.py). It restores the journaled schedules at start
(their catch-up runs), arms one loop timer for the next tick, carries out the book's
actions (a tick's job through ``JobBook.create``, owned by SCHEDULER_CLIENT; the schedule
rows in the same turn's transaction), answers the ``schedule`` requests and loads the
``--schedules`` file, again on SIGHUP. Every decision is the book's (runner/broker/schedules.py).
"""

from __future__ import annotations

import time

from loguru import logger

from runner import protocol
from runner.broker import schedule_file
from runner.broker.schedules import SCHEDULER_CLIENT, Action, Delete, Fire, Save, Schedule, ScheduleBook, Skip
from runner.broker.ticks import utc_text
from runner.loop import Timer

log = logger.bind(component="schedules")

#: Schedules one broker keeps at most (each costs a look at every tick's turn).
MAX_SCHEDULES = 10_000


class ScheduleShell:
    """Schedules in the broker: the book, its timer, its requests and its file."""

    schedules: ScheduleBook
    schedules_file: str | None
    _schedule_timer: Timer | None
    _schedule_timer_due: float | None

    def _start_schedules(self, path: str | None, from_file: list[Schedule]) -> None:
        """Restore the journaled schedules (catching up on ticks missed while down), then the file's."""
        self.schedules = ScheduleBook()
        self.schedules_file = path
        self._schedule_timer = None
        self._schedule_timer_due = None
        now = time.time()
        actions, problems = self.schedules.restore(self.journal.schedules(), now, self.jobs.scheduler.jobs.__contains__)
        for name, problem in problems:  # kept in the journal: adding its name again replaces it
            log.error("left out the journaled schedule {!r}, no longer valid here: {}", name, problem)
        caught_up = sum(isinstance(action, Fire) for action in actions)
        if caught_up:
            log.info("made {} jobs for ticks missed while the broker was down (each schedule's catch_up)", caught_up)
        self._carry_out(actions)
        if path is not None:
            self._apply_schedule_file(from_file)
        if self.schedules.entries:
            log.info("{} schedules, next tick at {}", len(self.schedules.entries), utc_text(self.schedules.next_due()))
        self._arm_schedule_timer()
        self._schedule_flush()

    def reload_schedules(self) -> None:
        """Read the --schedules file again (SIGHUP); safe from a signal handler or another thread."""
        if self.schedules_file is not None:
            self.loop.call_soon_threadsafe(self._reload_schedule_file)

    def _reload_schedule_file(self) -> None:
        try:
            wanted = schedule_file.load(self.schedules_file)
        except ValueError as exc:
            log.error("kept every schedule as it was: {}", exc)
            return
        self._apply_schedule_file(wanted)
        self._schedule_flush()

    def _apply_schedule_file(self, wanted: list[Schedule]) -> None:
        """The file owns its schedules: add or change them, remove those gone from it (not the API's)."""
        names = {schedule.name for schedule in wanted}
        actions: list[Action] = []
        for name, entry in list(self.schedules.entries.items()):
            if entry.schedule.source == "file" and name not in names:
                actions += self.schedules.remove(name)
        gone = len(actions)
        changed = [schedule for schedule in wanted if getattr(self.schedules.entries.get(schedule.name), "schedule",
                                                               None) != schedule]
        for schedule in changed:
            actions += self.schedules.add(schedule, time.time())
        self._carry_out(actions)
        self._arm_schedule_timer()
        log.info("schedule file {}: {} schedules, {} added or changed, {} removed", self.schedules_file, len(wanted),
                 len(changed), gone)

    # --- ticks ----------------------------------------------------------------------------------

    def _arm_schedule_timer(self) -> None:
        """One timer, at the earliest undecided tick (the heartbeat also looks, should the clock jump)."""
        due = self.schedules.next_due()
        if self._schedule_timer is not None:
            if due == self._schedule_timer_due:
                return  # armed for it already: a cancelled timer stays in the loop's heap until its time
            self._schedule_timer.cancel()
            self._schedule_timer = None
        self._schedule_timer_due = due
        if due is not None:
            self._schedule_timer = self.loop.call_later(max(0.0, due - time.time()), self._on_schedule_timer)

    def _on_schedule_timer(self) -> None:
        self._schedule_timer = None
        self._run_due_ticks()

    def _run_due_ticks(self) -> None:
        actions = self.schedules.due(time.time())
        if actions:
            self._carry_out(actions)
            self._schedule_flush()
        self._arm_schedule_timer()

    def _carry_out(self, actions: list[Action]) -> None:
        """Create the ticks' jobs and journal the schedule rows (committed with the turn)."""
        now = time.time()
        for action in actions:
            if isinstance(action, Fire):
                self._fire(action, now)
            elif isinstance(action, Save):
                self.journal.save_schedule(action.row)
            elif isinstance(action, Delete):
                self.journal.delete_schedule(action.name)
            elif isinstance(action, Skip):
                log.debug("schedule {!r} skipped its tick at {}: {}", action.name, utc_text(action.tick), action.reason)

    def _fire(self, action: Fire, now: float) -> None:
        schedule = action.schedule
        row = [action.job_id, schedule.task, schedule.pool, schedule.queue, schedule.priority, schedule.payload,
               schedule.options]
        if self.jobs.create(SCHEDULER_CLIENT, row, now):
            log.bind(job=action.job_id).debug("schedule {!r}: tick at {} is job {}", schedule.name,
                                              utc_text(action.tick), action.job_id)
        elif action.job_id not in self.jobs.scheduler.jobs:  # made before a crash, and finished since
            self._carry_out(self.schedules.finished(action.job_id))

    def _schedule_jobs_finished(self, outcomes: list[list]) -> None:
        """Outcomes of the scheduler's jobs (kept in the journal, sent nowhere): their schedules may go on."""
        for job_id, _status, _outcome in outcomes:
            self._carry_out(self.schedules.finished(job_id))

    # --- requests -----------------------------------------------------------------------------

    def _acceptable(self, schedule: Schedule) -> Schedule:
        """``schedule``, unless it breaks one of the broker's limits (ValueError)."""
        if len(schedule.payload) > self.limits.max_payload_bytes:
            raise ValueError(f"the schedule's arguments take {len(schedule.payload)} bytes, more than the broker's "
                             f"limit of {self.limits.max_payload_bytes} (runner broker --max-payload-bytes)")
        if schedule.name not in self.schedules.entries and len(self.schedules.entries) >= MAX_SCHEDULES:
            raise ValueError(f"the broker has its limit of {MAX_SCHEDULES} schedules; remove some first "
                             "(runner schedule remove NAME)")
        return schedule

    def _on_schedule(self, peer_id: bytes, message: protocol.Message) -> None:
        body = message.body
        if not self.access.may_schedule(peer_id):
            self._reply(peer_id, message, {"refused": "schedules need a client or admin key"})
            return
        if body["op"] == "list":
            self._reply(peer_id, message, {"schedules": self.schedules.views()})
            return
        if body["op"] == "remove":
            actions = self.schedules.remove(body["name"])
            answer = {"removed": bool(actions)}
        else:
            try:
                schedule = self._acceptable(Schedule(**body["schedule"]))
            except (ValueError, TypeError) as exc:
                self._reply(peer_id, message, {"error": str(exc)})
                return
            actions = self.schedules.add(schedule, time.time())
            answer = {"schedule": self.schedules.entries[schedule.name].view()}
        self._carry_out(actions)
        self._arm_schedule_timer()
        self._reply(peer_id, message, answer)
