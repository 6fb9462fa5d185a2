"""The README and docs/ stay true to the code: every link resolves (file and GitHub anchor), every
command shown in a ```bash block uses only flags, parameters and launch arguments that exist, the
README's parameter table is the one PARAMETERS generates, and every CLI answers --help.

Parsers are taken in-process (a module's build_parser(), or the parser its main() builds), so the
file stays fast; no process is spawned.
"""
from __future__ import annotations

import argparse
import ast
import functools
import importlib
import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]

# ----------------------------------------------------------------------------- Markdown reading

_FENCE = re.compile(r'^\s{0,3}(`{3,}|~{3,})\s*([\w+-]*)')
_HEADING = re.compile(r'^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$')
_LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
_REFERENCE = re.compile(r'^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+"[^"]*")?\s*$')
_HTML_ANCHOR = re.compile(r'<a\s[^>]*(?:name|id)="([^"]+)"', re.IGNORECASE)
_CODE_SPAN = re.compile(r'(`+)(?:(?!\1).)+?\1')
_COMMENT = re.compile(r'<!--.*?-->', re.DOTALL)


def split_markdown(text: str) -> tuple[list[tuple[int, str]], list[tuple[str, int, list[str]]]]:
    """(prose lines with their numbers, fenced blocks as (language, first line number, lines))."""
    prose: list[tuple[int, str]] = []
    blocks: list[tuple[str, int, list[str]]] = []
    fence: str | None = None
    text = _COMMENT.sub(lambda m: '\n' * m.group(0).count('\n'), text)  # keeps line numbers
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                blocks.append((match.group(2).lower(), number + 1, []))
            else:
                prose.append((number, line))
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                and not match.group(2):
            fence = None
        else:
            blocks[-1][2].append(line)
    return prose, blocks


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # a link in a heading: its text
    text = re.sub(r'<[^>]+>', '', text).strip().lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors_of(path: Path) -> set[str]:
    prose, _ = split_markdown(path.read_text(encoding='utf-8'))
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose:
        anchors.update(_HTML_ANCHOR.findall(line))
        match = _HEADING.match(line)
        if not match:
            continue
        base = github_anchor(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        anchors.add(base if count == 0 else f'{base}-{count}')
    return anchors


def link_problems(path: Path, root: Path) -> list[str]:
    """Links in ``path`` whose file (inside ``root``) or Markdown anchor does not exist."""
    prose, _ = split_markdown(path.read_text(encoding='utf-8'))
    problems = []
    for number, line in prose:
        plain = _CODE_SPAN.sub('', line)
        targets = _LINK.findall(plain) + _REFERENCE.findall(plain)
        for target in targets:
            if re.match(r'^[a-z][a-z0-9+.-]*:', target, re.IGNORECASE):  # http:, https:, mailto:
                continue
            where = f'{path.relative_to(root)}:{number}: {target}'
            file_part, _, anchor = target.partition('#')
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.is_relative_to(root.resolve()):
                problems.append(f'{where}: points outside the repository')
            elif not linked.exists():
                problems.append(f'{where}: no such file')
            elif anchor and linked.suffix == '.md' and anchor not in anchors_of(linked):
                problems.append(f'{where}: no heading with anchor #{anchor} in {linked.name}')
    return problems


# ----------------------------------------------------------------------------- shell commands

def _strip_comment(line: str) -> str:
    """``line`` without a shell comment: an unquoted # at the start of a word."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in '\'"':
            quote = ch
        elif ch == '#' and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def shell_commands(lines: list[str], first_number: int) -> list[tuple[int, list[str]]]:
    """Simple commands of a bash block as (line number, words): continuation lines joined, comments
    dropped, split at ;, &&, ||, | and parentheses."""
    commands = []
    logical, start = '', None
    for offset, raw in enumerate(lines):
        line = _strip_comment(raw)
        start = first_number + offset if start is None else start
        if line.rstrip().endswith('\\'):
            logical += line.rstrip()[:-1] + ' '
            continue
        logical += line
        lexer = shlex.shlex(logical, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = ''
        words: list[str] = []
        for token in list(lexer) + [';']:
            if token and set(token) <= set(';&|()<>'):
                if words:
                    commands.append((start, words))
                words = []
            else:
                words.append(token)
        logical, start = '', None
    return commands


def _without_wrappers(words: list[str]) -> list[str]:
    """Drop leading VAR=value assignments and nice/time/exec."""
    i = 0
    while i < len(words):
        word = words[i]
        if re.match(r'^[A-Za-z_]\w*=', word) or word in ('time', 'exec', 'env'):
            i += 1
        elif word == 'nice':
            i += 3 if i + 1 < len(words) and words[i + 1] == '-n' else 1
        else:
            break
    return words[i:]


@functools.lru_cache(maxsize=1)
def console_scripts() -> dict[str, str]:
    """Executable name -> module, from setup.py's entry points."""
    text = (ROOT / 'setup.py').read_text(encoding='utf-8')
    return dict(re.findall(r"'([\w-]+) = ([\w.]+):main'", text))


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__('parser captured')
        self.parser = parser


def _capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
    raise _Parsed(self)


@functools.cache
def parser_for(target: str) -> argparse.ArgumentParser:
    """The argparse parser of a module ('jetseg_core.train') or script ('scripts/x.py'): its
    build_parser() where it has one, else the parser its parse_args()/main() builds, caught at the
    moment it parses (so nothing runs)."""
    if target.endswith('.py'):
        spec = importlib.util.spec_from_file_location(f'_doc_script_{Path(target).stem}', ROOT / target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    if hasattr(module, 'build_parser'):
        return module.build_parser()
    entry = getattr(module, 'parse_args', None) or module.main
    with mock.patch.object(argparse.ArgumentParser, 'parse_args', _capture), \
            mock.patch.object(argparse.ArgumentParser, 'parse_known_args', _capture):
        try:
            entry([])
        except _Parsed as parsed:
            return parsed.parser
    raise AssertionError(f'{target}: no argparse parser found')


def _launch_arguments() -> set[str]:
    tree = ast.parse((ROOT / 'launch' / 'jetseg.launch.py').read_text(encoding='utf-8'))
    for node in tree.body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, 'targets', [])
        if any(isinstance(t, ast.Name) and t.id == 'ARGUMENTS' for t in targets):
            return {entry.elts[0].value for entry in node.value.elts} | {'profile'}
    raise AssertionError('launch/jetseg.launch.py: no ARGUMENTS table')


def _node_parameters(executable: str) -> set[str]:
    module = importlib.import_module(console_scripts()[executable])
    return {p if isinstance(p, str) else getattr(p, 'name', None) or p[0]
            for p in module.PARAMETERS} | {'use_sim_time'}


def _flags(words: list[str]) -> list[str]:
    flags = []
    for word in words:
        if word == '--':
            break
        if word.startswith('-') and len(word) > 1 and not re.match(r'^-\d', word):
            flags.append(word.split('=', 1)[0])
    return flags


def _check_cli(target: str, args: list[str]) -> list[str]:
    known = set(parser_for(target)._option_string_actions)
    return [f"{target} has no option '{flag}'" for flag in _flags(args) if flag not in known]


def command_problems(words: list[str]) -> list[str]:
    """What is wrong with one documented command (empty when it is fine or not ours)."""
    words = _without_wrappers(words)
    if not words:
        return []
    program = Path(words[0]).name
    scripts = console_scripts()
    if program.startswith('jetseg-'):
        if program not in scripts:
            return [f"'{program}' is not a jetseg command (setup.py has {', '.join(sorted(scripts))})"]
        return _check_cli(scripts[program], words[1:])
    if re.fullmatch(r'python3?(\.\d+)?|torchrun', program):
        rest = words[1:]
        if '-m' in rest:
            module = rest[rest.index('-m') + 1]
            if not module.startswith(('jetseg_core', 'jetseg_ros')):
                return []
            if importlib.util.find_spec(module) is None:
                return [f"python -m {module}: no such module"]
            return _check_cli(module, rest[rest.index('-m') + 2:])
        script = next((w for w in rest if not w.startswith('-')), '')
        if script.startswith('scripts/') and script.endswith('.py'):
            if not (ROOT / script).is_file():
                return [f'{script}: no such script']
            return _check_cli(script, rest[rest.index(script) + 1:])
        return []
    if program == 'ros2' and len(words) >= 4 and words[2] == 'jetseg_ros':
        if words[1] == 'launch':
            if not (ROOT / 'launch' / words[3]).is_file():
                return [f'launch/{words[3]}: no such launch file']
            known = _launch_arguments()
            names = [w.split(':=', 1)[0] for w in words[4:] if ':=' in w]
            return [f"{words[3]} has no launch argument '{n}'" for n in names if n not in known]
        if words[1] == 'run':
            if words[3] not in scripts:
                return [f"jetseg_ros has no executable '{words[3]}'"]
            known = _node_parameters(words[3])
            names = [words[i + 1].split(':=', 1)[0] for i, w in enumerate(words[:-1]) if w == '-p']
            return [f"{words[3]} has no parameter '{n}'" for n in names if n not in known]
    return []


def documented_command_problems(path: Path, root: Path) -> list[str]:
    _, blocks = split_markdown(path.read_text(encoding='utf-8'))
    problems = []
    for language, first, lines in blocks:
        if language not in ('bash', 'sh', 'shell', 'console'):
            continue
        for number, words in shell_commands(lines, first):
            problems += [f'{path.relative_to(root)}:{number}: {p}' for p in command_problems(words)]
    return problems


# ----------------------------------------------------------------------------- the tests

def test_docs_exist_and_each_page_says_what_it_is_for():
    assert [p.name for p in DOC_FILES[1:]], 'docs/ has no pages'
    for page in DOC_FILES[1:]:
        lines = [line for line in page.read_text(encoding='utf-8').splitlines() if line.strip()]
        assert lines[0].startswith('# ') and not lines[1].startswith(('#', '-', '|', '`')), \
            f'{page.name}: the title must be followed by one line saying what the page is for'


def test_readme_and_docs_links_point_to_existing_files_and_anchors():
    problems = [p for doc in DOC_FILES for p in link_problems(doc, ROOT)]
    assert not problems, 'broken links:\n' + '\n'.join(problems)


def test_link_check_reports_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'page.md').write_text("# Page\n\n## Where the node's time goes\n\n## Où ça?\n")
    readme = tmp_path / 'README.md'
    readme.write_text(
        '# T\n\n## Section two\n\n'
        "[ok](docs/page.md#where-the-nodes-time-goes) [ok](docs/page.md#où-ça) [ok](#section-two)\n"
        '[bad file](docs/missing.md) [bad anchor](docs/page.md#where-the-time-goes)\n'
        '[bad local](#nowhere) [web](https://example.com/x#y) `[code](not/checked.md)`\n'
        '```bash\necho "[not a link](nope.md)"\n```\n')
    problems = link_problems(readme, tmp_path)
    assert problems == [
        'README.md:6: docs/missing.md: no such file',
        'README.md:6: docs/page.md#where-the-time-goes: '
        'no heading with anchor #where-the-time-goes in page.md',
        'README.md:7: #nowhere: no heading with anchor #nowhere in README.md',
    ]


def test_commands_in_docs_use_only_flags_parameters_and_launch_arguments_that_exist():
    problems = [p for doc in DOC_FILES for p in documented_command_problems(doc, ROOT)]
    assert not problems, 'documented commands that would fail:\n' + '\n'.join(problems)


def test_command_check_reports_unknown_flags_programs_parameters_and_launch_arguments(tmp_path):
    doc = tmp_path / 'README.md'
    doc.write_text(
        '```bash\n'
        'jetseg-train --profile nano --epochs 2 \\\n    --no-such-flag 3   # a comment --ignored\n'
        'OMP_WAIT_POLICY=PASSIVE nice -n 19 .venv/bin/jetseg-benchmark --threads 1,2 --gap-ms=15 '
        '&& jetseg-eval --bogus\n'
        'jetseg-nope --help\n'
        'python -m jetseg_core.train --epochs 1 --epoch-count 1\n'
        'torchrun --nproc-per-node 2 -m jetseg_core.train --amp\n'
        'python scripts/benchmark_node.py --seconds 5 --minutes 1\n'
        'ros2 launch jetseg_ros nano.launch.py image:=/cam rviz:=true camera:=/x\n'
        'ros2 run jetseg_ros segmentation_node --ros-args -p profile:=agx -p num_thread:=1\n'
        '```\n'
        '```text\njetseg-train --not-a-command\n```\n')
    assert documented_command_problems(doc, tmp_path) == [
        "README.md:2: jetseg_core.train has no option '--no-such-flag'",
        "README.md:4: jetseg_core.evaluate has no option '--bogus'",
        f"README.md:5: 'jetseg-nope' is not a jetseg command "
        f"(setup.py has {', '.join(sorted(console_scripts()))})",
        "README.md:6: jetseg_core.train has no option '--epoch-count'",
        "README.md:8: scripts/benchmark_node.py has no option '--minutes'",
        "README.md:9: nano.launch.py has no launch argument 'camera'",
        "README.md:10: segmentation_node has no parameter 'num_thread'",
    ]


def test_readme_parameter_table_is_the_one_generated_from_parameters():
    from jetseg_ros.usage import TABLE_END, TABLE_START, parameters_markdown

    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    assert TABLE_START in readme and TABLE_END in readme, 'README.md lacks the generated parameter table'
    current = readme[readme.index(TABLE_START) + len(TABLE_START):readme.index(TABLE_END)].strip('\n')
    assert current == parameters_markdown().strip('\n'), (
        "README.md's parameter table differs from PARAMETERS: "
        'run `python -m jetseg_ros.usage --update README.md`')


def test_parameter_table_lists_every_parameter_with_default_range_and_description():
    from jetseg_ros.segmentation_node import PARAMETERS
    from jetseg_ros.usage import parameters_markdown

    rows = parameters_markdown().splitlines()[2:]
    assert len(rows) == len(PARAMETERS)
    by_name = {row.split('|')[1].strip(' `'): row for row in rows}
    alpha = [c.strip() for c in by_name['overlay_alpha'].split('|')[1:-1]]
    assert alpha[1:4] == ['`0.5`', '0..1', 'yes']
    profile = [c.strip() for c in by_name['profile'].split('|')[1:-1]]
    assert profile[1:4] == ['`nano`', 'nano, agx, workstation', 'no (read-only)']
    assert [c.strip() for c in by_name['checkpoint'].split('|')[1:-1]][1] == "`''`"
    for spec in PARAMETERS:
        assert spec.description.replace('|', '\\|') in by_name[spec.name]


def test_usage_update_rewrites_only_the_generated_table(tmp_path, capsys):
    from jetseg_ros.usage import TABLE_END, TABLE_START, main, parameters_markdown

    doc = tmp_path / 'README.md'
    doc.write_text(f'# Title\n\nbefore\n{TABLE_START}\n| stale |\n{TABLE_END}\nafter\n')
    assert main(['--update', str(doc)]) == 0
    assert doc.read_text() == f'# Title\n\nbefore\n{TABLE_START}\n{parameters_markdown()}{TABLE_END}\nafter\n'
    assert main(['--markdown']) == 0
    assert parameters_markdown() in capsys.readouterr().out
    (tmp_path / 'plain.md').write_text('# no table here\n')
    assert main(['--update', str(tmp_path / 'plain.md')]) == 2
    assert 'no generated parameter table' in capsys.readouterr().err


def test_every_cli_prints_its_help_and_exits_0(capsys):
    for executable, module_name in sorted(console_scripts().items()):
        module = importlib.import_module(module_name)
        with pytest.raises(SystemExit) as stopped:
            module.main(['--help'])
        out = capsys.readouterr().out
        assert stopped.value.code in (0, None), f'{executable} --help exited {stopped.value.code}'
        assert 'usage:' in out, f'{executable} --help printed no usage'
        if executable.startswith('jetseg-'):
            options = {o for o in parser_for(module_name)._option_string_actions if o.startswith('--')}
            missing = sorted(o for o in options if o not in out)
            assert not missing, f'{executable} --help does not list {missing}'
        else:  # the ROS executables list their parameters
            for name in _node_parameters(executable) - {'use_sim_time'}:
                assert f'  {name} (default' in out, f'{executable} --help does not list {name}'
