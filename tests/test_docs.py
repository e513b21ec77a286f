"""Every Python example in ``docs/*.md`` and ``README.md`` runs, and every number it prints is checked.

How a Markdown file is run:

- every fenced block opened with `````python`` (or ``py``, ``pycon``) is an
  example; the blocks of one file run in order, in one shared namespace, so a
  later block may use names an earlier block defined;
- a block whose first non-blank line starts with ``>>>`` is a doctest: its
  printed output must match the text under each prompt (whitespace-normalized,
  ``...`` allowed as a wildcard); any other block is executed as a script and
  must not raise;
- blocks fenced with another language (``bash``, ``text``, ...) are not run,
  but a block of such a kind that contains a ``>>>`` prompt is an error (it
  would look checked while it is not);
- each file runs in a fresh temporary working directory, and NumPy's print
  options are restored afterwards so one file cannot change another's output.
"""

from __future__ import annotations

import doctest
import io
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# The README's examples are held to the same standard as the docs'.
DOC_FILES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]

# A fence is ``` or ~~~ (three or more) at the start of a line, then an info string.
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.S | re.M)
PYTHON_INFOS = {"python", "py", "pycon", "python3"}
OPTIONFLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
# The files that must carry runnable examples (other docs may have none).
MUST_HAVE_EXAMPLES = {"math.md", "rlrp.md", "index.md"}


def fenced_blocks(text: str):
    """``(language, first line number of the body, body)`` for every fenced block."""
    for match in FENCE.finditer(text):
        info = match.group("info").strip().split()
        language = info[0].lower() if info else ""
        lineno = text.count("\n", 0, match.start("body"))  # 0-based line of the body's first line
        yield language, lineno, match.group("body")


def python_blocks(text: str):
    return [(lineno, body) for language, lineno, body in fenced_blocks(text) if language in PYTHON_INFOS]


def is_doctest(body: str) -> bool:
    for line in body.splitlines():
        if line.strip():
            return line.lstrip().startswith(">>>")
    return False


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def run_markdown(path: Path) -> int:
    """Run every Python block of ``path``; return the number of examples run. Fails the test on the first error."""
    text = path.read_text(encoding="utf-8")
    namespace: dict = {"__name__": f"docs.{path.stem}", "__file__": str(path)}
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    examples = 0
    for lineno, body in python_blocks(text):
        where = f"{_shown(path)}:{lineno + 1}"
        if is_doctest(body):
            test = parser.get_doctest(body, namespace, where, str(path), lineno)
            report = io.StringIO()
            result = runner.run(test, out=report.write, clear_globs=False)
            namespace = test.globs  # DocTest works on a copy: carry its names to the next block
            examples += result.attempted
            if result.failed:
                pytest.fail(f"doctest block at {where} failed:\n{report.getvalue()}", pytrace=False)
        else:
            try:
                exec(compile(body, where, "exec"), namespace)
            except Exception as exc:  # noqa: BLE001 - report any failure with its place
                pytest.fail(f"python block at {where} raised {type(exc).__name__}: {exc}", pytrace=True)
            examples += 1
    return examples


def test_docs_exist():
    names = {p.name for p in DOCS.glob("*.md")}
    missing = {"index.md", "math.md", "rlrp.md"} - names
    assert not missing, f"docs/ is missing {sorted(missing)}"


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_doc_examples_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = np.get_printoptions()
    try:
        examples = run_markdown(path)
    finally:
        np.set_printoptions(**saved)
    if path.name in MUST_HAVE_EXAMPLES:
        assert examples > 0, f"{path.name} has no runnable example"


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_no_unchecked_prompts(path):
    """A ``>>>`` prompt outside a Python fence would look tested while it is not."""
    text = path.read_text(encoding="utf-8")
    bad = [f"{path.name}:{lineno + 1} ({language or 'no language'})"
           for language, lineno, body in fenced_blocks(text)
           if language not in PYTHON_INFOS and re.search(r"^\s*>>>", body, re.M)]
    assert not bad, f"prompts in blocks that are not run: {bad}; fence them as ```python"


LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


@pytest.mark.parametrize("name", sorted(MUST_HAVE_EXAMPLES) + ["../README.md"])
def test_relative_links_resolve(name):
    """Every relative link in the teaching docs and the README points to a file that exists."""
    path = (DOCS / name).resolve()
    if not path.exists():
        pytest.fail(f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    text = FENCE.sub("", text)  # links inside code are not links
    broken = []
    for match in LINK.finditer(text):
        target = match.group("target").split("#", 1)[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # anchors, http:, mailto:
            continue
        if not (path.parent / target).exists():
            broken.append(match.group("target"))
    assert not broken, f"{path.name}: broken relative links {broken}"


def test_collector_runs_doctests_and_catches_wrong_output(tmp_path):
    """The collector itself: a wrong printed number fails, a right one passes, names carry across blocks."""
    good = tmp_path / "good.md"
    good.write_text("```python\nimport numpy as np\nx = np.arange(3)\n```\n\n"
                    "```python\n>>> print(x.sum())\n3\n```\n\n```bash\necho not run\n```\n")
    assert run_markdown(good) == 2
    bad = tmp_path / "bad.md"
    bad.write_text("```python\n>>> print(1 + 1)\n3\n```\n")
    with pytest.raises(pytest.fail.Exception):
        run_markdown(bad)
    raising = tmp_path / "raising.md"
    raising.write_text("```python\nraise RuntimeError('boom')\n```\n")
    with pytest.raises(pytest.fail.Exception):
        run_markdown(raising)
