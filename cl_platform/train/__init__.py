"""Training: the Ray Train loop of a sequence (driver and worker), checkpoints, ledger, resources.

The KD loss and the teacher cache a method needs live with the methods
(:mod:`cl_platform.methods.kd`, :mod:`cl_platform.methods.teacher_cache`).
"""
