"""``mvmctl validate`` on a project: mvm.toml's every key, then the flake evaluated.

Like ``nix flake check --no-build`` with mvm.toml checks layered on (the seed): the
flake is evaluated offline (its ``mvm`` input is the installed library, its ``nixpkgs``
the offline package set the builder VM builds with) and its
``packages.<system>.<profile>`` must be an mkGuest image. Every problem is one coded
line on stderr; any problem means exit 1.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mvm.engine.base.errors import ConfigError, MvmError
from mvm.engine.request.mvmtoml import check_mvm_toml


def is_project_ref(path: Path | None) -> bool:
    if path is None:
        return True
    return path.is_dir() or path.name in ("mvm.toml", "flake.nix") or path.suffix == ".toml"


async def validate_project(path: Path | None) -> int:
    from mvm.engine.builders.offline import flake_info, host_system

    target = path or Path.cwd()
    folder = target.parent if target.is_file() or target.suffix in (".toml", ".nix") else target
    toml_path = target if target.suffix == ".toml" else folder / "mvm.toml"
    problems: list[MvmError] = []
    flake_dir, profile, summary = folder, "default", "no mvm.toml"
    if toml_path.is_file() or target.suffix == ".toml":
        config, toml_problems = check_mvm_toml(toml_path)
        problems += toml_problems
        if config is not None:
            summary = str(config)
            flake_dir, profile = (toml_path.parent / config.flake).resolve(), config.profile
            if config.flake.startswith("path:"):
                flake_dir = Path(config.flake[len("path:") :]).resolve()
    checked = f"{flake_dir}#packages.{host_system()}.{profile}"
    if not (flake_dir / "flake.nix").is_file():
        if not toml_path.is_file():
            problems.append(
                ConfigError(f"{folder} has no mvm.toml and no flake.nix", code="E_BUILD_SOURCE")
            )
        elif not any(p.code == "E_TOML_PATH" for p in problems):
            problems.append(ConfigError(f"{flake_dir} has no flake.nix", code="E_TOML_PATH"))
    else:
        try:
            with _package_set() as offline_set:
                info = await flake_info(flake_dir, profile, offline_set=offline_set)
            if info.get("system") != host_system():
                problems.append(
                    ConfigError(
                        f"{flake_dir}: packages.{info.get('system')}.{profile} is not for this "
                        f"host ({host_system()})",
                        code="E_FLAKE_SYSTEM",
                    )
                )
        except MvmError as exc:
            problems.append(exc)
    for problem in problems:
        for line in _lines(problem):
            print(line, file=sys.stderr)
    if problems:
        return 1
    print(f"ok: {toml_path if toml_path.is_file() else folder} ({summary}; {checked} evaluates)")
    return 0


@contextlib.contextmanager
def _package_set() -> Iterator[Path | None]:
    """The offline package set a build in the builder VM gets, made from this machine's
    Debian packages, so ``validate`` accepts what ``build`` builds (``pkgs.python3``);
    without those packages installed, the placeholder set (every name refused)."""
    from mvm.engine.builders import offline_pkgs

    try:
        manifest = offline_pkgs.package_manifest()
    except MvmError:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="mvm-validate-") as tmp:
        yield offline_pkgs.write_offline_nixpkgs(Path(tmp) / "nixpkgs", manifest)


def _lines(problem: MvmError) -> list[str]:
    """One coded line per problem; an evaluation error listing several is split."""
    parts = [p.strip() for p in problem.message.split("\n") if p.strip()]
    if len(parts) <= 1:
        return [problem.one_line()]
    return [ConfigError(part, code=problem.code).one_line() for part in parts]
