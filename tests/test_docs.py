"""The README and docs/ point at things that exist: every relative link resolves to a file of the
repository, every command they name is one the console command has, and every environment switch the
reference pages (README, docs/kernels.md, docs/data.md) document is read somewhere in the package (or, for
the test suite's own switch, by tests/conftest.py)."""

import re
from pathlib import Path

import pytest

from megastride.launch.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REFERENCE_PAGES = [ROOT / "README.md", ROOT / "docs" / "kernels.md", ROOT / "docs" / "data.md"]
PACKAGE_DIRS = ["engine", "kernels", "data_shards", "launch"]

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
COMMAND = re.compile(r"(?<![\w/.-])megastride ([a-z][a-z_-]*)")
SWITCH = re.compile(r"MEGASTRIDE_[A-Z0-9_]+")


def relative_links(text: str) -> list[str]:
    """The link targets of markdown text that are paths, not web addresses or mail."""
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_the_link_finder_sees_relative_links_and_skips_web_addresses():
    text = "[a](runs/x/) [b](https://example.org/y) [c](scaling.md#method) [d](mailto:z@example.org)"
    assert relative_links(text) == ["runs/x/", "scaling.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path):
    text = page.read_text(encoding="utf-8")
    missing = [t for t in relative_links(text) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing paths: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_named_is_a_subcommand(page: Path):
    unknown = sorted(commands_in_code(page.read_text(encoding="utf-8")) - set(SUBCOMMANDS))
    assert not unknown, f"{page.relative_to(ROOT)} names commands the console command lacks: {unknown}"


def commands_in_code(text: str) -> set[str]:
    """The words after ``megastride`` in the text's code spans and blocks (prose such as "megastride is ..."
    names no command)."""
    spans = re.findall(r"`[^`\n]*`", text) + re.findall(r"```.*?```", text, flags=re.S)
    return {name for span in spans for name in COMMAND.findall(span)}


def test_the_command_check_would_catch_an_unknown_subcommand():
    text = "Run `megastride trian configs/tiny.yaml` first; megastride is a system."
    assert commands_in_code(text) == {"trian"} and "trian" not in SUBCOMMANDS


def test_every_switch_the_reference_pages_document_is_read_by_the_package():
    files = [p for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".sh") and p.is_file()]
    source = "\n".join(p.read_text(encoding="utf-8") for p in [*files, ROOT / "tests" / "conftest.py"])
    read = set(SWITCH.findall(source))
    documented = {(s, page.name) for page in REFERENCE_PAGES for s in SWITCH.findall(page.read_text(encoding="utf-8"))}
    assert documented, "no switch found in the reference pages: the pattern no longer matches them"
    gone = sorted(f"{s} ({page})" for s, page in documented if s not in read)
    assert not gone, f"documented switches no code reads: {gone}"
