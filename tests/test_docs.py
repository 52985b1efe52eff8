"""The README and docs/: every relative link (and ``#anchor``) resolves, and every flag in a
command block is one that the script it follows accepts.

Links: ``[text](path)``, ``![alt](path)``, ``[name]: path`` and ``<img src="path">`` outside code,
relative to the page; ``http(s):`` and other URLs are not followed. An anchor must be the
GitHub slug of a heading of the target page: the heading's text lowercased, punctuation
other than ``-`` and ``_`` removed, spaces turned into ``-``; a repeated slug gets ``-1``,
``-2``, ... in order.

Commands: the lines of fenced code blocks (``` or ~~~; not ``text``, ``json`` or ``python``
blocks) that run a script of this repository (``python X.py``, ``torchrun ... X.py``,
``python -m package.module``), joined over continuation lines ending in ``\\``. In a block
that shows a shell session only the ``$ `` lines (and their continuations) are commands.
Every ``--flag`` and ``-x`` after the script (after the subcommand for ``localize.py``) must
be an option string of the script's argparse parser: built in-process by the parser
builders where they exist, otherwise captured from the script itself, run in this process
until its first ``parse_args`` call.
"""
from __future__ import annotations

import argparse
import functools
import glob
import os
import re
import runpy
import shlex
import sys
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple
from unittest import mock

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_MAX_LINES = 200

FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
NOT_SHELL = {"text", "json", "python", "py", "yaml", "csv"}
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
IMG_SRC = re.compile(r"<img\b[^>]*\bsrc=[\"']([^\"']+)[\"']", re.IGNORECASE)
URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
CONTROL = {"&&", "||", "|", ";"}
LAUNCHERS = {"python", "python3", "torchrun"}
SHORT_FLAG = re.compile(r"^-[A-Za-z]$")


def doc_files(root: str = REPO) -> List[str]:
    """README.md and every page under docs/."""
    return [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "**", "*.md"),
                                                               recursive=True))


# ------------------------------------------------------------------------------------------ markdown


def split_markdown(text: str) -> Tuple[List[Tuple[int, str]], List[Tuple[int, str, List[str]]]]:
    """``(prose, blocks)``: the numbered lines outside fenced code, and each fenced block as
    (line number of its first line, info string, lines)."""
    prose, blocks = [], []
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence, block = match.group(1), (number + 1, match.group(2).lower(), [])
                blocks.append(block)
            else:
                prose.append((number, line))
        elif match and match.group(1).startswith(fence) and not match.group(2):
            fence = None
        else:
            blocks[-1][2].append(line)
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text (before the ``-1``, ``-2`` of repeats)."""
    text = INLINE_LINK.sub(lambda m: re.match(r"!?\[(.*)\]", m.group(0), re.S).group(1), heading)
    text = CODE_SPAN.sub(lambda m: m.group(2), text)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: str) -> set:
    """Every heading anchor of the markdown file ``path``."""
    prose, _ = split_markdown(open(path, encoding="utf-8").read())
    seen: Dict[str, int] = {}
    found = set()
    for _, line in prose:
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> Iterator[Tuple[int, str]]:
    """``(line number, target)`` of every link and image outside code."""
    prose, _ = split_markdown(text)
    for number, line in prose:
        bare = CODE_SPAN.sub("", line)
        match = REFERENCE_LINK.match(bare)
        if match:
            yield number, match.group(1)
            continue
        for pattern in (INLINE_LINK, IMG_SRC):
            for match in pattern.finditer(bare):
                yield number, match.group(1)


def link_problems(path: str, root: str = REPO) -> List[str]:
    """What is wrong with the relative links of the markdown file ``path`` (empty when all resolve)."""
    problems = []
    here = os.path.dirname(path)
    name = os.path.relpath(path, root)
    for number, target in links(open(path, encoding="utf-8").read()):
        if URL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(here, file_part)) if file_part else path
        if os.path.relpath(resolved, root).startswith(os.pardir):
            problems.append(f"{name}:{number}: {target} points outside the repository")
        elif not os.path.exists(resolved):
            problems.append(f"{name}:{number}: {target}: {os.path.relpath(resolved, root)} does not exist")
        elif anchor:
            if not resolved.endswith(".md") or os.path.isdir(resolved):
                problems.append(f"{name}:{number}: {target}: an anchor needs a markdown file")
            elif anchor not in anchors(resolved):
                problems.append(f"{name}:{number}: {target}: no heading of {os.path.relpath(resolved, root)} "
                                f"has the anchor #{anchor}")
    return problems


# ------------------------------------------------------------------------------------------ commands


def command_lines(text: str) -> Iterator[Tuple[int, str]]:
    """``(line number, command)`` of every shell command in the fenced blocks of ``text``,
    continuation lines joined; in a block with ``$ `` prompts only the prompted lines."""
    _, blocks = split_markdown(text)
    for start, info, lines in blocks:
        if info in NOT_SHELL:
            continue
        prompted = any(line.lstrip().startswith("$ ") for line in lines)
        command, first = None, 0
        for offset, line in enumerate(lines):
            stripped = line.strip()
            if command is None:
                if prompted and not line.lstrip().startswith("$ "):
                    continue
                command, first = "", start + offset
                if prompted:
                    stripped = stripped[2:]
            if stripped.endswith("\\"):
                command += stripped[:-1] + " "
                continue
            yield first, command + stripped
            command = None
        if command:
            yield first, command


def invocations(command: str) -> Iterator[Tuple[str, List[str]]]:
    """``(script, arguments)`` for each part of ``command`` (split at ``&&``, ``|``, ...) that runs a
    Python script (``X.py``) or module (``-m package.module``); comments are dropped."""
    tokens = shlex.split(command, comments=True)
    part: List[str] = []
    for token in tokens + [";"]:
        if token not in CONTROL:
            part.append(token)
            continue
        while part and ENV_ASSIGNMENT.match(part[0]):
            part = part[1:]
        if part and (os.path.basename(part[0]) in LAUNCHERS or part[0].endswith(".py")):
            for index, word in enumerate(part):
                if word.endswith(".py"):
                    yield os.path.normpath(word), part[index + 1:]
                    break
                if word == "-m" and index + 1 < len(part):
                    yield "-m " + part[index + 1], part[index + 2:]
                    break
        part = []


class _Parsed(BaseException):
    """Raised in place of parsing a command line, carrying the parser (a BaseException, so that a
    script's own error handling cannot swallow it)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


def captured_parser(run: Callable[[], object], what: str) -> argparse.ArgumentParser:
    """The parser that ``run`` (a script run in this process) builds, stopped at its first parse."""
    def stop(self, *args, **kwargs):
        raise _Parsed(self)

    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [what]
    try:
        with mock.patch.object(argparse.ArgumentParser, "parse_args", stop), \
                mock.patch.object(argparse.ArgumentParser, "parse_known_args", stop):
            run()
    except _Parsed as parsed:
        return parsed.parser
    finally:
        sys.argv, sys.path = saved_argv, saved_path
    raise AssertionError(f"{what} finished without parsing a command line")


def _builders() -> Dict[str, Callable[[], argparse.ArgumentParser]]:
    from data import convert_polar, synthetic
    from helper.parser import build_test_parser, build_train_parser
    from localization import cli

    return {
        "train_cvusa.py": lambda: build_train_parser("cvusa"),
        "train_vigor.py": lambda: build_train_parser("vigor"),
        "test_cvusa.py": lambda: build_test_parser("cvusa"),
        "test_vigor.py": lambda: build_test_parser("vigor"),
        "localize.py": cli.build_parser,
        "-m data.synthetic": synthetic.build_parser,
        "-m data.convert_polar": convert_polar.build_parser,
    }


def project_script(script: str, root: str = REPO) -> Optional[str]:
    """The file of ``script`` (a path or ``-m module``) in the repository; None for another
    module (``-m pytest``)."""
    if script.startswith("-m "):
        path = os.path.join(root, *script[3:].split(".")) + ".py"
        return path if os.path.exists(path) else None
    return os.path.join(root, script)


@functools.lru_cache(maxsize=None)
def parser_for(script: str) -> argparse.ArgumentParser:
    """The argparse parser of ``script`` (a repository path or ``-m module``)."""
    builders = _builders()
    if script in builders:
        return builders[script]()
    if script.startswith("-m "):
        return captured_parser(lambda: runpy.run_module(script[3:], run_name="__main__", alter_sys=True), script)
    return captured_parser(lambda: runpy.run_path(os.path.join(REPO, script), run_name="__main__"), script)


def _options(parser: argparse.ArgumentParser) -> set:
    return {option for action in parser._actions for option in action.option_strings}


def _subcommands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def flag_problems(script: str, arguments: Sequence[str], parser: argparse.ArgumentParser) -> List[str]:
    """The flags of ``arguments`` that ``parser`` (and, for a parser with subcommands, the
    subcommand named first) does not accept; ``[``/``]`` of optional parts are ignored."""
    problems = []
    words = [word.lstrip("[(").rstrip("])") for word in arguments]
    subcommands = _subcommands(parser)
    options, where = _options(parser), script
    for word in words:
        if word == "--":
            break
        if subcommands and not word.startswith("-") and where == script:
            if word not in subcommands:
                problems.append(f"{script}: unknown subcommand {word!r} (one of {', '.join(subcommands)})")
                break
            options, where = _options(subcommands[word]), f"{script} {word}"
            continue
        if word.startswith("--") and len(word) > 2 or SHORT_FLAG.match(word):
            flag = word.split("=", 1)[0]
            if flag not in options:
                problems.append(f"{where} does not accept {flag}")
    return problems


def command_problems(path: str, root: str = REPO) -> List[str]:
    """What is wrong with the commands of the markdown file ``path`` (empty when every flag is accepted)."""
    problems = []
    name = os.path.relpath(path, root)
    for number, command in command_lines(open(path, encoding="utf-8").read()):
        try:
            runs = list(invocations(command))
        except ValueError as exc:  # shlex: an unclosed quote
            problems.append(f"{name}:{number}: cannot split the command ({exc}): {command}")
            continue
        for script, arguments in runs:
            file = project_script(script, root)
            if file is None:
                continue
            if not os.path.isfile(file):
                problems.append(f"{name}:{number}: {script} is not a file of the repository")
                continue
            problems += [f"{name}:{number}: {problem}" for problem in flag_problems(script, arguments,
                                                                                    parser_for(script))]
    return problems


# ------------------------------------------------------------------------------------------ the docs

DOCS = doc_files()


def _id(path: str) -> str:
    return os.path.relpath(path, REPO)


def test_the_docs_exist():
    assert len(DOCS) > 1, "docs/ holds no page"


def test_readme_is_page_one_sized():
    lines = open(os.path.join(REPO, "README.md"), encoding="utf-8").read().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details into docs/"


@pytest.mark.parametrize("path", DOCS, ids=_id)
def test_links_resolve(path):
    problems = link_problems(path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=_id)
def test_command_flags_are_accepted(path):
    problems = command_problems(path)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------ the checker


def test_slug_follows_github():
    assert slug("Training for re-ranking: `--lambda_recentre`") == "training-for-re-ranking---lambda_recentre"
    assert slug("The off-centre recipe: `configs/cvusa_offcentre.json`") == \
        "the-off-centre-recipe-configscvusa_offcentrejson"
    assert slug("Evaluation rules (what published numbers mean)") == "evaluation-rules-what-published-numbers-mean"
    assert slug("See [the demo](x.md#y), **now**") == "see-the-demo-now"


def _write(root, name: str, text: str) -> str:
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def test_link_checker_catches_broken_links_and_anchors(tmp_path):
    root = str(tmp_path)
    _write(root, "docs/page.md", "# Page\n\n## Usage\n\n## Usage\n\n```bash\n# Not a heading\n```\n")
    _write(root, "docs/images/a.png", "")
    readme = _write(root, "README.md", "\n".join([
        "[fine](docs/page.md) [fine too](docs/page.md#usage-1) ![img](docs/images/a.png)",
        "[web](https://example.com/x#y) [self](#top) [in code `[x](nope.md)`](docs/page.md)",
        "[bad anchor](docs/page.md#usage-2) [code comment](docs/page.md#not-a-heading)",
        "[missing](docs/nope.md) <img src=\"docs/images/b.png\">",
        "[outside](../elsewhere.md)",
        "[ref]: docs/missing.md",
        "# Top",
    ]) + "\n")
    assert link_problems(readme, root) == [
        "README.md:3: docs/page.md#usage-2: no heading of docs/page.md has the anchor #usage-2",
        "README.md:3: docs/page.md#not-a-heading: no heading of docs/page.md has the anchor #not-a-heading",
        "README.md:4: docs/nope.md: docs/nope.md does not exist",
        "README.md:4: docs/images/b.png: docs/images/b.png does not exist",
        "README.md:5: ../elsewhere.md points outside the repository",
        "README.md:6: docs/missing.md: docs/missing.md does not exist",
    ]


def test_command_checker_catches_made_up_flags(tmp_path):
    """Made-up flags on a command line, a continuation line and a ``$`` session line are found,
    with the real parsers; flags of torchrun, of output lines and of text blocks are not checked."""
    root = str(tmp_path)
    for script in ("train_cvusa.py", "test_vigor.py", "localize.py", "experiments/offset_study.py"):
        _write(root, script, "")
    _write(root, "data/synthetic.py", "")
    doc = _write(root, "docs/page.md", "\n".join([
        "```bash",
        "python train_cvusa.py --data_root DATA --made_up_flag 3   # --not_checked in a comment",
        "OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 train_cvusa.py --batch_size 8 \\",
        "    --lr 1e-3 --learning_rate 1e-3",
        "python localize.py query --index DIR [-k 5] [--out DIR] [--nonsense] PANORAMA",
        "python localize.py search --index DIR",
        "python -m data.synthetic --layout vigor --cities A,B && python -m pytest -q --whatever",
        "python experiments/offset_study.py --keep runs --invented",
        "python missing_script.py --x",
        "```",
        "",
        "```",
        "$ python test_vigor.py --checkpoint x.pth \\",
        "      --rerank 10 --rerank_scor sum",
        "output line --not_a_flag",
        "```",
        "",
        "```text",
        "python train_cvusa.py --in_a_text_block",
        "```",
    ]) + "\n")
    assert command_problems(doc, root) == [
        "docs/page.md:2: train_cvusa.py does not accept --made_up_flag",
        "docs/page.md:3: train_cvusa.py does not accept --learning_rate",
        "docs/page.md:5: localize.py query does not accept --nonsense",
        "docs/page.md:6: localize.py: unknown subcommand 'search' (one of index, query)",
        "docs/page.md:8: experiments/offset_study.py does not accept --invented",
        "docs/page.md:9: missing_script.py is not a file of the repository",
        "docs/page.md:13: test_vigor.py does not accept --rerank_scor",
    ]


def test_captured_parser_of_a_script_without_a_builder():
    parser = parser_for("benchmarks/bench_index.py")
    assert {"--sizes", "--dims", "--kinds", "--refine_bits"} <= _options(parser)
