"""``liaison completion bash|zsh``: a shell completion script made from the parser.

``completion_script`` walks an argparse parser and its subcommands, however deep, and
writes what each command accepts into the script as static data: the script never runs
Python when Tab is pressed. At each level it completes:

- subcommand names, until a command that takes none is reached;
- long option names of that command, when the word begins with ``-`` (and when the
  command has no positional left to fill); options with ``help=argparse.SUPPRESS`` and
  subcommands added with it are never offered, though the walk still knows them;
- the value of an option, after ``--opt``, ``--opt=`` or a unique prefix of ``--opt``
  (argparse's abbreviations), and the value of a positional:

  * the words of its ``choices``, or of ``option_words`` for options whose parser takes
    free text though only a few words are meant (``liaison send --category``: the command
    also accepts ``Terrorism`` or ``TLP:RED``, which ``choices`` would refuse);
  * otherwise a path, by this rule: the option's ``dest`` and ``metavar``, split into
    words at ``_``, ``-`` and spaces, include ``file``, ``path``, ``out`` or ``output``:
    file names (``--passphrase-file``, ``--body-file``, ``--out``, ``--html FILE``,
    ``users export --to FILE``); else they include ``dir``, ``directory``,
    ``folder`` or ``home``: directory names (``--home``, ``--save-attachments DIR``).
    Giving an option ``metavar="FILE"`` or ``metavar="DIR"`` is how to ask for it;
  * otherwise nothing: a free value (an agency id, a subject) is typed, not guessed.

Words are offered only if made of ``A-Z a-z 0-9 _ . + @ % / -`` (others are left out of
the script rather than quoted for two shells). Short options are not offered; combined
short options (``-ab``) are not followed.

bash: a function registered with ``complete -F``, written for bash 3.2 and later.

zsh: a native ``#compdef liaison`` function, not ``bashcompinit``: the same walk (the
part of the script common to both shells, written in the syntax both share), then zsh's
own ``compadd`` and ``_files``, so that paths complete with zsh's quoting, ``~`` and
styles, and ``--opt=value`` words (which zsh does not split at ``=``) complete too. The
file can be put on ``$fpath`` as ``_liaison`` or sourced after ``compinit``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

__all__ = ["SHELLS", "cmd_completion", "completion_script", "liaison_completion_script"]

SHELLS = ("bash", "zsh")
FILE_WORDS = frozenset({"file", "path", "out", "output"})
DIRECTORY_WORDS = frozenset({"dir", "directory", "folder", "home"})
_SAFE_WORD = re.compile(r"[A-Za-z0-9_.+@%/-]+")
_LINE = 88


@dataclass(frozen=True)
class _Command:
    """What one command (``liaison``, ``liaison keys rotate``) accepts, as the script
    stores it: ``values`` are ``OPTION:COUNT:KIND`` and ``positionals`` are kinds, where a
    kind is ``words:A,B``, ``files``, ``dirs`` or ``text``, starred if it repeats."""

    path: str
    commands: tuple[str, ...]
    options: tuple[str, ...]
    values: tuple[str, ...]
    positionals: tuple[str, ...]


def completion_script(
    parser: argparse.ArgumentParser,
    shell: str,
    *,
    option_words: Mapping[str, Iterable[str]] | None = None,
) -> str:
    """The completion script of ``parser`` (its ``prog`` is the command completed) for
    ``shell``, one of ``SHELLS``. ``option_words`` gives the words to offer after an
    option without ``choices``, by option string (``"--category"``), in every command.

    Raises ``ValueError`` for another shell, or a ``prog`` that is not a plain word.
    """
    if shell not in SHELLS:
        raise ValueError(f"no completion for {shell!r}; choose from {', '.join(SHELLS)}")
    name = parser.prog
    if not _SAFE_WORD.fullmatch(name):
        raise ValueError(f"cannot complete a command named {name!r}")
    words = {option: tuple(found) for option, found in (option_words or {}).items()}
    commands = list(_commands(parser, name, words))
    prefix = "_" + re.sub(r"\W", "_", name)
    head, tail = _FRAMES[shell]
    script = head + _spec_function(commands) + _WALK + tail
    return script.replace("@NAME@", name).replace("@P@", prefix)


def liaison_completion_script(shell: str) -> str:
    """The completion script of the ``liaison`` command itself, with the words its
    enumerations take (categories, TLP, priorities, states…)."""
    # Both load only when asked: completion.py itself needs no more than the stdlib.
    from liaison.client.choices import (  # noqa: PLC0415
        ACK_STATUSES,
        ASSESSMENT,
        CATEGORIES,
        LISTED_STATES,
        PRIORITIES,
        RELIABILITY,
        TLPS,
    )
    from liaison.client.cli import build_parser  # noqa: PLC0415

    enumerations: dict[str, Iterable[str]] = {
        "--category": sorted(CATEGORIES),
        "--tlp": TLPS,
        "--priority": PRIORITIES,
        "--source-reliability": RELIABILITY,
        "--information": ASSESSMENT,
        "--status": ACK_STATUSES,
        "--state": LISTED_STATES,
    }
    return completion_script(build_parser(), shell, option_words=enumerations)


def cmd_completion(args: argparse.Namespace) -> int:
    """``liaison completion SHELL``: print the script for ``args.shell``."""
    sys.stdout.write(liaison_completion_script(args.shell))
    return 0


# Reading the parser ----------------------------------------------------------------


def _commands(
    parser: argparse.ArgumentParser, path: str, words: Mapping[str, tuple[str, ...]]
) -> Iterator[_Command]:
    """``parser`` and every subcommand under it, parents first."""
    commands: list[str] = []
    options: list[str] = []
    values: list[str] = []
    positionals: list[str] = []
    below: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            hidden = {
                choice.dest
                for choice in getattr(action, "_choices_actions", ())
                if choice.help == argparse.SUPPRESS
            }
            for name, subparser in action.choices.items():
                if _SAFE_WORD.fullmatch(name):
                    below.append((name, subparser))
                    if name not in hidden:
                        commands.append(name)
        elif action.option_strings:
            count = _value_count(action.nargs)
            for option in filter(_SAFE_WORD.fullmatch, action.option_strings):
                if option.startswith("--") and action.help != argparse.SUPPRESS:
                    options.append(option)
                if count:
                    values.append(f"{option}:{count}:{_kind(action, words.get(option))}")
        else:
            positionals.extend(_positional_kinds(action, _kind(action, None)))
    yield _Command(path, tuple(commands), tuple(options), tuple(values), tuple(positionals))
    for name, subparser in below:
        yield from _commands(subparser, f"{path} {name}", words)


def _value_count(nargs: int | str | None) -> int:
    """How many words an option takes: one for ``?``, ``*`` and ``+`` too."""
    if isinstance(nargs, int):
        return nargs
    return 1


def _positional_kinds(action: argparse.Action, kind: str) -> list[str]:
    if isinstance(action.nargs, int):
        return [kind] * action.nargs
    if action.nargs in (argparse.ZERO_OR_MORE, argparse.ONE_OR_MORE, argparse.REMAINDER):
        return ["*" + kind]
    return [kind]


def _kind(action: argparse.Action, words: tuple[str, ...] | None) -> str:
    """What an option's or a positional's value completes to (see the module's rule)."""
    if action.choices is not None:
        words = tuple(str(choice) for choice in action.choices)
    if words is not None:
        return "words:" + ",".join(filter(_SAFE_WORD.fullmatch, words))
    metavar = action.metavar if isinstance(action.metavar, tuple) else (action.metavar or "",)
    names = set(re.split(r"[\s_-]+", " ".join((action.dest, *metavar)).lower()))
    if names & FILE_WORDS:
        return "files"
    if names & DIRECTORY_WORDS:
        return "dirs"
    return "text"


# Writing the script ----------------------------------------------------------------


def _spec_function(commands: list[_Command]) -> str:
    lines = [
        "@P@_spec() {",
        '    # What the command "$1" accepts: subcommands, long options offered, options that',
        "    # take values (' OPTION:COUNT:KIND ...'), positionals (KIND ...). A KIND is",
        "    # words:A,B,... or files or dirs or text; a starred positional repeats.",
        '    @P@_commands="" @P@_options="" @P@_values="" @P@_positionals=""',
        "    case $1 in",
    ]
    for command in commands:
        lines.append(f"        {shlex.quote(command.path)})")
        for variable, items, lead in (
            ("commands", command.commands, ""),
            ("options", command.options, ""),
            ("values", command.values, " "),
            ("positionals", command.positionals, ""),
        ):
            lines.extend(_assignments(f"@P@_{variable}", items, lead))
        lines.append("            ;;")
    lines += ["    esac", "}", ""]
    return "\n".join(lines) + "\n"


def _assignments(variable: str, items: tuple[str, ...], lead: str) -> Iterator[str]:
    """``variable='a b c'``, then ``variable+=' d e'`` lines when long; ``lead=" "`` puts a
    space before the first item too."""
    chunks: list[list[str]] = [[]]
    for item in items:
        if chunks[-1] and len(" ".join([*chunks[-1], item])) > _LINE - len(variable) - 18:
            chunks.append([])
        chunks[-1].append(item)
    for number, chunk in enumerate(filter(None, chunks)):
        text = shlex.quote((lead if number == 0 else " ") + " ".join(chunk))
        yield f"            {variable}{'+=' if number else '='}{text}"


# The walk, in the syntax bash and zsh share: the words after the command name, the last
# one being completed, give what to offer. Names are prefixed: zsh reserves path, words,
# commands, options and status.
_WALK = r"""@P@_takes() {
    # How many values the option $1 of the current command takes (@P@_n) and what they
    # are (@P@_kind). argparse also takes a unique prefix of a long option.
    local @P@_option=$1 @P@_rest
    @P@_n=0 @P@_kind=""
    case $@P@_values in
        *" $@P@_option:"*) ;;
        *)
            case $@P@_option in --?*) ;; *) return 0 ;; esac
            case " $@P@_options " in
                *" $@P@_option"*" $@P@_option"*) return 0 ;;
                *" $@P@_option"*)
                    @P@_rest=" $@P@_options "
                    @P@_rest=${@P@_rest#*" $@P@_option"}
                    @P@_option=$@P@_option${@P@_rest%% *}
                    ;;
                *) return 0 ;;
            esac
            case $@P@_values in *" $@P@_option:"*) ;; *) return 0 ;; esac
            ;;
    esac
    @P@_rest=${@P@_values#*" $@P@_option:"}
    @P@_rest=${@P@_rest%% *}
    @P@_n=${@P@_rest%%:*}
    @P@_kind=${@P@_rest#*:}
}

@P@_offer_kind() {
    case $1 in
        words:*)
            @P@_offer=words
            @P@_list=${1#words:}
            @P@_list=${@P@_list//,/ }
            ;;
        files | dirs) @P@_offer=$1 ;;
        *) @P@_offer="" ;;
    esac
}

@P@_resolve() {
    # Sets @P@_offer (words, files, dirs or nothing), @P@_list (the words),
    # @P@_cur (what the offer must start with) and @P@_prefix (to put before it).
    local @P@_at=@NAME@ @P@_word @P@_need=0 @P@_eq=0 @P@_slot=0 @P@_ended=0
    local @P@_value="" @P@_rest @P@_item @P@_i=0
    @P@_offer="" @P@_list="" @P@_prefix=""
    @P@_spec "$@P@_at"
    while [ $# -gt 1 ]; do
        @P@_word=$1
        shift
        if [ $@P@_need -gt 0 ]; then
            # bash makes the = of --opt=value a word of its own
            if [ $@P@_eq = 1 ] && [ "$@P@_word" = "=" ]; then
                @P@_eq=0
                continue
            fi
            @P@_eq=0
            @P@_need=$((@P@_need - 1))
            continue
        fi
        if [ $@P@_ended = 0 ]; then
            case $@P@_word in
                --)
                    @P@_ended=1
                    continue
                    ;;
                --*=*) continue ;;
                -?*)
                    @P@_takes "$@P@_word"
                    @P@_need=$@P@_n @P@_value=$@P@_kind @P@_eq=1
                    continue
                    ;;
            esac
        fi
        if [ -n "$@P@_word" ]; then
            case " $@P@_commands " in
                *" $@P@_word "*)
                    @P@_at="$@P@_at $@P@_word" @P@_slot=0
                    @P@_spec "$@P@_at"
                    continue
                    ;;
            esac
        fi
        @P@_slot=$((@P@_slot + 1))
    done
    @P@_cur=$1
    if [ $@P@_need -gt 0 ]; then
        if [ $@P@_eq = 1 ] && [ "$@P@_cur" = "=" ]; then
            @P@_cur=""
        fi
        @P@_offer_kind "$@P@_value"
        return 0
    fi
    if [ $@P@_ended = 0 ]; then
        case $@P@_cur in
            --*=*)
                @P@_takes "${@P@_cur%%=*}"
                @P@_prefix="${@P@_cur%%=*}="
                @P@_cur=${@P@_cur#*=}
                if [ $@P@_n -gt 0 ]; then
                    @P@_offer_kind "$@P@_kind"
                fi
                return 0
                ;;
            -*)
                @P@_offer=words @P@_list=$@P@_options
                return 0
                ;;
        esac
    fi
    if [ -n "$@P@_commands" ]; then
        @P@_offer=words @P@_list=$@P@_commands
        return 0
    fi
    @P@_rest="$@P@_positionals "
    @P@_value=""
    while [ -n "$@P@_rest" ]; do
        @P@_item=${@P@_rest%% *}
        @P@_rest=${@P@_rest#* }
        case $@P@_item in
            '*'*)
                @P@_value=${@P@_item#?}
                break
                ;;
        esac
        if [ $@P@_i -eq $@P@_slot ]; then
            @P@_value=$@P@_item
            break
        fi
        @P@_i=$((@P@_i + 1))
    done
    if [ -n "$@P@_value" ]; then
        @P@_offer_kind "$@P@_value"
    elif [ $@P@_ended = 0 ]; then
        # no positional left to fill: the options
        @P@_offer=words @P@_list=$@P@_options
    fi
}
"""

_LOCALS = (
    "local @P@_commands @P@_options @P@_values @P@_positionals @P@_n @P@_kind\n"
    "    local @P@_offer @P@_list @P@_cur @P@_prefix"
)

_BASH_HEAD = """\
# bash completion for @NAME@, generated by `@NAME@ completion bash` from its parser: the
# data is static, nothing runs when you press Tab. Load it from ~/.bashrc with
#     source <(@NAME@ completion bash)
# or save it as ~/.local/share/bash-completion/completions/@NAME@.

"""

_BASH_TAIL = f"""
@P@_bash() {{
    {_LOCALS} @P@_line
    COMPREPLY=()
    @P@_resolve "${{COMP_WORDS[@]:1:COMP_CWORD}}"
    case $@P@_offer in
        words) set -- -W "$@P@_list" ;;
        files) set -- -f ;;
        dirs) set -- -d ;;
        *) return 0 ;;
    esac
    if [ "$@P@_offer" != words ]; then
        compopt -o filenames 2>/dev/null
    fi
    while IFS= read -r @P@_line; do
        COMPREPLY+=("$@P@_prefix$@P@_line")
    done < <(compgen "$@" -- "$@P@_cur")
}}

complete -F @P@_bash @NAME@
"""

_ZSH_HEAD = """\
#compdef @NAME@
# zsh completion for @NAME@, generated by `@NAME@ completion zsh` from its parser: the
# data is static, nothing runs when you press Tab. Save it as _@NAME@ in a folder of
# $fpath (before compinit runs), or load it after compinit in ~/.zshrc with
#     source <(@NAME@ completion zsh)

"""

_ZSH_TAIL = f"""
@P@() {{
    # No emulate -L zsh: compsys has set the options _files needs (nullglob...).
    {_LOCALS}
    @P@_resolve "${{(@)words[2,CURRENT]}}"
    if [[ -n $@P@_prefix ]]; then
        compset -P "${{(b)@P@_prefix}}"
    fi
    case $@P@_offer in
        words) compadd -- ${{=@P@_list}} ;;
        files) _files ;;
        dirs) _files -/ ;;
        *) return 1 ;;
    esac
}}

if [[ $funcstack[1] == @P@ ]]; then
    @P@ "$@"
elif (( $+functions[compdef] )); then
    compdef @P@ @NAME@
else
    print -ru2 -- "@NAME@ completion: run compinit before loading this script"
fi
"""

_FRAMES = {"bash": (_BASH_HEAD, _BASH_TAIL), "zsh": (_ZSH_HEAD, _ZSH_TAIL)}
