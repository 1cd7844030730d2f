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
