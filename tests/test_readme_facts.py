"""What the README states about the tree and the code is what they hold.

The demo commands are run against a real stack in ``tests/integration/test_readme.py``; the
configuration tables are checked in ``tests/measure_service/test_config.py``.
"""

from __future__ import annotations

import re

from measure_service.rows import ROW_STATUSES
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
# The packages whose every module the layout drawing names.
DRAWN_PACKAGES = ("weighted_cache", "measure_service", "devtools")
FILE_NAME = re.compile(r"\b[\w.]+\.(?:py|yaml|toml)\b")


def fenced(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of ``text``: (language, body), in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)


def layout_sections() -> dict[str, str]:
    """The layout drawing, split at its unindented lines: the text drawn under each entry."""
    _, drawing = fenced(README.split("### Layout", 1)[1])[0]
    sections: dict[str, str] = {}
    current = ""
    for line in drawing.splitlines():
        if line and not line.startswith(" "):
            current = line.split()[0]
        sections[current] = sections.get(current, "") + line + "\n"
    return sections


def test_the_layout_drawing_names_every_module_of_each_package() -> None:
    sections = layout_sections()
    for package in DRAWN_PACKAGES:
        drawn = set(FILE_NAME.findall(sections[f"{package}/"]))
        on_disk = {path.name for path in (ROOT / package).iterdir()
                   if FILE_NAME.fullmatch(path.name) and path.name != "__init__.py"}
        assert on_disk - drawn == set(), f"{package}/: not in the README's layout"


def test_every_file_the_layout_drawing_names_exists() -> None:
    for folder, text in layout_sections().items():
        directory = ROOT / folder if folder.endswith("/") else ROOT
        for name in FILE_NAME.findall(text):
            assert (directory / name).exists(), f"the README's layout names {folder}{name}"
        if folder.endswith("/"):
            assert directory.is_dir(), f"the README's layout names {folder}"


def test_the_row_status_table_lists_every_status_the_service_answers() -> None:
    table = README.split("| status | meaning |", 1)[1].split("\n\n", 1)[0]
    documented = tuple(re.findall(r"^\| `(\w+)` \|", table, re.M))
    assert documented == ROW_STATUSES


def test_the_library_example_runs_as_printed() -> None:
    [example] = [body for language, body in fenced(README) if language == "python"]
    exec(compile(example, "README.md", "exec"), {})
