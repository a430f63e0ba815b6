"""How a run ends early: asked to stop, or diverged. Kept free of heavy imports so that the command line
can catch both cheaply."""

STOP_FILE_ENV = "SSOD_STOP_FILE"


class Preempted(RuntimeError):
    """The run was asked to stop (SIGUSR1 / SIGTERM, or the file named by ``$SSOD_STOP_FILE`` exists):
    it wrote a checkpoint at the current iteration and stopped; ``resume=True`` continues it."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite (under fp16: in more than ``MAX_SKIPPED_STEPS`` steps in a row);
    the last good checkpoint, if any, is kept."""
