"""The README documents what the code has: every setting, every ranker subcommand."""

from __future__ import annotations

from pathlib import Path

README_PATH = Path(__file__).resolve().parents[1] / "README.md"
README = README_PATH.read_text()


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


def _ranker_lines() -> list[str]:
    """The ``ranker ...`` command lines of the README's bash blocks (continuations joined)."""
    out, block, cur = [], False, ""
    for line in README.splitlines():
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if not block:
            continue
        cur = cur + " " + line.strip() if cur else line.strip()
        if cur.endswith("\\"):
            cur = cur[:-1].strip()
            continue
        if cur.startswith("ranker "):
            out.append(cur)
        cur = ""
    return out


def test_every_readme_ranker_command_parses_with_the_cli():
    import shlex

    from training.cli import build_parser

    p = build_parser()
    lines = [x for x in _ranker_lines() if x.split()[1] not in ("serve", "join-logs")]
    assert len(lines) >= 10
    for line in lines:
        argv = shlex.split(line, comments=True)[1:]
        try:
            p.parse_args(argv)
        except SystemExit:
            raise AssertionError(f"README command does not parse: {line}") from None


def test_every_ranker_option_has_help_text():
    import argparse

    from training.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        if name in ("serve", "join-logs"):  # their own parsers live in service.cli
            continue
        for a in parser._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help and a.help != argparse.SUPPRESS, f"ranker {name} {a.dest}: no help"


def test_readme_and_help_list_the_same_only_groups_and_presets():
    from training.cli import DRL_REPORT_GROUPS, PRESETS_HELP
    from training.drl.report.plan import GROUPS, REPORT_PRESETS
    from training.eval.baselines_run import EVAL_PRESETS
    from training.mmrf.report.plan import REPORT_PRESETS as MMRF_PRESETS
    from training.sim.config import PRESETS

    assert tuple(GROUPS) == DRL_REPORT_GROUPS
    assert "groups: " + ", ".join(GROUPS) + ")" in " ".join(README.split())
    for names in (PRESETS, REPORT_PRESETS, EVAL_PRESETS, MMRF_PRESETS):
        assert list(names) == ["tiny", "default", "large"]
        for n in names:
            assert n in PRESETS_HELP and f"`{n}`" in README


def test_readme_says_how_to_get_the_cpu_build_of_torch():
    import re

    pin = re.search(r'"torch==([\d.]+)"', (README_PATH.parent / "pyproject.toml").read_text())
    want = f"pip install torch=={pin.group(1)} --index-url https://download.pytorch.org/whl/cpu"
    assert want in README


def _section(title: str) -> str:
    """The README's ``## title`` section (up to the next ``## `` heading)."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def _long_options(*commands: str) -> set[str]:
    import argparse

    from training.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {o for c in commands for a in sub.choices[c]._actions
            if not isinstance(a, argparse._HelpAction)
            for o in a.option_strings if o.startswith("--")}  # fmt: skip


def test_the_reports_section_names_only_options_the_report_commands_have():
    import re

    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", _section("Reports")))
    extra = named - _long_options("report", "drl-report")
    assert not extra, f"README's Reports section names {sorted(extra)}, not in their --help"
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", _section("The MMRF report")))
    extra = named - _long_options("mmrf-report")
    assert not extra, f"README's MMRF report section names {sorted(extra)}, not in its --help"


def test_every_option_of_the_report_and_bundle_commands_is_in_the_readme():
    for c in ("report", "drl-report", "mmrf-report", "default-bundle"):
        missing = sorted(o for o in _long_options(c) if o not in README)
        assert not missing, f"ranker {c} --help has {missing}, the README never names them"


def test_readme_report_budgets_and_world_overrides_are_accepted():
    import shlex

    from training.cli import build_parser
    from training.drl.report.plan import report_preset
    from training.eval.baselines_run import eval_preset
    from training.mmrf.report.plan import report_preset as mmrf_preset
    from training.sim.config import parse_overrides

    p = build_parser()
    reports = ("report", "drl-report", "mmrf-report")
    lines = [x for x in _ranker_lines() if x.split()[1] in reports]
    assert len(lines) >= 6
    for line in lines:
        a = p.parse_args(shlex.split(line, comments=True)[1:])
        if getattr(a, "data", None):  # a logged dataset: no world, other budget keys
            continue
        pick = {"drl-report": report_preset, "mmrf-report": mmrf_preset}.get(a.command, eval_preset)
        cfg = pick(a.preset).with_overrides(parse_overrides(a.budget or []))
        cfg.with_world(parse_overrides(a.set or []))  # a ConfigError fails the test
