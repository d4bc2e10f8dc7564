"""How what a job's task says comes back to the driver: the two feeds of the
Ray launcher.

A task says, in order, that its job started (where, on which GPUs), what the
job prints, that the job's shell exited, and that nothing of the job is left
(the items of `cluster_node`). Then the task ends, normally or with an
error of Ray's (cancelled, its node died). A feed submits tasks and gives
the pump, for the tasks it is asked about, each new item and each task's
end, in the order the task said them:

- `StreamFeed`: each task is a streaming generator, whose items reach the
  driver about a millisecond after they are yielded, held back (at most 64
  of them unread) by Ray itself. The lowest cost; what a driver on a node of
  the cluster uses.
- `MailboxFeed`: Ray Client (``ray://``) runs no streaming tasks
  (ray-project/ray#43357). Each task is a plain one that posts its items to
  one mailbox actor of the run (`cluster_client`), and the pump takes them
  from there, a few milliseconds later.

The end of a task is the ``ray.get`` of its result: ``("gone",)`` when it
returned, ``("error", exception)`` when Ray says it failed.
"""

from __future__ import annotations

import time

from . import cluster_client, cluster_node

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

    Item = Tuple[Any, ...]

#: Seconds a feed waits for something to happen before the pump looks again
#: (for new tasks, the nodes, its own end): a task's items end the wait at
#: once. `SOON` while some task has not said it started (its start, and
#: where, is what a signal to it needs): a stream is waited on only from the
#: next wait on, a mailbox at once.
WAIT = 0.1
SOON = 0.01
#: Items of output a task may have waiting for the driver; past them it
#: waits (and its job with it, on a full pipe), as a local job waits for a
#: slow reader, instead of the object store or the mailbox growing.
HOLD = 64
#: Seconds of silence after which a mailbox task looks whether the mailbox
#: (and with it the driver) is still there.
TICK = 5.0
#: Seconds after a task's end during which what it still posts is dropped.
LATE = 60.0


def _end(ray: Any, ref: Any) -> Item:
    try:
        ray.get(ref)
    except Exception as exc:
        return ("error", exc)
    return ("gone",)


class Feed:
    """What both feeds share: the task function, one variant of it per GPU
    share asked for (``.options`` builds a new one each time: kept)."""

    #: seconds between a silent task's looks at the driver (0: none)
    tick = 0.0

    def __init__(self, ray: Any, base: Any, *extra: Any) -> None:
        self._ray = ray
        self._base = base
        self._extra = extra  # what every task gets after (spec, keeper)
        self._by_share: Dict[float, Any] = {}

    def submit(self, share: float, spec: Dict[str, Any], keeper: Any) -> Any:
        task = self._by_share.get(share)
        if task is None:
            task = self._by_share[share] = self._base.options(num_gpus=share)
        return task.remote(spec, keeper, *self._extra)

    def take(self, tokens: Dict[str, Any], soon: bool) -> List[Tuple[Any, Item]]:
        """(ref, item) for what the tasks said since the last call, their ends
        included. `tokens`: each running task's token -> its ref."""
        raise NotImplementedError

    def forget(self, token: str) -> None:
        """Nothing more of the task `token` is wanted (it ended, or the pump
        gave up on it)."""

    def close(self) -> None:
        pass


class StreamFeed(Feed):
    """Each task a streaming generator; its stream is its ref."""

    def __init__(self, ray: Any) -> None:
        super().__init__(ray, ray.remote(
            num_returns="streaming", num_cpus=0, max_retries=0, max_calls=0,
            _generator_backpressure_num_objects=HOLD)(cluster_node.run_job))

    def take(self, tokens: Dict[str, Any], soon: bool) -> List[Tuple[Any, Item]]:
        """(ref, item) for the next item of each stream that has one, waiting
        up to `WAIT` (or `SOON`) for the first. `tokens`: each task's token ->
        its ref."""
        ray = self._ray
        refs = list(tokens.values())
        ready, rest = ray.wait(refs, num_returns=1, timeout=SOON if soon else WAIT)
        if not ready:
            return []
        if rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        taken: List[Tuple[Any, Item]] = []
        for ref in ready:
            try:
                item: Item = ray.get(next(ref))
            except StopIteration:
                item = ("gone",)
            except Exception as exc:
                item = ("error", exc)
            taken.append((ref, item))
        return taken



class MailboxFeed(Feed):
    """Each task a plain one that posts to the run's mailbox; its result ref
    is its ref."""

    tick = TICK

    def __init__(self, ray: Any, head: Optional[str] = None) -> None:
        options: Dict[str, Any] = {}
        if head is not None:
            # On the head, where the Ray Client server (the driver) is: a node
            # that dies must not take the mailbox, and every job, with it.
            # Not soft: Ray 2.60 placed 2 of 4 soft ones elsewhere (findings,
            # section 10); the head is there for as long as the run can be.
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=False)
        # A coroutine per waiting call: one `take`, and a `put` for each task
        # held back by a full mailbox, so up to one per slot of the cluster.
        self._mailbox = ray.remote(cluster_client.Mailbox).options(
            num_cpus=0, max_restarts=0, max_concurrency=100000, **options).remote(HOLD)
        super().__init__(ray, ray.remote(num_cpus=0, max_retries=0, max_calls=0)(
            cluster_client.post_job), self._mailbox)
        #: items of a task whose ref the pump did not know yet (it is submitted
        #: on the engine's thread, and may post before the pump hears of it)
        self._held: Dict[str, List[Item]] = {}
        #: token -> when its task's end was given (or it was forgotten): what
        #: it still posts (a post on its way as Ray cancelled it) is dropped
        self._over: Dict[str, float] = {}

    def take(self, tokens: Dict[str, Any], soon: bool) -> List[Tuple[Any, Item]]:
        """(ref, item) for every item posted since the last call, waiting up
        to `WAIT` for the first (not at all if some were held for a task the
        pump knows now); then (ref, end) for each task that ended. `tokens`:
        each task's token -> its ref."""
        ray = self._ray
        held = any(token in tokens for token in self._held)
        posted = ray.get(self._mailbox.take.remote(0 if held else WAIT))
        refs = list(tokens.values())
        ended: List[Any] = []
        if refs:
            ended, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        if ended:
            # A task posts its last item and waits for the post before it
            # returns: what it said is in the mailbox by now.
            for token, items in ray.get(self._mailbox.take.remote(0)).items():
                posted.setdefault(token, []).extend(items)
        for token, items in posted.items():
            if token not in self._over:
                self._held.setdefault(token, []).extend(items)
        taken: List[Tuple[Any, Item]] = []
        for token in [t for t in self._held if t in tokens]:
            ref = tokens[token]
            taken.extend((ref, item) for item in self._held.pop(token))
        taken.extend((ref, _end(ray, ref)) for ref in ended)
        if ended:
            done = set(ended)
            for token, ref in tokens.items():
                if ref in done:
                    self.forget(token)
        return taken

    def forget(self, token: str) -> None:
        now = time.monotonic()
        self._held.pop(token, None)
        self._over[token] = now
        if len(self._over) > 1024:  # a late post comes within moments
            self._over = {t: at for t, at in self._over.items() if now - at < LATE}

    def close(self) -> None:
        try:
            self._ray.kill(self._mailbox)
        except Exception:
            pass  # gone with the cluster
