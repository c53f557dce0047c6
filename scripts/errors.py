"""Errors that end a session with one line and no traceback."""


class UserError(Exception):
    """Something the user can fix; the message says how."""


class DeclarationError(UserError):
    """A backend.toml is malformed."""


class EngineUnavailable(UserError):
    """The Docker engine cannot be reached."""


class StepFailed(UserError):
    """A build, check or command failed; details were already printed."""
