"""Why a vendor job exists twice, as the chaos and adversarial runs tell it."""

from __future__ import annotations

from tests.fleet import READ_LAG_S, STARTUP_S, UNCOMMITTED_S, Life, cause_of
from worker.simulators.base import SimJob


def job(*, received: float = 10.0, answered: float = 10.1, client: str | None = "export-worker/0.1.0 (w0-1)") -> SimJob:
    made = SimJob("j", "r", {}, created=received, fails=False, durations=(1.0,))
    made.received, made.answered, made.client = received, answered, client
    return made


def killed(instance: str, at: float, started: float = 1.0) -> Life:
    return Life(instance, started, at)


def test_a_lost_answer_is_answer_lost() -> None:
    lost = job()
    lost.answer_lost = "dropped"
    assert cause_of(lost, []) == "answer_lost"


def test_a_kill_of_any_worker_while_the_call_ran_is_at_kill() -> None:
    assert cause_of(job(), [(10.05, 10.05)]) == "at_kill"


def test_the_caller_killed_after_the_answer_but_before_committing_it_is_at_kill() -> None:
    assert cause_of(job(), [(14.0, 14.0)], [killed("w0-1", 14.0)]) == "at_kill"


def test_a_call_the_simulator_read_just_after_its_caller_was_killed_is_at_kill() -> None:
    # Sent before the SIGKILL, stamped when the simulators' loop got to it.
    assert cause_of(job(received=10.0, answered=10.0), [(9.9, 9.9)], [killed("w0-1", 9.9)]) == "at_kill"


def test_a_call_read_long_after_its_callers_kill_is_not_explained_by_it() -> None:
    late = 9.9 + READ_LAG_S + 1
    assert cause_of(job(received=late, answered=late), [(9.9, 9.9)], [killed("w0-1", 9.9)]) == "other"


def test_a_call_read_after_a_quick_restart_under_the_same_id_belongs_to_the_killed_process() -> None:
    # Killed at 9.9, started again under the same id at 9.92: the call read at 10.0
    # cannot be the new process's, which calls no vendor within STARTUP_S.
    lives = [killed("w0-1", 9.9), Life("w0-1", started=9.92)]
    assert cause_of(job(received=10.0, answered=10.0), [(9.9, 9.9)], lives) == "at_kill"


def test_a_call_of_the_restarted_process_is_not_explained_by_the_earlier_kill() -> None:
    restarted = 5.5
    lives = [killed("w0-1", 5.0), Life("w0-1", started=restarted)]  # the second process was never killed
    assert restarted + STARTUP_S <= 10.0
    assert cause_of(job(), [(5.0, 5.0)], lives) == "other"


def test_another_worker_killed_after_the_answer_is_not_an_explanation() -> None:
    assert cause_of(job(), [(14.0, 14.0)], [killed("w1-1", 14.0)]) == "other"
    assert cause_of(job(), [(14.0, 14.0)], [killed("w0-11", 14.0)]) == "other"  # not a prefix match


def test_the_caller_killed_long_after_the_answer_is_not_an_explanation() -> None:
    late = 10.1 + UNCOMMITTED_S + 1
    assert cause_of(job(), [(late, late)], [killed("w0-1", late)]) == "other"


def test_a_job_without_a_known_caller_is_judged_by_the_kill_windows_only() -> None:
    assert cause_of(job(client=None), [(14.0, 14.0)], [killed("w0-1", 14.0)]) == "other"
