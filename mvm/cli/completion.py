"""``mvmctl completion bash|zsh|fish``: a static completion script made from the
argparse tree (no new dependency, and completing never runs mvmctl).

The tree is flattened to "command paths" (``mvmctl``, ``mvmctl kernel``, ...). For
each path the script knows its subcommands and the words that may follow (its
subcommands, its flags, the choices of its positionals). The shell walks the words
typed so far, descending into a subcommand each time one is named, and offers the
words of the path it ends on; elsewhere it falls back to file names.
"""

from __future__ import annotations

import argparse

ROOT = "mvmctl"


def command_paths(parser: argparse.ArgumentParser) -> dict[str, tuple[list[str], list[str]]]:
    """``{path: (subcommands, words)}`` for every parser in the tree, root first."""
    out: dict[str, tuple[list[str], list[str]]] = {}

    def walk(path: str, p: argparse.ArgumentParser) -> None:
        subs: list[str] = []
        words: list[str] = []
        children: list[tuple[str, argparse.ArgumentParser]] = []
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action._name_parser_map.items():
                    subs.append(name)
                    children.append((name, child))
            elif action.option_strings:
                words.extend(o for o in action.option_strings if o.startswith("--"))
            elif action.choices is not None:
                words.extend(str(c) for c in action.choices)
        out[path] = (subs, subs + words)
        for name, child in children:
            walk(f"{path} {name}", child)

    walk(ROOT, parser)
    return out


def _case(paths: dict[str, tuple[list[str], list[str]]], index: int, fish: bool) -> str:
    lines = []
    for path, entry in paths.items():
        words = " ".join(entry[index])
        if fish:
            lines.append(f"        case '{path}'\n            printf '%s\\n' {words}")
        else:
            lines.append(f"    '{path}') echo '{words}' ;;")
    return "\n".join(lines)


def _posix_helpers(paths: dict[str, tuple[list[str], list[str]]]) -> str:
    return f"""_mvmctl_subs() {{
  case "$1" in
{_case(paths, 0, False)}
  esac
}}
_mvmctl_words() {{
  case "$1" in
{_case(paths, 1, False)}
  esac
}}
"""


def bash(parser: argparse.ArgumentParser) -> str:
    return f"""# mvmctl bash completion: eval "$(mvmctl completion bash)"
{_posix_helpers(command_paths(parser))}_mvmctl() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" _p={ROOT} _w _i
  for ((_i = 1; _i < COMP_CWORD; _i++)); do
    _w="${{COMP_WORDS[_i]}}"
    [[ "$_w" == -* ]] && continue
    if [[ " $(_mvmctl_subs "$_p") " == *" $_w "* ]]; then _p="$_p $_w"; fi
  done
  COMPREPLY=($(compgen -W "$(_mvmctl_words "$_p")" -- "$cur"))
}}
complete -o default -F _mvmctl mvmctl
"""


def zsh(parser: argparse.ArgumentParser) -> str:
    return f"""#compdef mvmctl
# mvmctl zsh completion: eval "$(mvmctl completion zsh)", or save it as _mvmctl on $fpath
{_posix_helpers(command_paths(parser))}_mvmctl() {{
  local _p={ROOT} _w _i
  for ((_i = 2; _i < CURRENT; _i++)); do
    _w=${{words[_i]}}
    [[ "$_w" == -* ]] && continue
    if [[ " $(_mvmctl_subs "$_p") " == *" $_w "* ]]; then _p="$_p $_w"; fi
  done
  local -a _cands
  _cands=(${{=$(_mvmctl_words "$_p")}})
  compadd -- $_cands || _files  # file names only where no word fits (bash: -o default)
}}
compdef _mvmctl mvmctl
"""


def fish(parser: argparse.ArgumentParser) -> str:
    paths = command_paths(parser)
    return f"""# mvmctl fish completion: mvmctl completion fish | source
function __mvmctl_subs
    switch "$argv[1]"
{_case(paths, 0, True)}
    end
end
function __mvmctl_words
    switch "$argv[1]"
{_case(paths, 1, True)}
    end
end
function __mvmctl_path
    set -l p {ROOT}
    for w in (commandline -opc)[2..-1]
        string match -q -- '-*' $w; and continue
        contains -- $w (__mvmctl_subs $p); and set p "$p $w"
    end
    echo $p
end
complete -c mvmctl -a '(__mvmctl_words (__mvmctl_path))'
"""


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    return {"bash": bash, "zsh": zsh, "fish": fish}[shell](parser)
