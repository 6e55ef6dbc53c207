"""Releasing the resources of Ray Train runs whose Tune trial was stopped mid-fit.

When ASHA stops a trial, Tune ends the trial's actor, and with it the ``TorchTrainer`` controller
it owns. The worker group's placement group, though, belongs to the job, not to the controller:
Ray Train V2 relies on a detached ``PlacementGroupCleaner`` actor to remove it. That cleaner asks
the State API whether the controller is alive, and on a machine running several Ray instances the
State API cannot tell which one to ask ("Found multiple active Ray instances"), so the placement
group is never removed and the next trial waits forever for its CPUs (measured on the 2-core dev
machine). :func:`release_orphaned_worker_groups` does the cleaner's job from the sweep's driver,
which is connected to the right cluster: it removes the placement groups of this job whose creator
was a ``TrainController`` actor that is now dead. Live trials' groups (their controller is alive)
and anything of other jobs are never touched.
"""

from __future__ import annotations

from typing import Callable, Optional

#: Ray Train V2's controller actor class (the creator of every worker-group placement group).
CONTROLLER_CLASS = "TrainController"


def release_orphaned_worker_groups(log: Optional[Callable[[str], None]] = None) -> list[str]:
    """Remove this job's placement groups created by a Ray Train controller that has died.

    Returns the hex ids of the removed groups. Uses Ray's GCS tables (``ray._private.state``):
    a private API, so any failure to read them is swallowed (returns ``[]``) rather than failing
    the sweep.
    """
    import ray

    if not ray.is_initialized():
        return []
    try:
        from ray._private.state import state
        from ray._common.utils import binary_to_hex, hex_to_binary
        from ray.core.generated import gcs_pb2
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        accessor = state._connect_and_get_accessor()
        job = ray.get_runtime_context().get_job_id()
        created = gcs_pb2.PlacementGroupTableData.CREATED
        removed = []
        for raw in accessor.get_placement_group_table():
            pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
            if pg.state != created or pg.is_detached or not pg.creator_actor_dead:
                continue
            if binary_to_hex(pg.creator_job_id) != job:
                continue
            creator = state.actor_table(binary_to_hex(pg.creator_actor_id))
            if creator.get("ActorClassName") != CONTROLLER_CLASS:
                continue
            pg_hex = binary_to_hex(pg.placement_group_id)
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(hex_to_binary(pg_hex))))
            removed.append(pg_hex)
            if log:
                log(f"[sweep] released the worker placement group {pg_hex[:12]} of a stopped trial's Ray Train run")
        return removed
    except Exception as exc:  # private API: never let the housekeeping fail the sweep
        global _warned
        if log and not _warned:
            _warned = True
            log(f"[sweep] cannot check for orphaned placement groups ({type(exc).__name__}: {exc}); "
                "a trial stopped early may hold its CPUs until Ray Train's own cleaner releases them")
        return []


_warned = False
