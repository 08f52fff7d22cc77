"""The documentation stays true: README.md is short, every relative link resolves, and
every `kbft` command shown in README.md and docs/*.md parses with the real parser.

Commands are taken from fenced ```bash / ```sh / ``` blocks: lines starting with `kbft`
or `.venv/bin/kbft` (also after `&&`, `||`, `;` or `|`), with `\\` continuations joined.
Only the arguments are checked (`build_parser().parse_args`); nothing runs, except
`kbft --help` and `kbft <subcommand> --help` for each subcommand the docs use.

A command shown on purpose as an error carries a comment on its line:
`# docs-test: skip (why it is invalid)`.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README] + sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 250

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
SHELL_LANGS = {"", "bash", "sh", "shell"}
SKIP = re.compile(r"#\s*docs-test:\s*skip\b[\s:(-]*(?P<reason>[^)]*)")
SEPARATORS = {"&&", "||", ";", "|"}
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def fenced_blocks(text: str):
    """(language, first line number, lines) of each fenced code block."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(2), m.group(3).lower(), i + 1
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        yield lang, start + 1, body
        i += 1


def prose(text: str) -> str:
    """The text outside fenced blocks and inline code, where links live."""
    return "\n".join(re.sub(r"`[^`]*`", "", line) for line in prose_keep_headings(text))


def logical_lines(body, first_line: int):
    """Shell lines with `\\` continuations joined: (line number, text)."""
    current, start = "", None
    for n, line in enumerate(body, first_line):
        if start is None:
            start = n
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        yield start, current + line
        current, start = "", None
    if current:
        yield start, current


def is_kbft(token: str) -> bool:
    return token == "kbft" or token.endswith("/kbft")


def documented_commands():
    """Every kbft command in the docs: (where, shown text, argv, skip reason or None)."""
    found = []
    for doc in DOCS:
        for lang, first, body in fenced_blocks(doc.read_text(encoding="utf-8")):
            if lang not in SHELL_LANGS:
                continue
            for n, line in logical_lines(body, first):
                skip = SKIP.search(line)
                try:
                    tokens = shlex.split(line, comments=True)
                except ValueError as err:  # unbalanced quotes: report it as a command
                    if "kbft" in line:
                        found.append((f"{rel(doc)}:{n}", line.strip(), None, str(err)))
                    continue
                segment, redirected = [], False
                for token in tokens + [";"]:
                    if token in (">", ">>"):  # `kbft ... > FILE`: the shell's, not kbft's
                        redirected = True
                        continue
                    if token not in SEPARATORS:
                        if not redirected:
                            segment.append(token)
                        continue
                    redirected = False
                    if segment and is_kbft(segment[0]):
                        reason = None
                        if skip:
                            reason = skip.group("reason").strip() or "<no reason given>"
                        found.append((f"{rel(doc)}:{n}", shlex.join(segment), segment[1:],
                                      reason))
                    segment = []
    return found


COMMANDS = documented_commands()


def subcommands_of(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@pytest.fixture(scope="module")
def parser():
    from keras_bert_ft.cli import build_parser
    return build_parser()


# --- README and links --------------------------------------------------------------


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n < MAX_README_LINES, (f"README.md has {n} lines; keep it under "
                                  f"{MAX_README_LINES} and move details to docs/")


def test_every_doc_says_what_it_covers():
    for doc in DOCS[1:]:
        lines = [l for l in doc.read_text(encoding="utf-8").splitlines() if l.strip()]
        assert lines and lines[0].startswith("# "), f"{rel(doc)}: starts without a title"
        assert len(lines) > 1 and not lines[1].startswith(("#", "```", "|", "-")), \
            f"{rel(doc)}: the title should be followed by what the doc covers"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(doc: Path) -> set:
    seen, out = {}, set()
    text = doc.read_text(encoding="utf-8")
    for line in prose_keep_headings(text):
        m = HEADING.match(line)
        if m:
            base = slug(m.group(2))
            k = seen.get(base, 0)
            seen[base] = k + 1
            out.add(base if k == 0 else f"{base}-{k}")
    return out


def prose_keep_headings(text: str):
    in_block, fence = False, ""
    for line in text.split("\n"):
        m = FENCE.match(line)
        if in_block:
            if line.strip().startswith(fence):
                in_block = False
            continue
        if m:
            in_block, fence = True, m.group(2)
            continue
        yield line


LINKS = [(doc, target) for doc in DOCS
         for target in LINK.findall(prose(doc.read_text(encoding="utf-8")))
         if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)]  # http:, mailto:, ...


def test_docs_have_links():
    assert any(doc == README for doc, _ in LINKS), "README.md links to no docs"


@pytest.mark.parametrize("doc,target", LINKS,
                         ids=[f"{rel(d)}->{t}" for d, t in LINKS])
def test_relative_link_resolves(doc, target):
    path, _, anchor = target.partition("#")
    dest = (doc.parent / path).resolve() if path else doc
    assert dest.exists(), f"{rel(doc)}: link to {target!r}: {dest} does not exist"
    if anchor and dest.suffix == ".md":
        assert anchor in anchors(dest), (f"{rel(doc)}: link to {target!r}: no heading "
                                         f"with anchor #{anchor} in {rel(dest)}")


# --- commands ------------------------------------------------------------------------


def test_docs_show_commands():
    assert len(COMMANDS) >= 10, f"only {len(COMMANDS)} kbft commands found in the docs"


@pytest.mark.parametrize("where,shown,argv,skip", COMMANDS,
                         ids=[f"{w}: {s}" for w, s, _, _ in COMMANDS])
def test_documented_command_parses(parser, capsys, where, shown, argv, skip):
    if skip is not None:
        if argv is None:
            pytest.fail(f"{where}: cannot split {shown!r}: {skip}")
        if skip == "<no reason given>":
            pytest.fail(f"{where}: 'docs-test: skip' needs a reason: {shown}")
        pytest.skip(f"{where}: shown as invalid on purpose: {skip}")
    try:
        parser.parse_args(argv)
    except SystemExit as exit_:
        err = capsys.readouterr().err.strip().splitlines()
        pytest.fail(f"{where}: `{shown}` does not parse (exit {exit_.code}): "
                    f"{err[-1] if err else ''}")


def kbft_command():
    script = Path(sys.executable).parent / "kbft"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "keras_bert_ft.cli"]


DOCUMENTED_SUBCOMMANDS = sorted({argv[0] for _, _, argv, _ in COMMANDS
                                 if argv and not argv[0].startswith("-")})


@pytest.mark.parametrize("sub", [None] + DOCUMENTED_SUBCOMMANDS,
                         ids=["kbft --help"] + [f"kbft {s} --help"
                                                for s in DOCUMENTED_SUBCOMMANDS])
def test_help_runs(sub):
    argv = kbft_command() + ([sub] if sub else []) + ["--help"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=env)
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr}"
    assert "usage: kbft" in proc.stdout


def test_cli_reference_covers_every_subcommand(parser):
    reference = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    headings = " ".join(m.group(2) for line in prose_keep_headings(reference)
                        if (m := HEADING.match(line)))
    missing = [s for s in subcommands_of(parser) if f"kbft {s}" not in headings]
    assert not missing, f"docs/cli.md has no section for: {', '.join(missing)}"
