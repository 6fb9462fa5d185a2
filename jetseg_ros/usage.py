"""`--help` for our executables (rclpy ignores it, so the process would start and run instead), and the
node's parameter table as Markdown for the README (`python -m jetseg_ros.usage --markdown`)."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ['exit_if_help_requested', 'parameters_markdown', 'replace_generated_table']


def exit_if_help_requested(args: Sequence[str] | None, executable: str, summary: str,
                           parameters: Iterable[tuple[str, object, str]]) -> None:
    """Print usage and the parameters (name, default, description), then exit 0, when the
    command line before any --ros-args holds -h or --help."""
    argv = list(sys.argv[1:] if args is None else args)
    own = argv[:argv.index('--ros-args')] if '--ros-args' in argv else argv
    if not {'-h', '--help'} & set(own):
        return
    lines = [f'usage: ros2 run jetseg_ros {executable} [--ros-args -p NAME:=VALUE ... '
             f'--params-file FILE -r FROM:=TO]', '', summary, '', 'parameters:']
    for name, default, description in parameters:
        lines += [f'  {name} (default {default!r})', f'      {description}']
    try:
        print('\n'.join(lines), flush=True)
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exit's flush cannot fail again
    raise SystemExit(0)


# ----------------------------------------------------------------------------- parameter table

TABLE_START = ('<!-- parameters: generated from PARAMETERS in jetseg_ros/segmentation_node.py; '
               'regenerate with `python -m jetseg_ros.usage --update README.md` -->')
TABLE_END = '<!-- end of generated parameters -->'


def _cell(text: str) -> str:
    return text.replace('|', '\\|').replace('\n', ' ')


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if value == '':
        return "''"
    return str(value)


def _valid_values(spec: Any) -> str:
    if spec.choices:
        return ', '.join(spec.choices)
    if isinstance(spec.default, bool):
        return 'true, false'
    if spec.min_value is not None:
        return f'{spec.min_value:g}..{spec.max_value:g}'
    return 'text'


def parameters_markdown(parameters: Iterable[Any] | None = None) -> str:
    """The node's parameter table as Markdown, from the one source the node declares its parameters
    from, so that the README cannot drift from ``ros2 param describe``.

    ``parameters`` defaults to ``jetseg_ros.segmentation_node.PARAMETERS`` (items with name, default,
    description, choices, min_value, max_value, read_only).
    """
    if parameters is None:
        from jetseg_ros.segmentation_node import PARAMETERS as parameters
    rows = ['| parameter | default | valid values | set at run time | meaning |', '|---|---|---|---|---|']
    for spec in parameters:
        default = _cell(_value_text(spec.default))
        run_time = 'no (read-only)' if spec.read_only else 'yes'
        rows.append(f'| `{spec.name}` | `{default}` | {_cell(_valid_values(spec))} | {run_time} | '
                    f'{_cell(spec.description)} |')
    return '\n'.join(rows) + '\n'


def replace_generated_table(text: str, table: str) -> str:
    """``text`` with the block between TABLE_START and TABLE_END replaced by ``table``."""
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError('no generated parameter table (its start and end comments) in the file')
    head = text[:start + len(TABLE_START)]
    return f'{head}\n{table}{text[end:]}'


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jetseg_ros.usage --markdown` prints the parameter table; `--update FILE` rewrites it
    in place between its marker comments."""
    import argparse

    parser = argparse.ArgumentParser(prog='python -m jetseg_ros.usage',
                                     description="the segmentation node's parameter table as Markdown")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument('--markdown', action='store_true', help='print the table')
    group.add_argument('--update', metavar='FILE',
                       help='replace the generated table in FILE (e.g. README.md)')
    args = parser.parse_args(argv)
    table = parameters_markdown()
    if args.markdown:
        print(table, end='')
        return 0
    try:
        with open(args.update, encoding='utf-8') as f:
            text = f.read()
        new = replace_generated_table(text, table)
    except (OSError, ValueError) as exc:
        print(f'{parser.prog}: error: {args.update}: {exc}', file=sys.stderr)
        return 2
    if new != text:
        with open(args.update, 'w', encoding='utf-8') as f:
            f.write(new)
    print(f"{args.update}: parameter table {'updated' if new != text else 'already current'}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
