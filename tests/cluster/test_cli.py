"""Every `mel` subcommand answers --help; `mel --help` imports neither torch nor Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

SUBCOMMANDS = [
    ["kb", "build"],
    ["kb", "stats"],
    ["kb", "check"],
    ["index"],
    ["train"],
    ["eval"],
    ["dme"],
    ["serve"],
    ["link"],
    ["link-batch"],
    ["quickstart"],
    ["bench-paper"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w))
def test_subcommand_help(words, capsys):
    from cluster.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    assert "usage: mel" in capsys.readouterr().out


def test_help_is_light():
    code = "import sys; from cluster.cli import build_parser; build_parser(); print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_bad_override_exits_2_with_message(capsys):
    from cluster.cli import main

    assert main(["--set", "train.epochs=x", "train"]) == 2
    assert "'train.epochs' must be int" in capsys.readouterr().err
