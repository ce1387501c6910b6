"""The README stays a short guide and user-facing text carries no project history."""

from __future__ import annotations

import re

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
# the project's own tracker and working history; other projects' issues are fine as links
HISTORY = re.compile(r"\bissue[- ]?#?\d+|\(issue|the issue'?s?\b|\bsessions?\b", re.IGNORECASE)


def test_the_readme_is_short_and_routes_to_the_docs():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) < 250
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / target).exists(), target


def test_user_facing_text_names_no_issue_numbers_or_sessions():
    found = [
        f"{page.relative_to(REPO)}:{number}: {line.strip()}"
        for page in PAGES
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if HISTORY.search(line) and "github.com" not in line
    ]
    assert not found, "\n".join(found)
