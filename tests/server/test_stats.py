"""JobStats: running jobs and the sliding window of ended ones, on a clock the test sets, and from many threads."""
import threading

import pytest

from nnglass.server.stats import JobFigures, JobStats


class Clock:
    """A clock that stands still until the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_running_job_then_the_window_forgetting_it():
    clock = Clock()
    stats = JobStats(clock)
    assert stats.figures() == JobFigures(running=0, running_s=None, completed_1m=0, per_minute=0.0, mean_s=None)
    with stats.running():
        clock.now += 2
        assert stats.figures() == JobFigures(running=1, running_s=2.0, completed_1m=0, per_minute=0.0, mean_s=None)
        clock.now += 1
    assert stats.figures() == JobFigures(running=0, running_s=None, completed_1m=1, per_minute=1.0, mean_s=3.0)
    clock.now += 60  # out of the last minute; still in the five minutes, which now span 63 s
    assert stats.figures() == JobFigures(running=0, running_s=None, completed_1m=0, per_minute=60 / 63, mean_s=3.0)
    clock.now += 240  # 300 s after it ended: forgotten
    assert stats.figures() == JobFigures(running=0, running_s=None, completed_1m=0, per_minute=0.0, mean_s=None)


def test_the_longest_running_job_and_a_job_that_raised():
    clock = Clock()
    stats = JobStats(clock)
    with stats.running():
        clock.now += 5
        with pytest.raises(ZeroDivisionError), stats.running():
            clock.now += 1
            assert stats.figures().running == 2 and stats.figures().running_s == 6.0
            1 / 0
        clock.now += 1
    figures = stats.figures()
    assert (figures.running, figures.completed_1m, figures.mean_s) == (0, 2, (1 + 7) / 2)


def test_many_threads_count_every_job():
    stats = JobStats()

    def jobs() -> None:
        for _ in range(200):
            with stats.running():
                pass

    threads = [threading.Thread(target=jobs) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    figures = stats.figures()
    assert (figures.running, figures.completed_1m) == (0, 1600) and figures.per_minute == 1600.0
