"""Command-line parsing that ends in one line: a user's mistake is a UserError, not a usage dump."""

from __future__ import annotations

import argparse

from .errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is a UserError (one line, no usage, no SystemExit)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")
