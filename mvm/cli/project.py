"""Which project a command means: moved to mvm.engine.builders.project (``Engine.build``
resolves projects too); the CLI's modules keep importing the names from here."""

from __future__ import annotations

from mvm.engine.builders.project import Project, check_profile, find_target, flake_dir, parse_attr

__all__ = ["Project", "check_profile", "find_target", "flake_dir", "parse_attr"]
