"""A run asked to stop: kept free of heavy imports so that the command line can catch it cheaply."""

STOP_FILE_ENV = "SSOD_STOP_FILE"


class Preempted(RuntimeError):
    """The run was asked to stop (SIGUSR1 / SIGTERM, or the file named by ``$SSOD_STOP_FILE`` exists):
    it wrote a checkpoint at the current iteration and stopped; ``resume=True`` continues it."""
