"""Helpers shared by unit and integration tests (not fakes: real components)."""
