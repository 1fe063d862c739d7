"""``liaison completion bash|zsh``: the scripts run in real shells. bash: the function is
called with COMP_WORDS as bash would set them (``=`` a word of its own) and COMPREPLY is
read back. zsh: an interactive zsh in a pseudo-terminal (zsh/zpty) is sent the command
line and a Tab, and reports what compsys offered."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from liaison.client.choices import CATEGORIES, TLPS
from liaison.client.cli import build_parser, main
from liaison.client.completion import (
    cmd_completion,
    completion_script,
    liaison_completion_script,
)
from liaison.client.users_cli import ROLES

ZSH = shutil.which("zsh")
# CI installs zsh and sets LIAISON_REQUIRE_ZSH=1: there a missing zsh fails, not skips.
needs_zsh = pytest.mark.skipif(
    ZSH is None and os.environ.get("LIAISON_REQUIRE_ZSH") != "1",
    reason="zsh is not installed (apt-get install zsh): the zsh script is untested",
)


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bash") / "liaison.bash"
    path.write_text(liaison_completion_script("bash"))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Where the shell completes paths: two files and a folder."""
    (tmp_path / "notice.toml").write_text("")
    (tmp_path / "note.txt").write_text("")
    (tmp_path / "nested").mkdir()
    return tmp_path


def complete_bash(script: Path, line: str | list[str], cwd: Path | None = None) -> list[str]:
    """COMPREPLY for the command line (words split at spaces, a trailing space starting an
    empty word), or for these exact COMP_WORDS."""
    words = line if isinstance(line, list) else line.split(" ")
    driver = (
        'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); '
        'COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; '
        # the function the script registered for the command, called as bash calls it
        'spec=$(complete -p "$1") || exit 9; function=${spec##*-F }; function=${function%% *}; '
        '"$function" "$1" "${!#}" ""; '
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", driver, "bash", str(script), *words],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return [word for word in result.stdout.splitlines() if word]


# bash ------------------------------------------------------------------------------


def test_the_commands_at_the_top_and_only_them(bash_script: Path) -> None:
    offered = complete_bash(bash_script, "liaison ")
    assert {"send", "inbox", "show", "audit", "users", "keys", "peers"} <= set(offered)
    assert "verify" not in offered  # a command of `audit`, not of liaison
    assert "--help" not in offered  # options only after a dash
    assert complete_bash(bash_script, "liaison au") == ["audit"]
    top_options = complete_bash(bash_script, "liaison --")
    assert {"--help", "--version"} <= set(top_options)
    assert "--category" not in top_options  # an option of send and the listings


def test_nested_commands(bash_script: Path) -> None:
    audit = complete_bash(bash_script, "liaison audit ")
    assert {"verify", "log", "export", "proof", "verify-proof", "report"} <= set(audit)
    assert "send" not in audit
    assert complete_bash(bash_script, "liaison audit verify-") == ["verify-proof"]
    assert set(complete_bash(bash_script, "liaison keys ")) == {
        "list",
        "passphrase",
        "seal",
        "rotate",
    }
    assert set(complete_bash(bash_script, "liaison users ")) >= {"add", "rotate", "revoke"}


def test_the_options_of_the_command_being_typed(bash_script: Path) -> None:
    rotate = complete_bash(bash_script, "liaison keys rotate --")
    assert {"--signing", "--encryption", "--tls", "--home", "--help"} <= set(rotate)
    assert "--category" not in rotate
    assert "-h" not in rotate
    assert complete_bash(bash_script, "liaison send --cat") == ["--category"]
    assert "--role" in complete_bash(bash_script, "liaison users add x --")
    assert "--role" not in complete_bash(bash_script, "liaison users rotate x --")
    # no positional left to fill: the options, without a dash typed
    assert "--subject" in complete_bash(bash_script, "liaison send ")


def test_the_words_of_an_option(bash_script: Path) -> None:
    assert sorted(complete_bash(bash_script, "liaison send --category ")) == sorted(CATEGORIES)
    assert complete_bash(bash_script, "liaison inbox --category te") == ["terrorism"]
    assert complete_bash(bash_script, "liaison send --tlp amber") == ["amber", "amber+strict"]
    assert list(TLPS) == complete_bash(bash_script, "liaison reply x --tlp ")
    assert complete_bash(bash_script, "liaison users add x --role ") == list(ROLES)
    assert complete_bash(bash_script, "liaison users add x --role a") == ["auditor", "admin"]
    assert complete_bash(bash_script, "liaison audit export --format ") == ["jsonl", "csv"]


def test_equals_and_abbreviations(bash_script: Path) -> None:
    # bash splits --category=te into three words (= is in COMP_WORDBREAKS)
    split = ["liaison", "send", "--category", "=", "te"]
    assert complete_bash(bash_script, split) == ["terrorism"]
    assert sorted(complete_bash(bash_script, split[:4])) == sorted(CATEGORIES)
    assert sorted(complete_bash(bash_script, [*split[:4], ""])) == sorted(CATEGORIES)
    # without = in COMP_WORDBREAKS the word stays whole, and so must the answer
    assert complete_bash(bash_script, ["liaison", "send", "--category=te"]) == [
        "--category=terrorism"
    ]
    # argparse takes a unique prefix of an option
    assert sorted(complete_bash(bash_script, "liaison send --cat ")) == sorted(CATEGORIES)


def test_values_and_positionals_are_stepped_over(bash_script: Path) -> None:
    line = "liaison users add --home /srv/node --role admin alice --role "
    assert complete_bash(bash_script, line) == list(ROLES)
    # NAME is free text: nothing to offer, not the options nor the roles
    assert complete_bash(bash_script, "liaison users add --role admin ") == []
    assert complete_bash(bash_script, "liaison show ") == []
    assert "--save-attachments" in complete_bash(bash_script, "liaison show 0190-id ")
    # after --, words are positionals: no options
    assert complete_bash(bash_script, "liaison send -- --c") == []


def test_paths(bash_script: Path, folder: Path) -> None:
    assert complete_bash(bash_script, "liaison send --body-file no", folder) == [
        "note.txt",
        "notice.toml",
    ]
    assert set(complete_bash(bash_script, "liaison audit export --out ", folder)) == {
        "nested",
        "note.txt",
        "notice.toml",
    }
    assert complete_bash(bash_script, "liaison keys list --home ", folder) == ["nested"]
    assert complete_bash(bash_script, "liaison show x --save-attachments n", folder) == ["nested"]
    # free text is not a path
    assert complete_bash(bash_script, "liaison send --subject no", folder) == []


def test_the_script_is_static(bash_script: Path) -> None:
    text = bash_script.read_text()
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("python" in line.lower() for line in code)
    assert not any(re.search(r"\$\(\s*liaison|`\s*liaison", line) for line in code)
    assert "complete -F _liaison_bash liaison" in code


def test_the_completion_command_completes_its_shells(
    bash_script: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Needs `liaison completion` wired into build_parser."""
    assert "completion" in complete_bash(bash_script, "liaison ")
    assert complete_bash(bash_script, "liaison completion ") == ["bash", "zsh"]
    assert main(["completion", "bash"]) == 0
    assert capsys.readouterr().out == bash_script.read_text()


def test_cmd_completion_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_completion(argparse.Namespace(shell="zsh")) == 0
    out = capsys.readouterr().out
    assert out.startswith("#compdef liaison\n")
    assert out == completion_script(build_parser(), "zsh", option_words=_liaison_words())


def _liaison_words() -> dict[str, list[str]]:
    from liaison.client import choices  # noqa: PLC0415

    return {
        "--category": sorted(choices.CATEGORIES),
        "--tlp": list(choices.TLPS),
        "--priority": list(choices.PRIORITIES),
        "--source-reliability": list(choices.RELIABILITY),
        "--information": list(choices.ASSESSMENT),
        "--status": list(choices.ACK_STATUSES),
        "--state": list(choices.LISTED_STATES),
    }


def test_hidden_options_and_commands_are_not_offered(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="tool")
    sub = parser.add_subparsers(dest="command")
    shown = sub.add_parser("shown", help="a command")
    shown.add_argument("--secret", help=argparse.SUPPRESS)
    shown.add_argument("--colour", choices=("red", "blue"))
    shown.add_argument("inputs", nargs="*", metavar="INPUT-FILE")
    sub.add_parser("hidden", help=argparse.SUPPRESS)
    script = tmp_path / "tool.bash"
    script.write_text(completion_script(parser, "bash"))
    (tmp_path / "data.csv").write_text("")

    assert complete_bash(script, "tool ") == ["shown"]
    assert complete_bash(script, "tool shown --") == ["--help", "--colour"]
    # a hidden option still takes a value: no file is offered for it
    assert complete_bash(script, "tool shown --secret ", tmp_path) == []
    assert complete_bash(script, "tool shown --secret x --colour ") == ["red", "blue"]
    assert complete_bash(script, "tool shown a.csv b.csv d", tmp_path) == ["data.csv"]


def test_an_unknown_shell_is_refused() -> None:
    with pytest.raises(ValueError, match="fish"):
        completion_script(build_parser(), "fish")


def test_the_module_loads_only_the_standard_library() -> None:
    code = (
        "import sys\n"
        "import liaison.client.completion\n"
        "print(sorted(m for m in sys.modules if m.startswith(('liaison.', 'grpc', "
        "'google', 'sqlalchemy', 'cryptography'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['liaison.client', 'liaison.client.completion']"


# zsh -------------------------------------------------------------------------------

# Run in an interactive zsh: prints what compadd is given, after compsys's own matching.
_RECORDER = r"""
compadd() {
    if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then
        builtin compadd "$@"
        return
    fi
    local -a hits
    builtin compadd -A hits "$@"
    local hit
    for hit in $hits; do print -rn -- " HIT:$hit "; done
    builtin compadd "$@"
}
"""

# Types each line and a Tab into an interactive zsh, then prints one CASE line with
# what was offered. $1: the commands that load the completion; $2: the folder to be in.
_DRIVER = r"""
zmodload zsh/zpty || exit 3
zpty -b shell 'zsh -f -i'
integer n=0
run() {
    (( n++ ))
    zpty -w shell "$1; print DONE\"\"$n"
    zpty -r shell out "*DONE$n*"
}
run 'PS1="" RPS1=""; bindkey -e; unsetopt beep autolist'
run "$1"
run "cd ${(q)2}"
shift 2
# Tab completes, then prints ENDCOMP: the next keys wait for it (keys typed ahead of a
# completion may cut it short).
run 'complete-and-mark() { zle expand-or-complete; print -n " ENDCOMP " }'
run 'zle -N complete-and-mark; bindkey "^I" complete-and-mark'
for line in "$@"; do
    zpty -w -n shell "$line"$'\t'
    zpty -r shell offered "*ENDCOMP*"
    zpty -w -n shell $'\C-u'
    run ':'
    print -r -- "CASE ${${offered//$'\r'/ }//$'\n'/ }"
done
zpty -d shell
"""


def complete_zsh(work: Path, load: str, folder: Path, *lines: str) -> list[set[str]]:
    """What zsh offers for each line, in ``folder``; ``load`` loads the completion."""
    (work / "recorder.zsh").write_text(_RECORDER)
    (work / "driver.zsh").write_text(_DRIVER)
    setup = f"{load}; source {shlex.quote(str(work / 'recorder.zsh'))}"
    assert ZSH is not None
    result = subprocess.run(
        [ZSH, "-f", str(work / "driver.zsh"), setup, str(folder), *lines],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "TERM": "dumb", "HOME": str(work)},
    )
    if result.returncode == 3:
        pytest.skip("zsh has no zsh/zpty module to drive an interactive shell")
    assert result.returncode == 0, result.stderr
    cases = [line for line in result.stdout.splitlines() if line.startswith("CASE ")]
    assert len(cases) == len(lines), result.stdout
    assert "command not found" not in result.stdout
    return [set(re.findall(r" HIT:(\S+) ", case)) for case in cases]


@needs_zsh
@pytest.mark.parametrize("way", ["fpath", "source"])
def test_zsh_completes_through_compsys(
    tmp_path_factory: pytest.TempPathFactory, folder: Path, way: str
) -> None:
    work = tmp_path_factory.mktemp("zsh")
    functions = work / "functions"
    functions.mkdir()
    (functions / "_liaison").write_text(liaison_completion_script("zsh"))
    compinit = "autoload -Uz compinit; compinit -u -D"
    if way == "fpath":
        load = f"fpath=({shlex.quote(str(functions))} $fpath); {compinit}"
    else:
        load = f"{compinit}; source {shlex.quote(str(functions / '_liaison'))}"

    top, audit, option, category, role, role_equals, body, home, subject = complete_zsh(
        work,
        load,
        folder,
        "liaison ",
        "liaison audit ",
        "liaison send --cat",
        "liaison send --category=te",
        "liaison users add x --role ",
        "liaison users add x --role=a",
        "liaison send --body-file no",
        "liaison keys list --home ",
        "liaison send --subject no",
    )
    assert {"send", "inbox", "show", "audit", "users"} <= top
    assert "verify" not in top
    assert {"verify", "log", "export"} <= audit
    assert "send" not in audit
    assert option == {"--category"}
    assert category == {"terrorism"}
    assert role == set(ROLES)
    assert role_equals == {"auditor", "admin"}
    assert body == {"notice.toml", "note.txt"}
    assert home == {"nested"}
    assert subject == set()


@needs_zsh
def test_the_zsh_script_parses(tmp_path: Path) -> None:
    script = tmp_path / "_liaison"
    script.write_text(liaison_completion_script("zsh"))
    assert ZSH is not None
    result = subprocess.run([ZSH, "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
