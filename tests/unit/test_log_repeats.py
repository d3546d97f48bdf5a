"""``logs.RepeatsFilter``: a library line that repeats shows once a minute, then says how many
were held back; other lines pass untouched."""

from __future__ import annotations

import logging

from flow8_streams.logs import RepeatsFilter


def record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_repeated_aiokafka_error_shows_once_a_minute_with_the_count_held_back() -> None:
    now = [0.0]
    repeats = RepeatsFilter(every_s=60, clock=lambda: now[0])
    template = "Unable connect to node with id %s: %s"
    shown = []
    for second in range(0, 130):  # two lines a second, for 130 s
        now[0] = float(second)
        for _ in range(2):
            line = record("aiokafka", template, 1, "[Errno 111] Connection refused")
            if repeats.filter(line):
                shown.append((second, line.getMessage()))
    assert [s for s, _ in shown] == [0, 60, 120]
    assert shown[0][1] == "Unable connect to node with id 1: [Errno 111] Connection refused"
    assert shown[1][1].endswith("(119 more like it in the last 60 s, not shown)")
    # another template, and flow8's own lines, pass however often they come
    assert repeats.filter(record("aiokafka", "Unable to update metadata from %s", [1]))
    assert all(repeats.filter(record("flow8.streams", template, 1, "x")) for _ in range(5))
    assert all(repeats.filter(record("aiokafka", template, 1, "x", level=logging.INFO)) for _ in range(5))
