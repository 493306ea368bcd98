"""Reading IR emitted by the original product's Python SDK (PyPI ``mvm`` 0.15.1).

That SDK writes the same schema_version "0.1" and the same ``"kind"``-tagged unions,
but a few fields of its own: ``resources {cpu_cores, memory_mb, rootfs_size_mb}``,
``hooks`` on an app, ``env`` on a function entrypoint, and ``null`` for every unset
option (``network``, ``args_schema``, ``concurrency``...). :func:`translate` maps such
a document field by field onto our model and says, one warning per field, what has
no effect here. A document is recognised by those fields; ours never carries them.
"""

from __future__ import annotations

import copy
from typing import Any

# Fields only the original SDK writes (our schema refuses them as unknown).
_APP_ONLY = ("hooks",)
_RESOURCES_ONLY = ("cpu_cores", "rootfs_size_mb")


def is_original(data: object) -> bool:
    """True when ``data`` looks emitted by the original SDK (not hand-written for us)."""
    if not isinstance(data, dict) or not isinstance(data.get("apps"), list):
        return False
    for app in data["apps"]:
        if not isinstance(app, dict):
            continue
        res = app.get("resources")
        if any(k in app for k in _APP_ONLY):
            return True
        if isinstance(res, dict) and any(k in res for k in _RESOURCES_ONLY):
            return True
    return False


def translate(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(our document, warnings) for an original-SDK document; the input is not changed."""
    doc = copy.deepcopy(data)
    warnings: list[str] = []
    for i, app in enumerate(doc.get("apps", [])):
        if isinstance(app, dict):
            _app(app, f"$.apps[{i}]", warnings)
    return doc, warnings


def _no_effect(warnings: list[str], path: str, value: object, why: str) -> None:
    warnings.append(f"{path}: {value!r} has no effect here ({why})")


def _app(app: dict[str, Any], at: str, warnings: list[str]) -> None:
    if "hooks" in app:
        hooks = app.pop("hooks")
        if hooks:
            _no_effect(warnings, f"{at}.hooks", hooks, "build/start hooks are not run")
    res = app.get("resources")
    if isinstance(res, dict):
        if "cpu_cores" in res:
            res["vcpus"] = res.pop("cpu_cores")
        if "rootfs_size_mb" in res:
            _no_effect(
                warnings,
                f"{at}.resources.rootfs_size_mb",
                res.pop("rootfs_size_mb"),
                "the rootfs is sized to its contents",
            )
    for key, why in (("network", "egress policy is not enforced"),):
        if key in app and app[key] is None:
            del app[key]
        elif key in app:
            _no_effect(warnings, f"{at}.{key}", app.pop(key), why)
    if app.get("mounts"):
        _no_effect(warnings, f"{at}.mounts", app.pop("mounts"), "the original's mount shape")
    env = app.get("env")
    if isinstance(env, dict):
        for name, value in list(env.items()):
            if isinstance(value, dict) and value.get("kind") == "literal":
                env[name] = value.get("value")
            elif isinstance(value, dict):
                _no_effect(warnings, f"{at}.env.{name}", env.pop(name), "secret refs")
    for key in ("addons", "threat_tier"):
        if key in app and app[key] is None:
            del app[key]
    for j, ep in enumerate(app.get("entrypoints") or []):
        if isinstance(ep, dict):
            _entrypoint(ep, f"{at}.entrypoints[{j}]", warnings)


def _entrypoint(ep: dict[str, Any], at: str, warnings: list[str]) -> None:
    for key in ("args_schema", "return_schema", "concurrency"):
        if key in ep and ep[key] is None:
            del ep[key]
    if ep.get("kind") == "function" and "env" in ep:
        env = ep.pop("env")
        if env:
            _no_effect(warnings, f"{at}.env", env, "a function's environment is the app's env")
    if ep.get("kind") == "function" and ep.get("primary") is None:
        ep.pop("primary", None)
