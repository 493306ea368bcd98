"""Is a dependency lockfile fully pinned? (the E_UNPINNED_DEPS rule)

A workload's image is content-addressed by its IR hash, and the IR names the
lockfile, not its packages: if the lockfile let a resolver pick versions or
accept unverified archives, two builds of the same IR could differ. So every
third-party package must carry an exact version *and* an integrity hash (or an
exact git commit). Packages that are the project itself (uv's virtual/editable
root, npm workspace links, yarn ``linkType: soft``) carry neither and are fine.

Each checker returns the first problem as one line, or None when pinned. The
YAML-ish formats (pnpm, yarn) are read line by line: we need only the package
entries and their integrity lines, and the stdlib has no YAML parser.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HASH = re.compile(r"--hash[= ](sha256|sha384|sha512):[0-9a-fA-F]{64,128}")
_PINNED_REQ = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._ -]*\])?\s*===?\s*[^\s;,*]+")
_GIT_COMMIT = re.compile(r"[#@][0-9a-f]{40}\b")

# tool -> acceptable lockfile basenames (None: any name with that suffix)
LOCKFILE_NAMES: dict[str, tuple[str, ...]] = {
    "uv": ("uv.lock",),
    "pip-tools": (".txt",),
    "pnpm": ("pnpm-lock.yaml",),
    "npm": ("package-lock.json", "npm-shrinkwrap.json"),
    "yarn": ("yarn.lock",),
}


def name_problem(lockfile: str, tool: str) -> str | None:
    """Why this file name cannot be ``tool``'s lockfile, or None."""
    names = LOCKFILE_NAMES.get(tool, ())
    base = lockfile.rsplit("/", 1)[-1]
    ok = any(base.endswith(n) if n.startswith(".") else base == n for n in names)
    if ok:
        return None
    wanted = " or ".join(f"*{n}" if n.startswith(".") else n for n in names)
    return f"{base!r} is not a {tool} lockfile (expected {wanted})"


def content_problem(path: Path, tool: str) -> str | None:
    """Why the lockfile at ``path`` does not pin every package, or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"lockfile {path.name} not found"
    except (OSError, UnicodeDecodeError) as exc:
        return f"lockfile {path.name} is unreadable: {exc}"
    checker = _CHECKERS.get(tool)
    if checker is None:
        return f"no lockfile checker for tool {tool!r}"
    return checker(text)


def check_uv_lock(text: str) -> str | None:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return f"uv.lock is not valid TOML: {exc}"
    if "version" not in doc:
        return "uv.lock has no lockfile 'version'"
    packages = doc.get("package", [])
    if not isinstance(packages, list):
        return "uv.lock 'package' must be an array of tables"
    for pkg in packages:
        if not isinstance(pkg, dict):
            return "uv.lock package entry is not a table"
        problem = _uv_package_problem(pkg)
        if problem:
            return f"package {pkg.get('name', '?')!r}: {problem}"
    return None


def _uv_package_problem(pkg: dict[str, Any]) -> str | None:
    source = pkg.get("source", {})
    if not isinstance(source, dict):
        return "source must be a table"
    if source.keys() & {"virtual", "editable", "directory", "path"}:
        return None  # the project itself or a local path that is part of the source tree
    if "git" in source:
        return None if _GIT_COMMIT.search(str(source["git"])) else "git source without a commit"
    if not isinstance(pkg.get("version"), str):
        return "no exact version"
    artifacts: list[Any] = []
    if "sdist" in pkg:
        artifacts.append(pkg["sdist"])
    wheels = pkg.get("wheels", [])
    artifacts.extend(wheels if isinstance(wheels, list) else [wheels])
    if not artifacts:
        return "no sdist or wheels with hashes"
    for art in artifacts:
        digest = art.get("hash") if isinstance(art, dict) else None
        if not isinstance(digest, str) or not re.fullmatch(r"sha(256|384|512):[0-9a-f]+", digest):
            return "artifact without a sha256 hash"
    return None


def check_requirements_txt(text: str) -> str | None:
    """pip-tools output compiled with ``--generate-hashes``."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    if current.strip():
        logical.append(current.strip())
    for line in logical:
        if line.startswith(("-e", "--editable", "-r", "--requirement", "-c", "--constraint")):
            return f"{line.split()[0]} entries cannot be verified: {line[:60]!r}"
        if line.startswith("-"):
            continue  # index options (--index-url, --find-links, ...)
        if not _PINNED_REQ.match(line):
            return f"requirement not pinned with ==: {line.split()[0]!r}"
        if not _HASH.search(line):
            return f"requirement without --hash: {line.split()[0]!r}"
    return None


def check_package_lock(text: str) -> str | None:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg}"
    if not isinstance(doc, dict):
        return "lockfile must be a JSON object"
    packages = doc.get("packages")
    if isinstance(packages, dict):
        for key, pkg in packages.items():
            if key == "" or not isinstance(pkg, dict):
                continue
            if pkg.get("link") or pkg.get("inBundle") or pkg.get("bundled"):
                continue
            if not pkg.get("version") or not pkg.get("integrity"):
                return f"package {key!r} has no version/integrity"
        return None
    deps = doc.get("dependencies")
    if isinstance(deps, dict):  # lockfileVersion 1
        return _npm_v1_problem(deps)
    return "no 'packages' (lockfileVersion >= 2) or 'dependencies' section"


def _npm_v1_problem(deps: dict[str, Any]) -> str | None:
    for name, dep in deps.items():
        if not isinstance(dep, dict):
            return f"package {name!r} is malformed"
        if not dep.get("bundled") and (not dep.get("version") or not dep.get("integrity")):
            return f"package {name!r} has no version/integrity"
        nested = dep.get("dependencies")
        if isinstance(nested, dict):
            problem = _npm_v1_problem(nested)
            if problem:
                return problem
    return None


def check_pnpm_lock(text: str) -> str | None:
    in_packages = False
    entry: str | None = None
    pinned = True
    for raw in [*text.splitlines(), "__end__:"]:
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        if indent == 0:
            if entry is not None and not pinned:
                return f"package {entry!r} has no integrity"
            entry = None
            in_packages = raw.rstrip() == "packages:"
            continue
        if not in_packages:
            continue
        if (indent == 2 and raw.rstrip().endswith(":")) or (indent == 2 and ": {" in raw):
            if entry is not None and not pinned:
                return f"package {entry!r} has no integrity"
            entry = raw.strip().split(":")[0].strip("'\"")
            pinned = "integrity:" in raw or "commit:" in raw
        elif entry is not None and raw.strip().startswith("resolution:"):
            pinned = "integrity:" in raw or bool(re.search(r"commit: ?[0-9a-f]{40}", raw))
    if "lockfileVersion" not in text:
        return "not a pnpm lockfile (no lockfileVersion)"
    return None


def check_yarn_lock(text: str) -> str | None:
    entry: str | None = None
    body: list[str] = []
    for raw in [*text.splitlines(), "__end__:"]:
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if not raw[0].isspace():
            if entry is not None and entry != "__metadata":
                problem = _yarn_entry_problem(body)
                if problem:
                    return f"package {entry!r}: {problem}"
            entry = raw.rstrip().rstrip(":").strip('"').split(",")[0].strip('"')
            body = []
        else:
            body.append(raw.strip())
    return None


def _yarn_entry_problem(body: list[str]) -> str | None:
    joined = "\n".join(body)
    if re.search(r"^linkType: soft", joined, re.M):
        return None  # workspace / link / portal: part of the source tree
    if not re.search(r'^version:? "?[^\s"]+', joined, re.M):
        return "no exact version"
    if re.search(r"^(integrity|checksum):? \S+", joined, re.M):
        return None
    return "no integrity/checksum"


_CHECKERS: dict[str, Callable[[str], str | None]] = {
    "uv": check_uv_lock,
    "pip-tools": check_requirements_txt,
    "npm": check_package_lock,
    "pnpm": check_pnpm_lock,
    "yarn": check_yarn_lock,
}
