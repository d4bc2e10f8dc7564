"""``simple_hypersearch``: print one shell command per point of a hyperparameter grid.

Compatible with 0.1.4 (options, grid order, one flushed line per command). Decisions:

* Only ``{NAME}`` of a declared ``-p NAME`` is replaced (even in ``${NAME}``), by the
  ``shlex.quote``-d value; other braces stay as typed (``awk '{print $1}'``, ``${HOME}``, ``{}``;
  ``{{`` is no escape). An undeclared ``{identifier}`` not after ``$`` is rejected as a typo.
* No placeholders and no ``-p``: a one-point grid, so the pattern is printed once.
* Shuffling uses a local ``random.Random(--seed)``: exactly 0.1.4's shuffle up to 2**20 points
  (same seed, same order), a keyed Feistel permutation above. ``--n-samples N`` prints the
  first N of that order; N over the grid size prints the whole grid plus a note on stderr.
* A closed stdout (``| head -1``) ends the run quietly with exit status 141 (128 + SIGPIPE).
* ``--jsonl`` prints ``{"cmd": ..., "name": "lr=0.001,bs=32"}``; with no parameters ``name``
  is left out, so the scheduler names the job itself.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import random
import re
import shlex
import sys
from typing import Dict, Iterator, List, Mapping, NoReturn, Optional, Sequence, Tuple

from . import __version__
from .errors import ExitCode

#: A pattern piece: (literal text, False) or (parameter name, True).
Piece = Tuple[str, bool]
#: Declared parameters in command-line order: (name, values).
Params = List[Tuple[str, List[str]]]

# Text that looks like a placeholder; ``${NAME}`` is shell syntax and never counts.
_LOOKS_LIKE_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Grids up to this size are shuffled exactly (a list of 2**20 ints is a few tens of MB).
SHUFFLE_LIMIT = 1 << 20
# Four rounds of a keyed PRF give a pseudo-random permutation (Luby-Rackoff); two are spare.
FEISTEL_ROUNDS = 6


def parse_pattern(pattern: str, names: Sequence[str]) -> List[Piece]:
    """Split the pattern into literal text and ``{NAME}`` pieces for the declared names only."""
    if not names:
        return [(pattern, False)] if pattern else []
    alternatives = "|".join(re.escape(name) for name in names)
    pieces: List[Piece] = []
    pos = 0
    for match in re.finditer(r"\{(" + alternatives + r")\}", pattern):
        if match.start() > pos:
            pieces.append((pattern[pos : match.start()], False))
        pieces.append((match.group(1), True))
        pos = match.end()
    if pos < len(pattern):
        pieces.append((pattern[pos:], False))
    return pieces


def check_params(pieces: Sequence[Piece], params: Params) -> None:
    """Raise ValueError with a one-line message if the -p list and the pattern do not match."""
    seen = set()
    for name, values in params:
        if not name or "{" in name or "}" in name:
            raise ValueError(f"invalid parameter name {name!r} (must be non-empty, no braces)")
        if name in seen:
            raise ValueError(f"-p {name} is given more than once")
        if not values:
            raise ValueError(f"-p {name} has no values")
        seen.add(name)
    for text, is_placeholder in pieces:
        match = None if is_placeholder else _LOOKS_LIKE_PLACEHOLDER.search(text)
        if match:
            missing = f"-p {match.group(1)}" if params else "-p"
            raise ValueError(f"pattern has placeholder {match.group(0)} but no {missing} was given")
    used = {text for text, is_placeholder in pieces if is_placeholder}
    for name, _ in params:
        if name not in used:
            raise ValueError(f"-p {name} is never used: the pattern has no {{{name}}}")


def grid_size(sizes: Sequence[int]) -> int:
    """Number of grid points: the product of the value counts (1 for no parameters)."""
    return math.prod(sizes)


def decode_index(index: int, sizes: Sequence[int]) -> Tuple[int, ...]:
    """Value positions of grid point ``index`` in itertools.product order (last varies fastest)."""
    digits = []
    for size in reversed(sizes):  # mixed radix: the last parameter is the lowest digit
        index, digit = divmod(index, size)
        digits.append(digit)
    return tuple(reversed(digits))


def _feistel_round(key: bytes, rnd: int, half: int, half_bits: int) -> int:
    """Keyed pseudo-random function of one half block (SHAKE-256 gives any output width)."""
    nbytes = (half_bits + 7) // 8
    digest = hashlib.shake_256(key + bytes([rnd]) + half.to_bytes(nbytes, "big")).digest(nbytes)
    return int.from_bytes(digest, "big") & ((1 << half_bits) - 1)


def feistel_index(index: int, total: int, key: bytes) -> int:
    """Image of ``index`` under a keyed permutation of range(total), in O(1) memory.

    A balanced Feistel network permutes [0, 4**k) for the smallest k >= 1 with 4**k >= total;
    cycle-walking (re-encrypt until the result is < total) restricts it to range(total).
    """
    half_bits = max(1, ((total - 1).bit_length() + 1) // 2)
    mask = (1 << half_bits) - 1
    x = index
    while True:
        left, right = x >> half_bits, x & mask
        for rnd in range(FEISTEL_ROUNDS):
            left, right = right, left ^ _feistel_round(key, rnd, right, half_bits)
        x = (left << half_bits) | right
        if x < total:  # the domain is at most 4 * total: < 4 passes on average
            return x


def feistel_order(total: int, key: bytes) -> Iterator[int]:
    """All of range(total) in a keyed pseudo-random order, lazily."""
    return (feistel_index(i, total, key) for i in range(total))


def shuffled_order(total: int, rng: random.Random) -> Iterator[int]:
    """range(total) in an order fixed by ``rng``: exact shuffle when small, Feistel when huge."""
    if total <= SHUFFLE_LIMIT:  # the very calls 0.1.4 made, so its seeded orders are kept
        order = list(range(total))
        rng.shuffle(order)
        return iter(order)
    return feistel_order(total, rng.getrandbits(256).to_bytes(32, "big"))


def render(pieces: Sequence[Piece], values: Mapping[str, str]) -> str:
    """Fill the placeholders with shell-quoted values; literal text is kept as typed."""
    return "".join(shlex.quote(values[text]) if is_ph else text for text, is_ph in pieces)


def run_name(params: Params, values: Mapping[str, str]) -> str:
    """Readable job name from the values, e.g. ``lr=0.001,bs=32``."""
    return ",".join(f"{name}={values[name]}" for name, _ in params)


def grid_points(
    params: Params, mode: str, n_samples: Optional[int], rng: random.Random
) -> Iterator[Dict[str, str]]:
    """Yield {name: value} for the selected grid points without materialising the grid."""
    sizes = [len(values) for _, values in params]
    total = grid_size(sizes)
    order = range(total) if mode == "grid" else shuffled_order(total, rng)
    for index in itertools.islice(order, n_samples):
        positions = decode_index(index, sizes)
        yield {name: values[pos] for (name, values), pos in zip(params, positions)}


def positive_int(text: str) -> int:
    """argparse type for --n-samples: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0  # reported below, like zero and negative numbers
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def seed_int(text: str) -> int:
    """argparse type for --seed: any integer."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are a single stderr line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see --help)\n")


EPILOG = """\
example:
  simple_hypersearch "my_program --param1 {param1} --param2 {param2}" \\
      -p param1 0 1 -p param2 2 3 --sampling-mode grid
prints
  my_program --param1 0 --param2 2
  my_program --param1 0 --param2 3
  my_program --param1 1 --param2 2
  my_program --param1 1 --param2 3
Only {NAME} of a declared -p NAME is replaced, with the value shell-quoted;
other braces stay as typed. Pipe the output into simple_gpu_scheduler.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (options as in 0.1.4, plus --jsonl and --version)."""
    parser = _Parser(
        prog="simple_hypersearch",
        allow_abbrev=False,  # an option is spelled out, never guessed from a prefix
        description="Print one command per point of a hyperparameter grid, one per line.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command_pattern", help="command with {NAME} placeholders")
    parser.add_argument(
        "-p", "--parameter", nargs="+", action="append", default=[], metavar=("NAME", "VALUE"),
        help="a parameter name and its values, e.g. -p lr 0.01 0.001 (repeatable)",
    )
    parser.add_argument(
        "--sampling-mode", choices=["shuffled_grid", "grid"], default="shuffled_grid",
        help="grid order or shuffled grid order (default: shuffled_grid)",
    )
    parser.add_argument(
        "--n-samples", type=positive_int, metavar="N",
        help="print only the first N commands of the (shuffled) grid",
    )
    parser.add_argument("--seed", type=seed_int, metavar="S", help="seed for a reproducible order")
    parser.add_argument(
        "--jsonl", action="store_true",
        help='print JSON lines {"cmd": ..., "name": "lr=0.1,bs=32"} for the scheduler',
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Parse arguments, then write the commands to stdout one flushed line at a time."""
    parser = build_parser()
    args = parser.parse_args(argv)
    params: Params = [(p[0], p[1:]) for p in args.parameter]
    pieces = parse_pattern(args.command_pattern, [name for name, _ in params])
    try:
        check_params(pieces, params)
    except ValueError as exc:
        parser.error(str(exc))
    total = grid_size([len(values) for _, values in params])
    if args.n_samples is not None and args.n_samples > total:
        print(f"{parser.prog}: note: --n-samples {args.n_samples} exceeds the grid size "
              f"{total}; printing the whole grid", file=sys.stderr)
    rng = random.Random(args.seed)  # local generator; seed None draws from os.urandom
    try:
        for values in grid_points(params, args.sampling_mode, args.n_samples, rng):
            cmd = render(pieces, values)
            if args.jsonl:
                record = {"cmd": cmd, "name": run_name(params, values)} if params else {"cmd": cmd}
                cmd = json.dumps(record, ensure_ascii=False)
            sys.stdout.write(cmd + "\n")
            sys.stdout.flush()  # flush per line so a downstream scheduler starts at once
    except BrokenPipeError:
        # Reader gone: point stdout at devnull so the exit-time flush cannot raise again
        # (recipe from the `signal` module docs) and exit as a SIGPIPE death would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.BROKEN_PIPE
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
