"""The local dev stack: one Ray head and one S3 endpoint on 127.0.0.1, started and stopped safely.

- :mod:`.ray_head`: ``make ray-up`` / ``ray-down`` / ``ray-status`` (a Ray head for ``ray job
  submit``; its env file names the store jobs use).
- :mod:`.s3_server`: ``make s3-up`` / ``s3-down`` / ``s3-status`` (moto's S3 server and a bucket).
- :mod:`.procs`: what both share (settings, ports, state and env files, HTTP).

The ``infra/local/*.sh`` wrappers run them as ``python -m cl_platform.devstack.<module> up|down|...``
with the project's venv. Standard library only, plus :mod:`cl_platform.store` where a store URL is
resolved; nothing else of the platform (no Ray, no moto import), so they start fast.
"""
