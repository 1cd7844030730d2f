"""The errors a user can cause, in one place.

Every class derives from ValueError or TypeError too, so callers that catch the builtin
exceptions keep working; catching AITimeStepperError catches everything this package raises on
purpose.
"""


class AITimeStepperError(Exception):
    """Base of every error aitimestepper raises on purpose."""


class InputError(AITimeStepperError, ValueError):
    """An argument has the wrong shape, value, device or combination with the others."""


class InputTypeError(AITimeStepperError, TypeError):
    """An argument has the wrong type or dtype."""


class BackendUnavailableError(AITimeStepperError, RuntimeError):
    """The requested backend cannot run here (not built, no GPU, Triton missing)."""


class ConfigError(AITimeStepperError, ValueError):
    """A configuration file or command-line setting is unknown, mistyped or inconsistent."""


class CheckpointError(AITimeStepperError, ValueError):
    """A checkpoint is missing, unreadable, of another format version or of another system."""


class TrainingStopped(AITimeStepperError, RuntimeError):
    """Training stopped on purpose before its end (the retrain cap); a checkpoint was saved."""

    def __init__(self, message: str, checkpoint_path: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint_path = checkpoint_path


class TrainingInterrupted(TrainingStopped):
    """SIGINT or SIGTERM stopped training between epochs; a checkpoint was saved."""

    def __init__(self, message: str, checkpoint_path: str | None, signum: int) -> None:
        super().__init__(message, checkpoint_path)
        self.signum = signum
