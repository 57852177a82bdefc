"""The docs come from the code and point at things that exist.

* docs/reference/config.md and cli.md are what ``docs/generate.py`` writes today;
* the README stays a front door (under 250 lines);
* every relative Markdown link resolves: the file exists and, for ``#anchor`` links into
  a Markdown file, so does the heading (GitHub's anchor rules);
* every ``ci-compress <command>`` the README shows is a real command.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import click
import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
README_MAX_LINES = 250


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", REPO / "docs" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


generate = _load_generator()


# ------------------------------------------------------------------ Markdown parsing

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)


def markdown_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "CHANGELOG.md"]
    return files + sorted((REPO / "docs").rglob("*.md"))


def split_fences(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The text outside fenced code blocks, and each block as (info string, body)."""
    prose: list[str] = []
    blocks: list[tuple[str, str]] = []
    fence: str | None = None
    info, body = "", []
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence, info, body = m.group(1), line.strip()[3:].strip(), []
        elif fence is not None and line.strip().startswith(fence):
            blocks.append((info, "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(line)
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def headings(path: Path) -> set[str]:
    """The anchors GitHub makes for a file's headings (duplicates get -1, -2, ...)."""
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    seen: Counter[str] = Counter()
    anchors = set()
    for line in prose.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = generate.slug(m.group(1))
        anchors.add(f"{base}-{seen[base]}" if seen[base] else base)
        seen[base] += 1
    return anchors


def links(path: Path) -> list[str]:
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    prose = INLINE_CODE.sub(lambda m: "`" + "x" * len(m.group(2)) + "`", prose)
    return LINK.findall(prose)


# ------------------------------------------------------------------ generated references


def test_generated_references_are_current() -> None:
    problems = generate.stale()
    assert not problems, (
        "docs/reference is stale; regenerate it with `python docs/generate.py` "
        "(or `make docs`) and commit the result:\n" + "\n".join(problems)
    )


def test_the_check_sees_a_changed_field_description(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is not vacuous: a description that changes in the code makes it fail."""
    import ci_compress.config

    real = ci_compress.config.json_schema

    def changed() -> dict[str, object]:
        schema = real()
        schema["$defs"]["Thresholds"]["properties"]["max_accuracy_drop"]["description"] = "x"
        return schema

    monkeypatch.setattr(ci_compress.config, "json_schema", changed)
    problems = generate.stale()
    assert any("docs/reference/config.md" in p for p in problems), problems
    assert generate.main(["--check"]) == 1


def test_the_check_sees_a_changed_option_help(monkeypatch: pytest.MonkeyPatch) -> None:
    from ci_compress.cli import cli

    validate = cli.commands["validate"]
    monkeypatch.setattr(validate, "help", "Something else.")
    problems = generate.stale()
    assert [p for p in problems if "docs/reference/cli.md" in p], problems


def registered_passes() -> list[str]:
    """Pass names as the config schema lists them (one variant per registry entry)."""
    from ci_compress.config import json_schema

    return list(generate._Schema(json_schema()).passes)


def test_the_config_reference_names_every_field_and_pass() -> None:
    from ci_compress.config import json_schema

    text = (REPO / "docs/reference/config.md").read_text(encoding="utf-8")
    schema = json_schema()
    for name, definition in schema["$defs"].items():
        for field in definition.get("properties", {}):
            assert f"| `{field}` |" in text, f"{name}.{field} missing from the reference"
    for name in registered_passes():
        assert f"### `{name}`" in text


def test_the_cli_reference_has_every_command() -> None:
    from ci_compress.cli import cli

    text = (REPO / "docs/reference/cli.md").read_text(encoding="utf-8")
    for path in command_paths(cli):
        assert f"## `{path}`" in text


# ------------------------------------------------------------------ README and links


def test_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it under {README_MAX_LINES} "
        "and move detail into docs/"
    )


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(path: Path) -> None:
    assert path.exists(), f"{path.relative_to(REPO)} is missing"
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in headings(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{path.relative_to(REPO)} has broken links:\n" + "\n".join(broken)


def test_slugs_follow_github() -> None:
    assert generate.slug("The shipped file (`.ccz`)") == "the-shipped-file-ccz"
    assert generate.slug("Trust: a config is code") == "trust-a-config-is-code"
    assert generate.slug("`quantize`: int8 dynamic / fp16") == "quantize-int8-dynamic--fp16"
    assert generate.slug("ci-compress init") == "ci-compress-init"
    assert generate.slug("[Passes](passes.md) and more") == "passes-and-more"


def command_paths(group: click.Group, prefix: str = "ci-compress") -> list[str]:
    paths = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            paths += command_paths(command, f"{prefix} {name}")
        else:
            paths.append(f"{prefix} {name}")
    return paths


COMMAND = re.compile(r"(?<![\w/.-])ci-compress[ \t]+([^\s`]+)(?:[ \t]+([^\s`]+))?")
SHELL_BLOCKS = {"bash", "sh", "shell", "console", "yaml", "yml", "groovy"}
COMMENT = re.compile(r"(^|\s)(#|//).*$", re.M)


def readme_commands() -> list[tuple[str, str | None]]:
    """``ci-compress <command> [<subcommand>]`` in the README's code (not its sample output)."""
    prose, blocks = split_fences(README.read_text(encoding="utf-8"))
    code = [m.group(2) for m in INLINE_CODE.finditer(prose)]
    code += [
        COMMENT.sub("", body)  # a comment may say "the ci-compress in your environment"
        for info, body in blocks
        if info.split()[:1] and info.split()[0] in SHELL_BLOCKS
    ]
    found = []
    for snippet in code:
        for m in COMMAND.finditer(snippet):
            if re.fullmatch(r"[a-z][a-z0-9-]*", m.group(1)):
                found.append((m.group(1), m.group(2)))
    return found


def test_readme_commands_exist() -> None:
    from ci_compress.cli import cli

    found = readme_commands()
    assert {"run", "demo", "validate", "report"} <= {name for name, _ in found}
    missing = []
    for name, sub in found:
        command = cli.commands.get(name)
        if command is None:
            missing.append(f"ci-compress {name}")
        elif isinstance(command, click.Group) and sub and not sub.startswith("-"):
            missing += [
                f"ci-compress {name} {s}"
                for s in sub.split("|")
                if re.fullmatch(r"[a-z][a-z0-9-]*", s) and s not in command.commands
            ]
    assert not missing, "the README names commands the CLI does not have: " + ", ".join(missing)


def test_readme_keeps_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci/run").read_text(encoding="utf-8")


def test_every_registered_pass_has_a_docs_section() -> None:
    text = (REPO / "docs/passes.md").read_text(encoding="utf-8")
    names = registered_passes()
    assert "prune" in names
    missing = [name for name in names if not re.search(rf"^## `{name}`", text, re.M)]
    assert not missing, f"docs/passes.md has no '## `<name>`: ...' section for {missing}"


CODE_PATH = re.compile(
    r"\b((?:ci_compress|benchmarks|pipelines|templates|tests)/[\w/.-]+\.(?:py|yml|yaml|groovy|sh|txt))\b"
)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_named_source_files_exist(path: Path) -> None:
    """A file of ours named in the docs (``ci_compress/layers/modules.py``) exists: the
    manual must follow the code when modules move."""
    missing = sorted(
        {m for m in CODE_PATH.findall(path.read_text(encoding="utf-8")) if not (REPO / m).exists()}
    )
    assert not missing, f"{path.relative_to(REPO)} names files that do not exist: {missing}"
