"""`birth prepare-data`: rebuild the character statistics of tiny Shakespeare.

The package's shipped statistics (tasks/data/shakespeare_stats.json) are rebuilt only from the
canonical corpus, recognized by its sha256, or with --force-shipped. The statistics of any other
text go to --out, by default ./<TEXT name>_stats.json in the current directory, which is never
replaced; an existing --out file holding other statistics is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from birth.base.io import check_writable
from birth.cli import CLIError, parse_args
from tasks.shakespeare import (
    CANONICAL_SHA256,
    DataError,
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
    src.add_argument(
        "--download",
        action="store_true",
        help="download the corpus from its canonical URL (cached by datasets)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the statistics JSON (default: the package's shipped file for the canonical corpus, ./<TEXT name>_stats.json for any other text)",
    )
    p.add_argument(
        "--force-shipped",
        action="store_true",
        help="replace the package's shipped statistics with those of a text that is not the canonical corpus (same 65 characters)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file that holds other statistics (never the shipped file: see --force-shipped)",
    )
    p.add_argument(
        "--allow-new-vocab",
        action="store_true",
        help="accept a text whose vocabulary differs from the shipped one (never into the shipped file)",
    )


def run(argv: list[str], prog: str) -> int:
    return execute(parse_args(add_arguments, argv, prog, __doc__))


def _is_shipped(path: Path) -> bool:
    return path.resolve() == shipped_stats_path().resolve()


def _check_out_file(out: Path) -> None:

    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give the statistics file's path")
    check_writable(out.parent, "--out")


def execute(args: argparse.Namespace) -> int:

    shipped = shipped_stats_path()
    new_vocab_refused = CLIError(
        "--allow-new-vocab: the shipped statistics keep their 65 characters; choose an --out"
    )
    if args.allow_new_vocab and (args.force_shipped or (args.out is not None and _is_shipped(args.out))):
        raise new_vocab_refused
    if args.force_shipped and args.out is not None and not _is_shipped(args.out):
        raise CLIError(f"--force-shipped writes the shipped statistics {shipped}; drop --out {args.out}")
    if args.out is not None:
        _check_out_file(args.out)  # before the corpus is read

    try:
        text = read_corpus(args.text, download=args.download)
        stats = compute_stats(text)
    except DataError as err:
        # the corpus the user handed in, named with the reason
        given = "--text" if args.text is None or str(args.text) in str(err) else f"--text {args.text}"
        raise CLIError(f"{given}: {err}" if args.text is not None else str(err)) from None
    canonical = stats.sha256 == CANONICAL_SHA256
    source = str(args.text) if args.text is not None else "the downloaded corpus"
    if args.out is not None:
        out = args.out
    elif canonical or args.force_shipped:
        out = shipped
    else:
        # a casual command on another text never writes the package data, nor replaces a file
        out = Path(f"{args.text.stem if args.text is not None else 'tinyshakespeare'}_stats.json")
        if out.exists():
            raise CLIError(
                f"{source} is not the canonical corpus, so its statistics go to ./{out}, which exists; "
                "choose a file with --out"
            )
        _check_out_file(out)
    if _is_shipped(out) and not (canonical or args.force_shipped):
        raise CLIError(
            f"{source} is not the canonical tiny Shakespeare (sha256 {stats.sha256[:12]}…, expected "
            f"{CANONICAL_SHA256[:12]}…): the shipped statistics are kept; write elsewhere with --out, "
            "or replace them anyway with --force-shipped"
        )
    if args.allow_new_vocab and _is_shipped(out):
        raise new_vocab_refused
    if not args.allow_new_vocab:
        try:
            check_same_vocab(stats, load_stats())
        except ValueError as err:
            raise CLIError(
                f"{err}; --allow-new-vocab accepts it (into --out, never the shipped file)"
            ) from None

    new = stats.to_json()
    unchanged = out.is_file() and _same_content(out, new)
    if out.exists() and not unchanged and not _is_shipped(out) and not args.overwrite:
        raise CLIError(f"--out {out} exists and holds other statistics; pass --overwrite to replace it")
    if not unchanged:
        save_stats(stats, out)
    print(
        f"corpus: {stats.n_chars:,} characters, sha256 {stats.sha256}"
        + (" (the canonical tiny Shakespeare)" if canonical else " (not the canonical tiny Shakespeare)")
    )
    print(
        f"vocabulary: N = {stats.vocab_size}; bigram pairs: {int(stats.bigram_counts.sum()):,} "
        f"({int((stats.bigram_counts > 0).sum()):,} distinct)"
    )
    print(f"{out} is up to date" if unchanged else f"wrote {out}")
    return 0


def _same_content(path: Path, obj: dict) -> bool:
    import json

    try:
        return json.loads(path.read_text()) == obj
    except (OSError, ValueError):
        return False
