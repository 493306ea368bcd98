"""Runtime environment variables: ``-e KEY=VAL`` / ``--env-file FILE`` (docker's syntax).

One parser serves ``run``/``up`` (the guest's services, entrypoint and exec see the
variables) and ``exec`` (that one process). Every bad line is reported, one coded
error each (``EnvError.all_errors``), not only the first. Keys are shell names;
``MVM_*`` is refused because the guest's /init reads those names to decide uids and
entrypoints, so a runtime variable must never change them.

The guest receives the variables as a kernel argument (``mvm.env=BASE64``): /init
decodes it into ``/run/mvm/env`` and loads it into the agent, every service and the
entrypoint. The kernel command line is small (2 KiB on x86), so the encoded form is
capped at ``MAX_KERNEL_ARG`` bytes; larger configuration belongs on a ``/mnt/config``
volume. The kernel prints its command line in the console log, so values are not
secret there either: secrets go on ``/mnt/secrets``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from mvm.engine.base.errors import ConfigError

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_KERNEL_ARG = 1536
Lookup = Callable[[str], str | None]


class EnvError(ConfigError):
    """One or more bad variables; ``all_errors`` holds one coded error per problem."""

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        first = problems[0]
        super().__init__(first.message, code=first.code, hint=first.hint)
        self.all_errors: tuple[ConfigError, ...] = tuple(problems)


def _check_key(key: str, where: str) -> ConfigError | None:
    if not _KEY.match(key):
        return ConfigError(
            f"{where}: {key!r} is not a variable name",
            code="E_ENV_SPEC",
            hint="write KEY=VALUE with KEY of letters, digits and _ (not starting with a digit)",
        )
    if key.startswith("MVM_"):
        return ConfigError(
            f"{where}: {key} is reserved (the guest's /init reads MVM_* itself)",
            code="E_ENV_RESERVED",
            hint="pick a name that does not start with MVM_",
        )
    return None


def _unquote(value: str, where: str) -> tuple[str | None, ConfigError | None]:
    """``"a \\"b\\""`` (with \\n, \\t, \\\\, \\" escapes), ``'literal'`` or a bare value."""
    if len(value) >= 1 and value[0] in "\"'":
        quote = value[0]
        if len(value) < 2 or value[-1] != quote:
            return None, ConfigError(
                f"{where}: unterminated {quote} quote",
                code="E_ENV_SPEC",
                hint=f"close the value with {quote}",
            )
        body = value[1:-1]
        if quote == "'":
            return body, None
        out, i = [], 0
        escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "$": "$"}
        while i < len(body):
            ch = body[i]
            if ch == "\\" and i + 1 < len(body) and body[i + 1] in escapes:
                out.append(escapes[body[i + 1]])
                i += 2
                continue
            out.append(ch)
            i += 1
        return "".join(out), None
    return value, None


def _assignment(
    text: str, where: str, lookup: Lookup, *, quoted: bool
) -> tuple[tuple[str, str] | None, ConfigError | None]:
    key, sep, value = text.partition("=")
    if quoted:
        key = key.strip()
        if key.startswith("export "):
            key = key[len("export ") :].strip()
    problem = _check_key(key, where)
    if problem is not None:
        return None, problem
    if not sep:  # docker: a bare KEY passes this host's value through
        host = lookup(key)
        if host is None:
            return None, ConfigError(
                f"{where}: {key} has no value and is not set here",
                code="E_ENV_SPEC",
                hint=f"write {key}=VALUE, or export {key} before running mvmctl",
            )
        value = host
    elif quoted:
        unquoted, problem = _unquote(value.strip(), where)
        if problem is not None or unquoted is None:
            return None, problem
        value = unquoted
    if "\0" in value:
        return None, ConfigError(f"{where}: {key}'s value holds a NUL byte", code="E_ENV_SPEC")
    return (key, value), None


def parse_env(
    assignments: Iterable[str] = (),
    files: Iterable[str | Path] = (),
    *,
    lookup: Lookup = lambda _key: None,
) -> dict[str, str]:
    """Files first (in order), then ``-e`` assignments; a later value wins.

    ``lookup`` gives a bare ``KEY``'s value (the CLI passes ``os.environ.get``;
    the library never reads this process's environment on its own)."""
    env: dict[str, str] = {}
    problems: list[ConfigError] = []
    for file in files:
        path = Path(file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(
                ConfigError(
                    f"env file {path}: {getattr(exc, 'strerror', None) or exc}",
                    code="E_ENV_FILE",
                    hint="give a readable UTF-8 file of KEY=VALUE lines",
                )
            )
            continue
        for number, line in enumerate(lines, 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            pair, problem = _assignment(stripped, f"{path}:{number}", lookup, quoted=True)
            if problem is not None:
                problems.append(problem)
            elif pair is not None:
                env[pair[0]] = pair[1]
    for text in assignments:
        pair, problem = _assignment(text, f"-e {text}", lookup, quoted=False)
        if problem is not None:
            problems.append(problem)
        elif pair is not None:
            env[pair[0]] = pair[1]
    if problems:
        raise EnvError(problems)
    return env


def check_env(env: dict[str, str]) -> None:
    """A library caller's ``VmRequest(env=...)``: the same rules as ``-e``, every problem."""
    problems = [p for key in env if (p := _check_key(key, f"env {key!r}")) is not None]
    problems += [
        ConfigError(f"env {key}: the value holds a NUL byte", code="E_ENV_SPEC")
        for key, value in env.items()
        if "\0" in value
    ]
    if problems:
        raise EnvError(problems)
    env_kernel_arg(env)


def shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def env_script(env: dict[str, str]) -> str:
    """``KEY='value'`` lines that /init loads with ``set -a; . FILE`` (quoted: no expansion)."""
    return "".join(f"{key}={shell_quote(value)}\n" for key, value in env.items())


def env_kernel_arg(env: dict[str, str]) -> str:
    """``mvm.env=BASE64`` (empty for no variables); E_ENV_TOO_LARGE past the cap."""
    if not env:
        return ""
    encoded = base64.b64encode(env_script(env).encode()).decode()
    if len(encoded) > MAX_KERNEL_ARG:
        raise ConfigError(
            f"the runtime environment is {len(encoded)} bytes encoded; the kernel command "
            f"line carries at most {MAX_KERNEL_ARG}",
            code="E_ENV_TOO_LARGE",
            hint="put larger configuration in a folder mounted with -v DIR:/mnt/config",
        )
    return "mvm.env=" + encoded
