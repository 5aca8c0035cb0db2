"""Light commands (help, study status, bad-input errors) must not import torch or timm."""

import subprocess
import sys
from pathlib import Path

import pytest

from scarce.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> str:
    probe = code + "\nimport sys; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_building_the_parser_imports_neither_torch_nor_timm():
    assert _modules_after("from scarce.cli import build_parser; build_parser()") == "[]"


def test_reading_a_spec_and_a_bad_config_value_import_neither_torch_nor_timm():
    code = ("from scarce.study.spec import parse_spec\n"
            "parse_spec({'name': 't', 'data': 'x.npz', 'n': [4], 'seeds': [0], 'recipes': [{'recipe': 'regular'}]})\n"
            "from scarce.config import TrainConfig\nfrom scarce.errors import ScarceError\n"
            "try:\n    TrainConfig(data='x.npz', epochs=-1).validate()\nexcept ScarceError:\n    pass\n"
            "else:\n    raise SystemExit('no error')\n"
            "from scarce.training.recipes import get_recipe\n"
            "try:\n    get_recipe('regulr')\nexcept ScarceError:\n    pass\n")
    assert _modules_after(code) == "[]"


def test_a_bad_recipe_and_study_status_from_the_command_line_import_neither_torch_nor_timm(tmp_path):
    code = ("from scarce.cli import main\n"
            "assert main(['train', '--data', 'x.npz', '--recipe', 'regulr']) == 2\n"
            "assert main(['train', '--data', 'x.npz', '--epochs', '-1']) == 2\n"
            f"assert main(['study', 'status', {str(tmp_path)!r}]) == 2\n")
    assert _modules_after(code) == "[]"


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == "scarce 0.1.0"


def test_every_flag_has_a_help_text():
    import argparse

    from scarce.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:  # reading the tree in a test only
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    missing = [f"{p.prog} {a.option_strings}" for p in parsers(build_parser()) for a in p._actions
               if a.option_strings and not a.help]
    assert missing == []


def test_run_flags_state_the_config_defaults_and_every_subcommand_is_described(capsys):
    from scarce.config import TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = TrainConfig(data="x")
    assert f"training epochs (default {defaults.epochs})" in text
    assert f"the run's random seed (default {defaults.seed})" in text
    assert f"image side in pixels (default {defaults.size})" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    for command in ("train", "data", "lr-find", "study", "pretrain", "predict", "evaluate", "export", "model-card",
                    "recipes"):
        line = next(row for row in listed.splitlines() if row.strip().startswith(command + " "))
        assert len(line.split()) > 1  # a description follows the name
