"""keras_bert_ft.timings: the clock of a run's phases (timings.json; the run itself is
checked in test_cli.py)."""

import time

import pytest

from keras_bert_ft import timings


def test_process_start_is_before_now_and_after_boot():
    start = timings.process_start()
    assert 0.0 < time.time() - start < 24 * 3600


def test_phases_add_up_and_keep_the_run_order():
    timer = timings.PhaseTimer(start=time.time() - 2.0)
    with timer.phase("export"):
        time.sleep(0.02)
    with timer.phase("read"):
        time.sleep(0.01)
    with timer.phase("read"):
        time.sleep(0.01)
    timer.mark("saved")
    out = timer.to_json()
    assert list(out["phases"]) == ["read", "export"]
    assert out["phases"]["read"] >= 0.02 and out["phases"]["export"] >= 0.02
    assert out["phases_total"] == pytest.approx(out["phases"]["read"] + out["phases"]["export"],
                                                abs=0.002)
    assert 2.0 <= out["since_process_start"]["saved"] < 3.0


def test_startup_is_counted_once_per_process(monkeypatch):
    monkeypatch.setattr(timings, "_STARTED", False)
    first = timings.PhaseTimer(start=time.time() - 5.0)
    first.startup()
    second = timings.PhaseTimer(start=time.time() - 5.0)
    second.startup()
    assert 5.0 <= first.phases["startup"] < 6.0
    assert "startup" not in second.phases and "fine_tune_called" in second.marks
