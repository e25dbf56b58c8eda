"""The worker role.

    worker.py     `Worker`: its lifecycle, the fetch loop and the consumers
    lifecycle.py  the one state of a worker (`Phase`) and the loop helpers its loops share
    inflight.py   what a worker holds: slots, the ready buffer, running jobs, interruptions
    attempt.py    one attempt of one job -> an `Outcome`
    recorder.py   recording outcomes in batches, kept through Redis outages
    lease.py      the heartbeat thread, the lease watch, the hand-back and the reaper
    upkeep.py     promoters, timeout and cancel watchdogs, and the scheduler of periodic jobs
"""

from .worker import Worker

__all__ = ["Worker"]
