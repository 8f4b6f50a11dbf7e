"""Progress off a terminal: periodic log lines with counts, rate and ETA (a tqdm bar only on a terminal)."""

from __future__ import annotations

import io
import logging

from nanoflux.progress import Progress


def test_off_a_terminal_progress_is_logged_with_counts_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="nanoflux.progress")
    progress = Progress(8, desc="round 1/2", interval=0.0, stream=io.StringIO())  # not a TTY: no bar
    progress.update(2)
    progress.set_description("round 2/2")
    progress.update(6)
    progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("round 1/2: 2/8 calls (25%), ") and "calls/s, ETA " in lines[0]
    assert lines[1].startswith("round 2/2: 8/8 calls (100%)") and lines[1].endswith("ETA -")
    assert lines[-1].startswith("round 2/2: 8/8 calls (100%)"), "close() always logs the final count"


def test_lines_are_spaced_by_the_interval():
    progress = Progress(100, desc="calls", interval=3600.0, stream=io.StringIO())
    logged = []
    progress._log = lambda: logged.append(progress.line())  # noqa: SLF001 (count the periodic lines only)
    for _ in range(50):
        progress.update()
    assert logged == [] and progress.done == 50


def test_close_does_not_repeat_the_line_just_logged(caplog):
    import io
    import logging

    from nanoflux.progress import Progress

    progress = Progress(2, desc="sweep", unit="cell", interval=0.0, stream=io.StringIO())
    with caplog.at_level(logging.INFO, logger="nanoflux.progress"):
        progress.update()
        progress.update()
        progress.close()
    assert [r.getMessage().split(":")[1].split()[0] for r in caplog.records] == ["1/2", "2/2"]
