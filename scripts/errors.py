"""Errors that end a session with one line and no traceback, and that one line."""


def first_line(error: BaseException | str) -> str:
    """An error as one line: the engine's explanation when there is one."""
    text = getattr(error, "explanation", None) or str(error) or type(error).__name__
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return " ".join(str(text).split())


class UserError(Exception):
    """Something the user can fix; the message says how."""


class DeclarationError(UserError):
    """A backend.toml is malformed."""


class EngineUnavailable(UserError):
    """The Docker engine cannot be reached."""


class StepFailed(UserError):
    """A build, check or command failed; details were already printed."""
