"""What every jetseg command line shares: one-line errors with exit code 2, and argument types."""
from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

from jetseg_core.profiles import MIN_INPUT_SIDE


class UsageError(Exception):
    """Bad user input found after parsing: reported as one line on stderr with exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors raise UsageError: main() prints one line and returns 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def usage_error(prog: str, error: Exception) -> int:
    """Print ``prog: error: <message>`` on stderr; the exit code for bad input."""
    print(f'{prog}: error: {error}', file=sys.stderr)
    return 2


def parse_size(text: str) -> tuple[int, int]:
    """'360x480' -> (360, 480), height x width; the network needs both sides >= 64."""
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must look like HxW (e.g. 360x480), got {text!r}') from None
    if h < MIN_INPUT_SIDE or w < MIN_INPUT_SIDE:
        raise argparse.ArgumentTypeError(
            f'size {text}: height and width must be at least {MIN_INPUT_SIDE}')
    return h, w


def _int_at_least(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected {expected}, got {text!r}') from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f'expected {expected}, got {text!r}')
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, 'a positive integer')


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, 'a whole number >= 0')


def positive_int_list(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]."""
    values = [positive_int(v) for v in text.split(',') if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f'expected comma-separated positive integers, got {text!r}')
    return values


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f'expected a non-negative number, got {text!r}')
    return value
