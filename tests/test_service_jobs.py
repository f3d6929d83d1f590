"""Background jobs of the dashboard (npdg.service.jobs): one worker per setting for every session,
progress, persistence in the cache folder, failures and retries, unreadable cache files."""

from __future__ import annotations

import threading
import time

import pandas as pd

from npdg.service import jobs


def _slow_frame(calls: list, gate: threading.Event, value: int = 1):
    def compute(progress):
        calls.append(1)
        progress(1, 2)
        gate.wait(10)
        progress(2, 2)
        return pd.DataFrame({"x": [value, value + 1]})

    return compute


def test_same_settings_share_one_worker_and_its_progress(dashboard_cache):
    calls, gate = [], threading.Event()
    first = jobs.submit(("a", 1), _slow_frame(calls, gate), label="demo", store=jobs.FRAME_STORE)
    second = jobs.submit(("a", 1), _slow_frame(calls, gate), label="demo", store=jobs.FRAME_STORE)  # another session
    assert first.key == second.key and first.state == "running"
    deadline = time.monotonic() + 5
    while jobs.status(first.key).done < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    running = jobs.status(first.key)
    assert running.state == "running" and running.fraction == 0.5 and jobs.result(first.key) is None
    gate.set()
    done = jobs.wait(first.key, timeout=10)
    assert done.state == "done" and done.fraction == 1.0 and done.elapsed >= 0
    assert calls == [1]  # computed once
    assert list(jobs.result(first.key)["x"]) == [1, 2]
    path = jobs.FRAME_STORE.path(first.key)
    assert path.is_file() and path.parent.parent == dashboard_cache
    assert path.with_suffix(".job.json").is_file()


def test_a_finished_result_survives_a_restart(dashboard_cache):
    gate = threading.Event()
    gate.set()
    s = jobs.submit(("b",), _slow_frame([], gate, 5), label="demo", store=jobs.FRAME_STORE)
    jobs.wait(s.key, 10)
    jobs.forget()  # as after a server restart: only the file is left
    assert jobs.status(s.key) is None
    found = jobs.lookup(("b",), jobs.FRAME_STORE)
    assert found.state == "done" and found.from_disk
    calls = []
    again = jobs.submit(("b",), _slow_frame(calls, gate, 99), label="demo", store=jobs.FRAME_STORE)
    assert again.state == "done" and calls == [] and list(jobs.result(again.key)["x"]) == [5, 6]
    assert jobs.lookup(("never",), jobs.FRAME_STORE) is None  # lookup never starts a job


def test_failure_is_reported_and_a_new_submit_retries(dashboard_cache):
    def broken(progress):
        raise ValueError("bad input")

    s = jobs.submit(("c",), broken, label="demo", store=jobs.FRAME_STORE)
    failed = jobs.wait(s.key, 10)
    assert failed.state == "failed" and failed.error == "ValueError: bad input"
    assert not jobs.FRAME_STORE.path(s.key).exists()  # nothing half-written
    gate = threading.Event()
    gate.set()
    retry = jobs.submit(("c",), _slow_frame([], gate), label="demo", store=jobs.FRAME_STORE)
    assert jobs.wait(retry.key, 10).state == "done"


def test_an_unreadable_cache_file_is_recomputed(dashboard_cache):
    key = jobs.job_key(("d",))
    path = jobs.FRAME_STORE.path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x01 not csv \xff")
    gate = threading.Event()
    gate.set()
    calls = []
    s = jobs.submit(("d",), _slow_frame(calls, gate, 7), label="demo", store=jobs.FRAME_STORE)
    assert jobs.wait(s.key, 10).state == "done" and calls == [1]
    assert pd.read_csv(path)["x"].tolist() == [7, 8]


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(jobs.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert jobs.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(jobs.CACHE_ENV)
    assert jobs.cache_dir().parts[-2:] == (".cache", "dashboard")


def _lane_job(started: list, gate: threading.Event, name: str):
    """A job that waits at ``gate`` (as for the engine), then asks :func:`jobs.wanted` like a what-if."""
    def compute(progress):
        gate.wait(10)
        if not jobs.wanted(jobs.job_key(("lane", name))):
            raise jobs.Superseded
        started.append(name)
        return pd.DataFrame({"x": [name]})

    return compute


def test_a_newer_request_in_a_lane_supersedes_the_older_one(dashboard_cache):
    started, gate = [], threading.Event()
    lane = ("what-if", "session-1")
    a = jobs.submit(("lane", "a"), _lane_job(started, gate, "a"), label="a", lane=lane)
    b = jobs.submit(("lane", "b"), _lane_job(started, gate, "b"), label="b", lane=lane)
    c = jobs.submit(("lane", "c"), _lane_job(started, gate, "c"), label="c")  # no lane: never superseded
    assert not jobs.wanted(a.key) and jobs.wanted(b.key) and jobs.wanted(c.key)
    gate.set()
    jobs.wait_all(timeout=10)
    assert sorted(started) == ["b", "c"]  # a was dropped before its expensive part
    assert jobs.status(a.key) is None  # forgotten, not failed: nothing to show or retry
    assert jobs.status(b.key).state == "done" and jobs.status(c.key).state == "done"
    again = jobs.submit(("lane", "a"), _lane_job(started, gate, "a"), label="a", lane=lane)  # back to a: computed
    jobs.wait(again.key, timeout=10)
    assert jobs.status(again.key).state == "done" and started[-1] == "a"


def test_lanes_are_bounded_least_recently_used_first(dashboard_cache, monkeypatch):
    monkeypatch.setattr(jobs, "MAX_LANES", 3)
    monkeypatch.setattr(jobs, "_LANES", {})
    for i in range(5):
        jobs.submit(("bound", i), lambda progress: None, label="x", lane=("lane", i % 4))
    assert list(jobs._LANES) == [("lane", 2), ("lane", 3), ("lane", 0)]  # lane 0 asked again last; 1 dropped
    jobs.wait_all(timeout=10)


def test_a_job_another_lane_waits_for_is_not_superseded(dashboard_cache):
    started, gate = [], threading.Event()
    one, two = ("what-if", "s1"), ("what-if", "s2")
    a = jobs.submit(("lane", "a"), _lane_job(started, gate, "a"), label="a", lane=one)
    jobs.submit(("lane", "a"), _lane_job(started, gate, "a"), label="a", lane=two)  # a second session, same plan
    jobs.submit(("lane", "b"), _lane_job(started, gate, "b"), label="b", lane=one)  # the first moves on
    assert jobs.wanted(a.key)  # the second session still waits for it
    gate.set()
    jobs.wait_all(timeout=10)
    assert sorted(started) == ["a", "b"]
