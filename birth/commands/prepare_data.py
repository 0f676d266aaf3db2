"""`birth prepare-data`: rebuild the character statistics of tiny Shakespeare."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.shakespeare import (
    check_same_vocab,
    compute_stats,
    load_stats,
    read_corpus,
    save_stats,
    shipped_stats_path,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", type=Path, help="local corpus file (e.g. ../shared/data/tinyshakespeare.txt)")
    src.add_argument("--download", action="store_true", help="download the corpus from its canonical URL (cached by datasets)")
    p.add_argument("--out", type=Path, default=None, help="where to write the statistics JSON (default: the package's shipped file)")
    p.add_argument("--allow-new-vocab", action="store_true", help="accept a text whose vocabulary differs from the shipped one (needs --out)")


def run(argv: list[str], prog: str) -> int:
    from birth.cli import parse_args

    return execute(parse_args(add_arguments, argv, prog, __doc__))


def execute(args: argparse.Namespace) -> int:
    text = read_corpus(args.text, download=args.download)
    stats = compute_stats(text)
    out = args.out or shipped_stats_path()
    if args.allow_new_vocab and args.out is None:
        raise ValueError("--allow-new-vocab needs --out: the shipped statistics keep the 65-character vocabulary")
    if not args.allow_new_vocab:
        check_same_vocab(stats, load_stats())
    save_stats(stats, out)
    print(f"corpus: {stats.n_chars:,} characters, sha256 {stats.sha256}")
    print(f"vocabulary: N = {stats.vocab_size}; bigram pairs: {int(stats.bigram_counts.sum()):,} "
          f"({int((stats.bigram_counts > 0).sum()):,} distinct)")
    print(f"wrote {out}")
    return 0
