"""Mechanism behind the nox sessions: backend declarations, Docker helpers."""
