"""The documentation: the generated spec reference is current and complete, every relative link
in README.md and docs/ leads somewhere, and the README stays an entry point.

Pure tier: no Ray, no servers; reads files and imports the spec models only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ganops.spec import reference

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 150

# [text](target) and ![alt](target); the target ends at whitespace (a title may follow) or ')'.
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked out (a link
    written inside backticks is an example, not a link)."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, re.sub(r"`[^`]*`", lambda m: " " * len(m.group()), line)))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markdown stripped, lowercase, every character but letters,
    digits, '-', '_' and spaces dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, with GitHub's -1, -2 ... for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(path: Path) -> list[str]:
    """`file:line: target (why)` for each relative link of ``path`` that leads nowhere."""
    problems = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        for target in _LINK.findall(line):
            if re.match(r"(?i)^(https?:|mailto:)", target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where} (no heading with the anchor #{anchor} in {dest.relative_to(ROOT)})")
    return problems


def test_the_spec_reference_is_generated_from_the_current_models():
    path = reference.REFERENCE
    assert path == DOCS / "spec-reference.md"
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing: run `make docs`"
    assert path.read_text(encoding="utf-8") == reference.render(), (
        f"{path.relative_to(ROOT)} is stale: run `make docs` (python -m ganops.spec.reference)"
    )


def test_the_reference_check_names_a_stale_file(tmp_path, capsys):
    out = tmp_path / "spec-reference.md"
    assert reference.main(["--check", "--out", str(out)]) == 1
    assert str(out) in capsys.readouterr().err
    assert reference.main(["--out", str(out)]) == 0
    assert reference.main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text() + "edited by hand\n")
    assert reference.main(["--check", "--out", str(out)]) == 1
    assert "stale" in capsys.readouterr().err


def test_every_field_of_every_kind_has_a_docstring():
    covered = {model.__name__ for _kind, _path, model in reference.sections()}
    # The three kinds' metadata and spec, and every model nested in them.
    assert {"Metadata", "GANJobSpec", "TrainSpec", "Toleration", "GANGenerationSpec", "GANEvaluationSpec"} <= covered
    missing = reference.undocumented()
    assert not missing, "fields without a docstring (the spec reference shows it):\n  " + "\n  ".join(missing)


def test_every_field_appears_in_the_reference_at_its_path():
    text = reference.render()
    for _kind, path, model in reference.sections():
        for name in model.model_fields:
            assert f"| `{path}.{name}` |" in text, f"{path}.{name}"


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    problems = broken_links(path)
    assert not problems, "links that lead nowhere:\n  " + "\n  ".join(problems)


def test_the_link_check_sees_links_images_and_anchors(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "a.md").write_text(
        "# Top\n\n## The run's page: `cluster/local` (no Docker)\n\n## Top\n\n"
        "[ok](#top) [ok](#top-1) [ok](a.md#the-runs-page-clusterlocal-no-docker) ![ok](a.md)\n"
        "[bad](#nothing) [bad](missing.md) ![bad](img/missing.png) [web](https://example.com/x) "
        "`[code](nowhere.md)`\n\n```\n[fenced](nowhere.md)\n```\n"
    )
    problems = broken_links(tmp_path / "a.md")
    assert [p.split(": ", 1)[1].split(" (")[0] for p in problems] == ["#nothing", "missing.md", "img/missing.png"]


def test_the_readme_is_an_entry_point():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move the detail to docs/"
    )
