"""`engine` builds only the parser of the command it runs; help and typos still see them all."""

from __future__ import annotations

import pytest

from engine.cli import main

#: Commands registered by different modules under engine/commands/.
COMMANDS = ("validate", "plan", "apply", "status", "keygen", "release", "serve", "bootstrap")


def _exit(argv: list[str]) -> int | str | None:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    return raised.value.code


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`engine --help` names each command."""
    assert _exit(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"\n    {name} " in out or f"\n    {name}\n" in out, name


def test_mistyped_command_lists_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    """A command that does not exist fails naming every one that does."""
    assert _exit(["plna"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'plna'" in err
    for name in COMMANDS:
        assert f"'{name}'" in err, name


def test_command_help_and_bad_option(capsys: pytest.CaptureFixture[str]) -> None:
    """A command's own help and option errors read as before."""
    assert _exit(["plan", "--help"]) == 0
    assert "usage: engine plan" in capsys.readouterr().out
    assert _exit(["plan", "--no-such-option"]) == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["keys", "keygen", "release", "trust"])
def test_commands_registered_by_a_module_of_another_name(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`engine keys` (module trust) and `engine release` (module keys) parse; no `trust`."""
    if command == "trust":
        assert _exit([command, "--help"]) == 2
        assert "invalid choice: 'trust'" in capsys.readouterr().err
        return
    assert _exit([command, "--help"]) == 0
    assert f"usage: engine {command}" in capsys.readouterr().out
