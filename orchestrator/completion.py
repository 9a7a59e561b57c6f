"""`wasmgroup completion bash|zsh`: a completion script generated from the argparse parser,
so it never lags behind the options. zsh runs the same function through `bashcompinit`.

Completes commands, each command's options, the choices of options and positionals that
have them, and file names elsewhere (directories for options whose value is one).
"""

from __future__ import annotations

import argparse

DIRECTORY_OPTIONS = ("--dir", "--lib-path", "--mapdir", "--volume", "--output-dir")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """(every option string, the options that take a value)."""
    every: list[str] = []
    valued: list[str] = []
    for action in parser._actions:
        every += action.option_strings
        if action.option_strings and action.nargs != 0:
            valued += action.option_strings
    return every, valued


def _choices(parser: argparse.ArgumentParser) -> list[str]:
    return [str(c) for a in parser._actions if not a.option_strings and a.choices
            and not isinstance(a, argparse._SubParsersAction) for c in a.choices]


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    commands = _subcommands(parser)
    top_options, _ = _options(parser)
    cases = []
    for name, sub in commands.items():
        every, valued = _options(sub)
        dirs = " ".join(o for o in valued if o in DIRECTORY_OPTIONS)
        cases.append(
            f"        {name})\n"
            f"            opts=\"{' '.join(every)}\"; valued=\"{' '.join(valued)}\"\n"
            f"            dirs=\"{dirs}\"; words=\"{' '.join(_choices(sub))}\" ;;")
    body = "\n".join(cases)
    script = f"""# wasmgroup {shell} completion, generated from its argument parser.
_wasmgroup() {{
    local cur prev cmd opts valued dirs words i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case " {' '.join(commands)} " in
            *" ${{COMP_WORDS[i]}} "*) cmd="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    if [[ -z "$cmd" && $COMP_CWORD -eq 1 ]]; then
        if [[ "$cur" == -* ]]; then
            COMPREPLY=($(compgen -W "{' '.join(top_options)} $(_wasmgroup_run_opts)" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "{' '.join(commands)}" -- "$cur") $(compgen -f -- "$cur"))
        fi
        return
    fi
    case "${{cmd:-run}}" in
{body}
    esac
    if [[ " $valued " == *" $prev "* ]]; then
        if [[ " $dirs " == *" $prev "* ]]; then
            COMPREPLY=($(compgen -d -- "$cur"))
        else
            COMPREPLY=($(compgen -f -- "$cur"))
        fi
    elif [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [[ -n "$words" ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
_wasmgroup_run_opts() {{
    echo "{' '.join(_options(commands['run'])[0]) if 'run' in commands else ''}"
}}
"""
    if shell == "zsh":
        script += "autoload -U +X bashcompinit && bashcompinit\n"
    return script + "complete -o filenames -F _wasmgroup wasmgroup\n"
