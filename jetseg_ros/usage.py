"""`--help` for our executables: rclpy ignores it, so the process would start and run instead."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence

__all__ = ['exit_if_help_requested']


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
