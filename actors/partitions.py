"""Partitioned work: each workflow belongs to one of P partitions; each process holds leases on some.

With ``partitions`` set (``CADRE_PARTITIONS``), a workflow's partition is a deterministic hash of
its id (:func:`partition_of`): the one the event stream's subject transform puts in each stored
subject (``bus.subjects.partition_transform``), so that each partition has its own consumers.
The processes that run the same actor kinds (a *group*, named by
:func:`group_of`) share the partitions through leases in a JetStream KV bucket whose entries
expire (the bucket's TTL, ``CADRE_PARTITION_LEASE_TTL_S``):

* every process writes a membership key ``<group>.m.<owner>`` each tick (a third of the TTL);
* it renews its partition keys ``<group>.p<n>`` (compare-and-set on the revision it holds: a lease
  that expired and was taken by another is lost, never stolen back);
* it aims at ``ceil(P / members)`` partitions (:func:`rebalance`): it claims free ones (create:
  only if no one holds the key) and hands back those over its share (delete), so a new process
  gets its share at the next tick, and a process that dies (kill -9) loses its leases when they
  expire; another claims them then. A process that stops hands its leases back at once.

The leases route work; they are not what keeps it exactly-once. Actors of several processes may
always race on a workflow (during a takeover, for a tick): the appends' expected sequence and the
outputs' derived ids keep that safe, as without partitions. A process handles the inputs of the
partitions it holds; its state cache follows (decodes) only those workflows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.errors import (
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue

log = logging.getLogger("cadre.partitions")

__all__ = ["Leases", "PartitionPlan", "bucket_name", "group_of", "partition_of", "rebalance"]


_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def partition_of(workflow_id: str, partitions: int) -> int:
    """The partition of a workflow: the same in every process, language and run, and the one the
    server writes into its stored subjects: nats-server's ``{{partition(P,1)}}`` is the FNV-1a (32 bit)
    hash of the workflow token, mod P."""
    h = _FNV_OFFSET
    for byte in workflow_id.encode():
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h % partitions


def group_of(consumers: Iterable[str]) -> str:
    """The lease group of a process: the actor consumers it runs (processes that run the same kinds
    share partitions; a kind run by two groups is covered by each). A valid KV key token."""
    return "-".join(sorted(set(consumers))) or "none"


def bucket_name(prefix: str) -> str:
    """The lease bucket of a subject prefix."""
    return f"{prefix.replace('.', '_')}_partitions"


@dataclass(frozen=True)
class PartitionPlan:
    """What one tick does: the free partitions to claim and the held ones to hand back."""

    claim: tuple[int, ...]
    release: tuple[int, ...]


def rebalance(partitions: int, held: frozenset[int], taken: frozenset[int], members: int) -> PartitionPlan:
    """Move towards an even share: ``ceil(partitions / members)`` each.

    ``held``: the partitions this process holds; ``taken``: those others hold; ``members``: the live
    processes of the group, this one included. Claims the lowest free partitions up to the share;
    hands back the highest held ones over it."""
    share = math.ceil(partitions / max(1, members))
    if len(held) > share:
        return PartitionPlan(claim=(), release=tuple(sorted(held)[share:]))
    free = [p for p in range(partitions) if p not in held and p not in taken]
    return PartitionPlan(claim=tuple(free[: share - len(held)]), release=())


class Leases:
    """The partitions this process holds, kept through a KV bucket (see the module doc)."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        bucket: str,
        group: str,
        partitions: int,
        ttl: float,
        on_lost: Callable[[frozenset[int]], None] | None = None,
        on_change: Callable[[frozenset[int]], None] | None = None,
    ) -> None:
        """``on_lost``: told the partitions no longer held (handed back or lost); ``on_change``: told
        the partitions held after every change (claims and losses)."""
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self._js = js
        self._bucket = bucket
        self.group = group
        self.partitions = partitions
        self.ttl = ttl
        self.owner = secrets.token_hex(6)
        self._on_lost = on_lost
        self._on_change = on_change
        self._kv: KeyValue | None = None
        self._revs: dict[int, int] = {}  # held partition -> revision of our lease
        self._held: frozenset[int] = frozenset()
        self._task: asyncio.Task[None] | None = None

    @property
    def held(self) -> frozenset[int]:
        return self._held

    def owns(self, workflow_id: str) -> bool:
        """Whether this process holds the workflow's partition now."""
        return partition_of(workflow_id, self.partitions) in self._held

    def _key(self, p: int) -> str:
        return f"{self.group}.p{p}"

    async def start(self) -> None:
        """Open the bucket, take a first share, and keep the leases from then on."""
        try:
            self._kv = await self._js.create_key_value(bucket=self._bucket, history=1, ttl=self.ttl)
        except BadRequestError:  # exists with another TTL (another setting): use it, and renew at its pace
            self._kv = await self._js.key_value(self._bucket)
            info = await self._js.stream_info(f"KV_{self._bucket}")
            ttl = info.config.max_age or self.ttl
            log.warning("lease bucket %s has a TTL of %.1f s (not %.1f s); using it", self._bucket, ttl, self.ttl)
            self.ttl = ttl
        await self.tick()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop renewing and hand every lease back (another process claims them at its next tick)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._kv is None:
            return
        with contextlib.suppress(Exception):
            for p, rev in list(self._revs.items()):
                await self._kv.delete(self._key(p), last=rev)
            await self._kv.delete(f"{self.group}.m.{self.owner}")
        self._revs.clear()
        self._set_held()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.ttl / 3
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.tick()
                late = loop.time() - due
                if late > self.ttl / 3:
                    log.warning(
                        "partition leases of %s renewed %.1f s late (TTL %.1f s): the event loop is held "
                        "(a tool using the CPU in it?); raise the lease TTL or run such tools in a thread",
                        self.group,
                        late,
                        self.ttl,
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an outage: keep what we hold until it expires; try again next tick
                log.warning("partition leases of %s: %r", self.group, exc)

    async def _members_and_taken(self) -> tuple[int, frozenset[int]]:
        assert self._kv is not None
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            keys = []
        members, taken = 0, set()
        mine = f"{self.group}.p"
        for k in keys:
            if k.startswith(f"{self.group}.m."):
                members += 1
            elif k.startswith(mine) and k[len(mine) :].isdigit():
                p = int(k[len(mine) :])
                if p not in self._revs:
                    taken.add(p)
        return members, frozenset(taken)

    async def tick(self) -> None:
        """Renew, then claim or hand back towards the even share.

        The renewals go out together (one round trip), first: a process whose loop is busy (tools
        that use its CPU) still renews well within the TTL."""
        kv = self._kv
        assert kv is not None
        held = list(self._revs.items())
        renewed = await asyncio.gather(
            kv.put(f"{self.group}.m.{self.owner}", self.owner.encode()),
            *(kv.update(self._key(p), self.owner.encode(), last=rev) for p, rev in held),
            return_exceptions=True,
        )
        failed: BaseException | None = renewed[0] if isinstance(renewed[0], BaseException) else None
        for (p, _), rev in zip(held, renewed[1:], strict=True):
            if isinstance(rev, int):
                self._revs[p] = rev
            elif isinstance(rev, KeyWrongLastSequenceError):
                await self._lost_or_ours(p)
            else:  # an outage: keep the lease until it expires (a late reply may have renewed it: see above)
                failed = failed or rev
        if failed is not None:
            raise failed
        members, taken = await self._members_and_taken()
        plan = rebalance(self.partitions, frozenset(self._revs), taken, max(1, members))
        for p in plan.release:
            rev = self._revs.pop(p)
            with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError):
                await kv.delete(self._key(p), last=rev)
        claimed = await asyncio.gather(
            *(kv.create(self._key(p), self.owner.encode()) for p in plan.claim), return_exceptions=True
        )
        for p, rev in zip(plan.claim, claimed, strict=True):
            if isinstance(rev, int):
                self._revs[p] = rev
            elif not isinstance(rev, (KeyWrongLastSequenceError, nats.errors.TimeoutError)):  # else: claimed elsewhere
                raise rev
        self._set_held()

    async def _lost_or_ours(self, p: int) -> None:
        """A renewal was refused: the lease expired and another holds it, or a renewal whose reply
        was lost did go through (then the lease is still ours, at its newer revision)."""
        assert self._kv is not None
        try:
            entry = await self._kv.get(self._key(p))
        except (KeyNotFoundError, nats.js.errors.KeyDeletedError):
            entry = None
        if entry is not None and entry.value == self.owner.encode() and entry.revision is not None:
            self._revs[p] = entry.revision
            return
        log.warning("partition %d of %s was lost (its lease expired)", p, self.group)
        del self._revs[p]

    def _set_held(self) -> None:
        held = frozenset(self._revs)
        if held != self._held:
            lost = self._held - held
            log.info("%s holds partitions %s of %d", self.group, sorted(held), self.partitions)
            self._held = held
            if lost and self._on_lost is not None:
                self._on_lost(lost)
            if self._on_change is not None:
                self._on_change(held)
