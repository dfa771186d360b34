"""The README documents what the code has: every setting, every ranker subcommand."""

from __future__ import annotations

from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_settings_table_lists_every_setting_with_its_default():
    from service.settings import Settings

    for name, f in Settings.model_fields.items():
        row = f"| `RANKER_{name.upper()}` | `{f.default}` |"
        assert row in README, f"README's settings table lacks or misstates {row}"


def test_readme_names_every_ranker_subcommand():
    from training.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in [*sub.choices, "serve"]:
        assert f"ranker {name}" in README, f"README never shows `ranker {name}`"
