"""What runs on a cluster for a driver through Ray Client (`launch.cluster_client`):
the mailbox actor, as plain asyncio (an async actor's methods run on one event
loop, as here), and the task that posts a job's items to it, run here against
the fake Ray (tests/fake_ray.py) with a mailbox that records what it gets.

The whole path through a real Ray Client server is in
tests/integration/test_ray_cluster.py (the ``[client]`` cases).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
import time
from typing import Any, Coroutine, Dict, List, Optional, Tuple, TypeVar

import fake_ray
import pytest
from harness import live_pids, poll_until, unique_sleep

from simple_gpu_scheduler.launch import cluster_client, cluster_feed, cluster_launcher
from simple_gpu_scheduler.launch.cluster import why_of

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


# --- the mailbox ---------------------------------------------------------------------------


def test_the_mailbox_gives_each_task_s_items_in_the_order_posted() -> None:
    async def scenario() -> Dict[str, List[Tuple[Any, ...]]]:
        box = cluster_client.Mailbox(hold=8)
        for i in range(3):
            await box.put("a", ("out", i))
            await box.put("b", ("err", i))
        return await box.take(1.0)

    assert run(scenario()) == {"a": [("out", 0), ("out", 1), ("out", 2)],
                               "b": [("err", 0), ("err", 1), ("err", 2)]}


def test_take_waits_for_the_first_item_then_returns_at_once() -> None:
    async def scenario() -> Tuple[float, Dict[str, Any], float, Dict[str, Any]]:
        box = cluster_client.Mailbox(hold=8)
        started = time.monotonic()
        empty = await box.take(0.2)
        waited = time.monotonic() - started

        async def later() -> None:
            await asyncio.sleep(0.05)
            await box.put("a", ("started",))

        poster = asyncio.ensure_future(later())
        started = time.monotonic()
        got = await box.take(10.0)
        await poster
        return waited, empty, time.monotonic() - started, got

    waited, empty, woke, got = run(scenario())
    assert empty == {} and waited >= 0.2
    assert got == {"a": [("started",)]} and woke < 5.0


def test_a_task_with_hold_items_untaken_waits_and_the_others_do_not() -> None:
    async def scenario() -> Tuple[bool, bool, Dict[str, Any], Dict[str, Any]]:
        box = cluster_client.Mailbox(hold=2)
        await box.put("a", ("out", 0))
        await box.put("a", ("out", 1))
        third = asyncio.ensure_future(box.put("a", ("out", 2)))
        await asyncio.sleep(0.05)
        held = not third.done()  # the third waits for the driver to take
        await asyncio.wait_for(box.put("b", ("out", 0)), 1.0)  # another task does not
        first = await box.take(0)
        await asyncio.wait_for(third, 1.0)
        return held, third.done(), first, await box.take(0)

    held, done, first, second = run(scenario())
    assert held and done
    assert first == {"a": [("out", 0), ("out", 1)], "b": [("out", 0)]}
    assert second == {"a": [("out", 2)]}


# --- the task --------------------------------------------------------------------------------


class RecordingMailbox:
    """A mailbox handle for `post_job` outside Ray: ``put`` records, ``ready``
    answers until `gone` is set, then fails as a dead actor's call does."""

    def __init__(self) -> None:
        self.items: List[Tuple[Any, ...]] = []
        self.looks = 0
        self.gone = False
        self.put = _Method(self._put)
        self.ready = _Method(self._ready)

    def _put(self, token: str, item: Tuple[Any, ...]) -> fake_ray.ObjectRef:
        assert token == "sgs-test-1-0"
        self.items.append(item)
        return fake_ray.ObjectRef(None)

    def _ready(self) -> fake_ray.ObjectRef:
        self.looks += 1
        if self.gone:
            return fake_ray.ObjectRef(error=fake_ray.RayActorError("the mailbox died"))
        return fake_ray.ObjectRef(True)


class _Method:
    def __init__(self, call: Any) -> None:
        self.remote = call


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> fake_ray.FakeRay:
    ray = fake_ray.install(monkeypatch, [fake_ray.Node(2, "10.0.0.7")])
    ray.init(address="auto")
    return ray


def spec(command: str, tmp: str, tick: float = 0.0) -> Dict[str, Any]:
    return {"command": command.encode(), "env": dict(os.environ), "cwd": tmp,
            "shell": "/bin/sh", "grace": 1.0, "token": "sgs-test-1-0", "labels": {},
            "tick": tick}


def test_post_job_posts_the_attempt_s_items_in_order(fake: fake_ray.FakeRay,
                                                     tmp_path: Any) -> None:
    box = RecordingMailbox()
    cluster_client.post_job(spec("echo hi; exit 3", str(tmp_path)),
                            cluster_launcher._keeper_source(), box)
    kinds = [item[0] for item in box.items]
    assert kinds[0] == "started" and kinds[-2:] == ["ended", "cleared"]
    assert ("out", b"hi\n") in box.items
    assert box.items[-2][1] == 3


def test_a_silent_job_s_task_looks_at_the_mailbox_and_posts_no_ticks(
        fake: fake_ray.FakeRay, tmp_path: Any) -> None:
    box = RecordingMailbox()
    cluster_client.post_job(spec("sleep 0.7; echo done", str(tmp_path), tick=0.2),
                            cluster_launcher._keeper_source(), box)
    assert box.looks >= 2
    assert "tick" not in [item[0] for item in box.items]
    assert ("out", b"done\n") in box.items


def test_when_the_mailbox_is_gone_the_job_s_whole_tree_ends(fake: fake_ray.FakeRay,
                                                            tmp_path: Any) -> None:
    mark = unique_sleep()
    box = RecordingMailbox()
    box.gone = True  # the driver's session has ended: nobody takes the items
    raised: List[BaseException] = []

    def task() -> None:
        try:
            cluster_client.post_job(
                spec(f"sleep {mark} & setsid sleep {mark} & wait", str(tmp_path), tick=0.2),
                cluster_launcher._keeper_source(), box)
        except BaseException as exc:
            raised.append(exc)

    # In a thread, so that a task that never notices fails this test instead
    # of hanging it.
    thread = threading.Thread(target=task, daemon=True)
    thread.start()
    try:
        thread.join(20)
        assert not thread.is_alive(), "the task did not notice that the mailbox is gone"
        assert [type(exc) for exc in raised] == [fake_ray.RayActorError]
        poll_until(lambda: not live_pids(f"sleep {mark}"), 10,
                   what=lambda: f"the job's processes to end: {live_pids(f'sleep {mark}')}")
        assert box.items[0][0] == "started"
    finally:
        for pid in live_pids(f"sleep {mark}"):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("text, why", [
    ("Initialization failure from server:\nTraceback (most recent call last):\n"
     '  File "proxier.py", line 772, in Datapath\n    raise RuntimeError(\n'
     "RuntimeError: Starting Ray client server failed. See x.err for detailed logs.\n",
     "Initialization failure from server: RuntimeError: Starting Ray client server "
     "failed. See x.err for detailed logs."),
    ("ray client connection timeout", "ray client connection timeout"),
    ("", "ConnectionError"),
])
def test_why_is_the_line_that_says_why(text: str, why: Optional[str]) -> None:
    assert why_of(ConnectionError(text)) == why


# --- the driver's side: cluster_feed.MailboxFeed over the fake -------------------------------


def _post_then_return(mailbox: Any, token: str) -> str:
    """A task that posts two items and returns (as `post_job` does, each post
    waited for)."""
    import ray

    for item in (("out", b"a"), ("cleared",)):
        ray.get(mailbox.put.remote(token, item))
    return "done"


def running() -> fake_ray.ObjectRef:
    """The ref of a task that is still running (it never ends)."""
    return fake_ray.ObjectRef(future=concurrent.futures.Future())


def test_the_feed_gives_a_task_s_items_then_its_end(fake: fake_ray.FakeRay) -> None:
    feed = cluster_feed.MailboxFeed(fake.module)
    ref = fake.module.remote(num_cpus=0)(_post_then_return).remote(feed._mailbox, "t1")
    taken: List[Tuple[Any, Tuple[Any, ...]]] = []
    deadline = time.monotonic() + 10
    while not any(item[0] == "gone" for _, item in taken) and time.monotonic() < deadline:
        taken += feed.take({"t1": ref}, False)
    assert [item for _, item in taken] == [("out", b"a"), ("cleared",), ("gone",)]
    assert all(r is ref for r, _ in taken)


def test_items_held_for_a_task_not_known_yet_come_at_once_when_it_is(
        fake: fake_ray.FakeRay) -> None:
    feed = cluster_feed.MailboxFeed(fake.module)
    fake.module.get(feed._mailbox.put.remote("t1", ("started",)))
    # The pump took its snapshot of the tasks before this one was submitted.
    assert feed.take({}, False) == []
    ref = running()
    started = time.monotonic()
    assert feed.take({"t1": ref}, False) == [(ref, ("started",))]
    assert time.monotonic() - started < cluster_feed.WAIT / 2  # no wait for more first


def test_what_a_forgotten_task_still_posts_is_dropped(fake: fake_ray.FakeRay) -> None:
    feed = cluster_feed.MailboxFeed(fake.module)
    fake.module.get(feed._mailbox.put.remote("t1", ("out", b"early")))
    feed.take({}, False)  # held: t1 not known yet
    feed.forget("t1")  # e.g. given up on, and cancelled
    fake.module.get(feed._mailbox.put.remote("t1", ("out", b"late")))
    ref = running()
    assert feed.take({"t1": ref}, False) == []
    assert feed._held == {}
