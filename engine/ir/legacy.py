"""Reading IR emitted by the original product's Python SDK (PyPI ``mvm`` 0.15.1).

That SDK writes the same schema_version "0.1" and the same ``"kind"``-tagged unions,
but a few fields of its own: ``resources {cpu_cores, memory_mb, rootfs_size_mb}``,
``hooks`` on an app, ``env`` on a function entrypoint, and ``null`` for every unset
option (``network``, ``args_schema``, ``concurrency``...). :func:`translate` maps such
a document field by field onto our model and says, one warning per field, what has
no effect here (a function entrypoint's ``env`` is merged into its app's when the app
has one entrypoint: that is the wrapper process's environment here), and
:func:`problems` what cannot work at all. A document is recognised by those fields;
ours never carries them.
"""

from __future__ import annotations

import copy
from typing import Any

from mvm.engine.base.errors import IrError

EMIT_MODULE = "__mvm_entry__"  # what `python -m mvm entry.py` names the entry while emitting

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
    for i, volume in enumerate(doc.get("volumes") or []):
        if isinstance(volume, dict) and "persist" in volume:  # ours have no such switch
            _no_effect(
                warnings, f"$.volumes[{i}].persist", volume.pop("persist"), "no persistence switch"
            )
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
        _literal_env(env, f"{at}.env", warnings)
    if app.get("addons"):  # the original's are AddonUse objects; ours are names
        _no_effect(warnings, f"{at}.addons", app.pop("addons"), "addon VMs are not started")
    for key in ("addons", "threat_tier"):
        if key in app and not app[key]:
            del app[key]
    deps = app.get("dependencies")
    if isinstance(deps, dict) and deps.get("kind") == "python" and deps.get("tool") == "pip_tools":
        deps["tool"] = "pip-tools"  # the original's enum spelling of the same tool
    eps = app.get("entrypoints") or []
    for j, ep in enumerate(eps):
        if isinstance(ep, dict):
            _entrypoint(ep, f"{at}.entrypoints[{j}]", warnings)
    _function_env(app, eps, at, warnings)
    fns = [ep for ep in eps if isinstance(ep, dict) and ep.get("kind") == "function"]
    if fns and not any(ep.get("primary") is True for ep in fns):
        # The original's app() dispatches to the first function when none is marked
        # (single-entrypoint apps need not say primary=True); our builders want it said.
        fns[0]["primary"] = True


def _literal_env(env: dict[str, Any], at: str, warnings: list[str]) -> None:
    """The original's ``{"kind": "literal", "value": v}`` values become plain strings;
    secret refs have nowhere to come from here, so they go (with a warning)."""
    for name, value in list(env.items()):
        if isinstance(value, dict) and value.get("kind") == "literal":
            env[name] = value.get("value")
        elif isinstance(value, dict):
            _no_effect(warnings, f"{at}.{name}", env.pop(name), "secret refs")


def _function_env(app: dict[str, Any], eps: list[Any], at: str, warnings: list[str]) -> None:
    """A function entrypoint's env is the wrapper process's env, which is the app's env
    here: with one entrypoint it is merged into the app's (the entrypoint's value wins);
    with several, one process serves them all, so per-function values have no effect."""
    for j, ep in enumerate(eps):
        if not (isinstance(ep, dict) and ep.get("kind") == "function" and "env" in ep):
            continue
        env = ep.pop("env")
        if not env:
            continue
        path = f"{at}.entrypoints[{j}].env"
        if len(eps) != 1 or not isinstance(env, dict):
            _no_effect(warnings, path, env, "one wrapper process serves all of an app's functions")
            continue
        _literal_env(env, path, warnings)
        own = app.get("env")
        app["env"] = {**(own if isinstance(own, dict) else {}), **env}


# The original's ADR-0011 block ({"kind": "warm_process", ...}): its presence selects the
# longrunning wrapper here too (the block goes verbatim into runtime.json), but the pool
# is sized per call (`mvmctl invoke --warm N`) and workers are not recycled or capped.
_CONCURRENCY_NO_EFFECT = {
    "pool_size": "the warm pool is sized by `mvmctl invoke --warm N`",
    "max_calls_per_worker": "warm workers are not recycled",
    "max_rss_mb": "warm workers' memory is not capped",
    "max_queue_depth": "calls are not queued",
    "in_process": "a warm worker serves one call at a time",  # i.e. "serial" is what runs
}


def _entrypoint(ep: dict[str, Any], at: str, warnings: list[str]) -> None:
    for key in ("args_schema", "return_schema", "concurrency"):
        if key in ep and ep[key] is None:
            del ep[key]
    if ep.get("kind") == "command" and isinstance(ep.get("env"), dict):
        _literal_env(ep["env"], f"{at}.env", warnings)
    if ep.get("kind") != "function":
        return
    if ep.get("primary") is None:
        ep.pop("primary", None)
    if "extra_imports" in ep:
        extra = ep.pop("extra_imports")
        if extra:
            why = "the whole source tree is copied; imports are not traced"
            _no_effect(warnings, f"{at}.extra_imports", extra, why)
    block = ep.get("concurrency")
    if isinstance(block, dict) and block.get("kind") == "warm_process":
        for key, why in _CONCURRENCY_NO_EFFECT.items():
            if block.get(key) is not None and (key, block[key]) != ("in_process", "serial"):
                _no_effect(warnings, f"{at}.concurrency.{key}", block[key], why)


def problems(doc: dict[str, Any]) -> list[IrError]:
    """What in a translated original document cannot work here, one error each.

    ``@mvm.func`` without ``module=`` records ``fn.__module__``, which under the
    original's ``python -m mvm entry.py`` is ``"__mvm_entry__"``: no file in the
    source has that name, so every call would fail to import; refused up front."""
    errors: list[IrError] = []
    for i, app in enumerate(doc.get("apps") or []):
        eps = app.get("entrypoints") if isinstance(app, dict) else None
        for j, ep in enumerate(eps if isinstance(eps, list) else []):
            if isinstance(ep, dict) and ep.get("module") == EMIT_MODULE:
                errors.append(
                    IrError(
                        f"$.apps[{i}].entrypoints[{j}].module",
                        f"{EMIT_MODULE!r} is the original SDK's name for the entry file while "
                        "emitting, not a module of the app's source",
                        code="E_IR_MODULE",
                        hint='pass module= (the file under the source dir, e.g. module="app")',
                    )
                )
    return errors
