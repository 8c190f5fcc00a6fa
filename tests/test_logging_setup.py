"""Logging never waits for its reader: records go through a bounded queue to a writer thread, and
what does not fit is dropped and reported."""

from __future__ import annotations

import logging
import queue
from pathlib import Path

from server.logging_setup import DroppingQueueHandler, setup_logging, stop_logging


def test_lines_reach_the_file_through_the_writer_thread(tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    try:
        setup_logging("INFO", log_file)
        logging.getLogger("server.test").info("hello %s", "file")
        logging.getLogger("server.test").debug("not at INFO")
    finally:
        stop_logging()  # writes out what is queued
        logging.getLogger().handlers.clear()
    text = log_file.read_text(encoding="utf-8")
    assert "INFO    server.test: hello file" in text and "not at INFO" not in text


def test_a_full_queue_drops_and_then_says_how_many() -> None:
    records: queue.Queue[logging.LogRecord] = queue.Queue(2)
    handler = DroppingQueueHandler(records)
    logger = logging.getLogger("server.test.dropping")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for i in range(5):
            logger.warning("line %d", i)  # never blocks, even with nobody reading
        assert handler.dropped == 3 and records.qsize() == 2
        assert [records.get_nowait().getMessage() for _ in range(2)] == ["line 0", "line 1"]
        logger.warning("line 5")
        note, line = records.get_nowait(), records.get_nowait()
        assert "3 log line(s) dropped" in note.getMessage() and line.getMessage() == "line 5"
        assert handler.dropped == 0
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
