"""The console: progress lines live in place on a terminal and are ordinary lines elsewhere."""
from __future__ import annotations

import io
import logging
import os
import pty
import subprocess
import sys
from pathlib import Path

from coreset.progress import PROGRESS, ConsoleHandler

REPO = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(text: str) -> list[str]:
    """What a terminal shows after ``text``: ``\\r`` returns to column 0, ``ESC[K`` erases to
    the end of the line (the only controls the console writes)."""
    lines, line = [], ""
    i = 0
    while i < len(text):
        if text.startswith("\x1b[K", i):
            i += 3
            continue
        ch = text[i]
        if ch == "\r":
            line = ""
        elif ch == "\n":
            lines.append(line)
            line = ""
        else:
            line += ch
        i += 1
    return lines + ([line] if line else [])


def _logger(stream: io.StringIO) -> logging.Logger:
    handler = ConsoleHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"test-progress-{id(stream)}")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    return logger


def _session(logger: logging.Logger) -> None:
    logger.info("stage retrain: 42 of 42 trials to run")
    for done in range(1, 47):
        logger.info("retrain: %d/42 trials finished, 2 running, ETA 1m", min(done, 42), extra=PROGRESS)
    logger.info("stage retrain: finished in 23m16s: 42 trials")


def test_a_terminal_shows_one_live_progress_line_cleared_by_the_next_line() -> None:
    term = Terminal()
    logger = _logger(term)
    logger.info("stage retrain: 42 of 42 trials to run")
    logger.info("retrain: 1/42 trials finished", extra=PROGRESS)
    logger.info("retrain: 2/42 trials finished", extra=PROGRESS)
    assert screen(term.getvalue()) == ["stage retrain: 42 of 42 trials to run", "retrain: 2/42 trials finished"]
    _session(logger)
    assert screen(term.getvalue()) == ["stage retrain: 42 of 42 trials to run"] * 2 + [
        "stage retrain: finished in 23m16s: 42 trials"]


def test_elsewhere_every_progress_record_is_a_plain_line() -> None:
    log_file = io.StringIO()
    _session(_logger(log_file))
    text = log_file.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert len(text.splitlines()) == 48


def test_a_real_terminal_gets_the_live_line_and_an_error_clears_it() -> None:
    """configure_logging's handler on a pseudo-terminal, as a job's console is; then fail()."""
    script = ("import logging, time\n"
              "from coreset.cli import configure_logging, fail\n"
              "from coreset.progress import Progress\n"
              "configure_logging()\n"
              "logging.getLogger('coreset').info('stage score: 1 of 1 methods to score')\n"
              "p = Progress('score: units', 5, every_s=0.0)\n"
              "for _ in range(4): p.step()\n"
              "fail('bad thing')\n")
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=child, stdout=child, stderr=child, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert proc.wait(timeout=60) == 2
    shown = screen(b"".join(chunks).decode().replace("\r\n", "\n"))
    assert len(shown) == 2, shown
    assert shown[0].endswith("stage score: 1 of 1 methods to score") and shown[1] == "error: bad thing"
    assert "\x1b[K" in b"".join(chunks).decode()  # the progress lines were drawn in place
