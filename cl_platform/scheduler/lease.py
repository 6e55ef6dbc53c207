"""The lineage lease: only one scheduler acts on a lineage at a time.

Layout: ``<store>/lineages/<name>/lease/<generation>.json`` (generation zero-padded to a
width of 12). The holder of the highest generation holds the lease while its ``expires_at`` is in the
future and it has not released it. Every object is created with a conditional write
(:meth:`Store.write_bytes_if_absent`: ``If-None-Match: *`` on S3, a hard link on file://), so
when a lease expires and several schedulers try to take it over, exactly one creates the next
generation. Only a generation's holder ever rewrites it (to renew or release).

The generation is the fencing token of the lineage state. A takeover is two steps, in this order:

1. :meth:`StateStore.take_over` raises the state's ``lease_generation`` to the new generation
   (the current one + 1) with a conditional write; a contender for the same generation that finds
   it raised already goes on to step 2. From that write on, any state write of the previous holder
   fails: its conditional write names a version that no longer exists, or, if it read the state
   after the takeover, the state names a newer generation
   (:class:`~cl_platform.scheduler.state.StaleWriteError`).
2. the lease record of that generation is created with a conditional create: of the contenders,
   exactly one succeeds (also when the scheduler that raised the generation died before creating
   the record).

So a holder that was paused past its expiry cannot change the state once a successor exists,
however late its write arrives, without relying on clocks. Renewing every ``ttl / 3`` and stopping
when a renewal finds a higher generation or comes too late (:class:`LeaseLost`) is what keeps a
healthy holder from being fenced out by mistake; scheduler clocks must agree to within a small
fraction of the TTL (NTP) for that, not for safety. :meth:`Lease.check` runs before state writes
and supplies the writer's generation.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from cl_platform.scheduler.config import lineage_dir
from cl_platform.scheduler.state import StateStore
from cl_platform.store import Store

#: Default lease time-to-live in seconds.
DEFAULT_TTL = 60.0


class LeaseLost(RuntimeError):
    """This scheduler no longer holds the lease (taken over, or not renewed in time)."""


def new_holder_id() -> str:
    """A unique id of this scheduler instance: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class LeaseRecord:
    """One lease generation.

    Attributes:
        generation: increases by one at every takeover.
        holder: the holder's id (:func:`new_holder_id`).
        host: the holder's host name.
        pid: the holder's process id.
        acquired_at: when this generation was created (epoch seconds, holder's clock).
        renewed_at: last renewal.
        expires_at: the lease is free after this time unless renewed.
        released: the holder gave it back (free at once).
    """

    generation: int
    holder: str
    host: str
    pid: int
    acquired_at: float
    renewed_at: float
    expires_at: float
    released: bool = False

    def free(self, now: float) -> bool:
        """True when another scheduler may take over."""
        return self.released or now >= self.expires_at

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode()


class Lease:
    """One scheduler's handle on a lineage's lease.

    Args:
        store: the store.
        lineage: the lineage name.
        holder: this scheduler's id.
        ttl: seconds a lease lasts without renewal.
        clock: time source (tests move it forward).
    """

    def __init__(self, store: Store, lineage: str, holder: Optional[str] = None, *, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.time) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be > 0 seconds, got {ttl!r}")
        self.store = store
        self.lineage = lineage
        self.holder = holder or new_holder_id()
        self.ttl = float(ttl)
        self.clock = clock
        self.prefix = f"{lineage_dir(lineage)}/lease"
        self.generation: Optional[int] = None  # the generation this instance holds

    # ------------------------------------------------------------------ reading
    def _path(self, gen: int) -> str:
        return f"{self.prefix}/{gen:012d}.json"

    def _generations(self) -> list[int]:
        out = []
        for name in self.store.list(self.prefix):
            stem = name[:-5] if name.endswith(".json") else ""
            if stem.isdigit():
                out.append(int(stem))
        return sorted(out)

    def _read(self, gen: int) -> Optional[LeaseRecord]:
        try:
            return LeaseRecord(**self.store.read_json(self._path(gen)))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):  # unreadable: treat it as expired (it cannot be renewed either)
            return LeaseRecord(generation=gen, holder="?", host="?", pid=0, acquired_at=0, renewed_at=0, expires_at=0)

    def current(self) -> Optional[LeaseRecord]:
        """The highest generation's record, or ``None`` when the lineage never had a lease."""
        for gen in reversed(self._generations()):
            rec = self._read(gen)
            if rec is not None:
                return rec
        return None

    @property
    def held(self) -> bool:
        """True when this instance believes it holds the lease (see :meth:`check`)."""
        return self.generation is not None

    # ------------------------------------------------------------------ changes
    def try_acquire(self) -> bool:
        """Take the lease if it is free (or already ours); True when this instance holds it after the call.

        A takeover first fences the lineage state for the new generation, then creates the lease
        record (module docstring). A generation of ours that the state has since been fenced
        against (a contender fenced it and then stopped) is not kept: it is lost, and taken over
        again once it expires.
        """
        now = self.clock()
        cur = self.current()
        states = StateStore(self.store, self.lineage)
        if cur is not None and cur.holder == self.holder and not cur.released:
            if states.load().lease_generation > cur.generation:
                self.generation = None
                return False
            self.generation = cur.generation
            self.renew()
            return True
        if cur is not None and not cur.free(now):
            return False
        gen = 1 if cur is None else cur.generation + 1
        if not states.take_over(self.holder, gen):
            return False  # a newer generation fenced the state
        rec = LeaseRecord(generation=gen, holder=self.holder, host=socket.gethostname(), pid=os.getpid(),
                          acquired_at=now, renewed_at=now, expires_at=now + self.ttl)
        if not self.store.write_bytes_if_absent(self._path(gen), rec.to_bytes()):
            return False  # another scheduler took this generation first
        self.generation = gen
        for old in self._generations():  # tidy: keep the previous generation for the record
            if old < gen - 1:
                self.store.delete(self._path(old), missing_ok=True)
        return True

    def check(self) -> LeaseRecord:
        """Raise :class:`LeaseLost` unless this instance holds the highest, unexpired generation."""
        if self.generation is None:
            raise LeaseLost(f"lineage {self.lineage!r}: scheduler {self.holder} does not hold the lease")
        cur = self.current()
        now = self.clock()
        if cur is None or cur.generation != self.generation or cur.holder != self.holder or cur.released:
            who = f"{cur.holder} (generation {cur.generation})" if cur else "nobody"
            self.generation = None
            raise LeaseLost(f"lineage {self.lineage!r}: the lease is now held by {who}, not {self.holder}")
        if now >= cur.expires_at:  # late, but nobody took over: renewing keeps it (or finds the takeover)
            return self.renew()
        return cur

    def renew(self) -> LeaseRecord:
        """Extend the lease by ``ttl``; :class:`LeaseLost` if another scheduler took it over."""
        if self.generation is None:
            raise LeaseLost(f"lineage {self.lineage!r}: scheduler {self.holder} does not hold the lease")
        cur = self.current()
        if cur is None or cur.generation != self.generation or cur.holder != self.holder or cur.released:
            who = f"{cur.holder} (generation {cur.generation})" if cur else "nobody"
            self.generation = None
            raise LeaseLost(f"lineage {self.lineage!r}: the lease was taken over by {who}")
        now = self.clock()
        cur.renewed_at, cur.expires_at = now, now + self.ttl
        self.store.write_bytes(self._path(cur.generation), cur.to_bytes())
        # a takeover could have raced the renewal (our lease had expired): the higher generation wins
        if self._generations()[-1] != cur.generation:
            self.generation = None
            raise LeaseLost(f"lineage {self.lineage!r}: the lease was taken over while {self.holder} renewed it")
        return cur

    def release(self) -> bool:
        """Give the lease back so another scheduler can take over at once; True if it was held."""
        if self.generation is None:
            return False
        try:
            cur = self.check()
        except LeaseLost:
            return False
        cur.released = True
        cur.expires_at = self.clock()
        self.store.write_bytes(self._path(cur.generation), cur.to_bytes())
        self.generation = None
        return True


class LeaseKeeper:
    """A daemon thread renewing a held lease every ``ttl / 3`` seconds.

    :attr:`lost` is set (with :attr:`error`) when a renewal fails; the scheduler checks it and
    stops acting. A transient store error is retried at the next interval; the lease is
    considered lost once it would have expired.
    """

    def __init__(self, lease: Lease, *, interval: Optional[float] = None) -> None:
        self.lease = lease
        self.interval = interval if interval is not None else lease.ttl / 3
        self.lost = threading.Event()
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{lease.lineage}", daemon=True)
        self._last_ok = lease.clock()

    def start(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.lease.renew()
                self._last_ok = self.lease.clock()
            except LeaseLost as exc:
                self.error = exc
                self.lost.set()
                return
            except Exception as exc:  # store hiccup: retry until the lease would have expired
                if self.lease.clock() - self._last_ok >= self.lease.ttl:
                    self.error = exc
                    self.lost.set()
                    return


__all__ = ["DEFAULT_TTL", "Lease", "LeaseKeeper", "LeaseLost", "LeaseRecord", "new_holder_id"]
