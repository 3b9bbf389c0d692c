"""Request scheduling for the server: one thread that owns the model and batches concurrent requests."""

from kexaone.engine.batching.scheduler import QueueFullError, Request, Scheduler, SchedulerStopped

__all__ = ["QueueFullError", "Request", "Scheduler", "SchedulerStopped"]
