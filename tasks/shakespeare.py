"""Character statistics of the tiny Shakespeare corpus.

The triggered-bigram task only needs the vocabulary, the unigram counts and the bigram counts of
the corpus, so those (a few KB) ship as package data (`tasks/data/shakespeare_stats.json`) and the
main job runs offline. `birth prepare-data --text PATH` (or `--download`) rebuilds them from the
canonical corpus (checked by its sha256); any other text's statistics go to a file of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import torch

from birth.base.io import atomic_write_text, not_utf8

# Canonical public location of the corpus (Karpathy's char-rnn repository).
TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHIPPED_STATS = "shakespeare_stats.json"
# sha256 of that file (1,115,394 characters): only this text may rebuild the shipped statistics
# unless `birth prepare-data --force-shipped` says otherwise.
CANONICAL_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


class DataError(ValueError):
    """A corpus or statistics file is missing, empty or inconsistent."""


@dataclass(frozen=True)
class CorpusStats:
    """Vocabulary (sorted characters), unigram counts [N] and bigram counts [N, N] (row = previous)."""

    vocab: str
    unigram_counts: torch.Tensor
    bigram_counts: torch.Tensor
    n_chars: int
    sha256: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @cached_property
    def unigram_probs(self) -> torch.Tensor:
        return self.unigram_counts.double() / self.unigram_counts.sum()

    @cached_property
    def bigram_probs(self) -> torch.Tensor:
        """π_b(j | i) with rows summing to one (every row of the corpus is non-empty)."""
        counts = self.bigram_counts.double()
        return counts / counts.sum(dim=1, keepdim=True)

    def frequency_ranking(self) -> torch.Tensor:
        """Token ids sorted by decreasing unigram count, ties broken by token id (deterministic)."""
        order = torch.argsort(self.unigram_counts, descending=True, stable=True)
        return order

    def encode(self, text: str) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.vocab)}
        try:
            return torch.tensor([index[c] for c in text], dtype=torch.long)
        except KeyError as err:
            raise DataError(f"character {err.args[0]!r} is not in the vocabulary") from None

    def decode(self, tokens) -> str:
        return "".join(self.vocab[int(t)] for t in tokens)

    # -- serialization ---------------------------------------------------------------------------
    def to_json(self) -> dict:
        nz = torch.nonzero(self.bigram_counts)
        return {
            "vocab": self.vocab,
            "n_chars": self.n_chars,
            "sha256": self.sha256,
            "unigram_counts": self.unigram_counts.tolist(),
            # sparse: [prev, next, count] for the 1,403 pairs that occur
            "bigram_counts": [[int(i), int(j), int(self.bigram_counts[i, j])] for i, j in nz.tolist()],
        }

    @classmethod
    def from_json(cls, obj: dict) -> CorpusStats:
        try:
            vocab = obj["vocab"]
            n = len(vocab)
            unigram = torch.tensor(obj["unigram_counts"], dtype=torch.long)
            bigram = torch.zeros(n, n, dtype=torch.long)
            for i, j, c in obj["bigram_counts"]:
                bigram[i, j] = c
            stats = cls(vocab, unigram, bigram, int(obj["n_chars"]), str(obj["sha256"]))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise DataError(f"malformed statistics file: {err!r}") from None
        if unigram.shape != (n,) or list(vocab) != sorted(set(vocab)):
            raise DataError("malformed statistics file: vocabulary and unigram counts disagree")
        return stats


def compute_stats(text: str) -> CorpusStats:
    """Sorted character vocabulary, unigram counts and bigram counts over the whole text."""
    if not text:
        raise DataError("the corpus is empty")
    if len(text) < 2:
        # the task draws every next character from a bigram row: one character has none at all
        raise DataError(
            f"the corpus has a single character ({text!r}): no bigram (pair of adjacent characters)"
        )
    vocab = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    n = len(vocab)
    unigram = torch.bincount(ids, minlength=n)
    bigram = torch.bincount(ids[:-1] * n + ids[1:], minlength=n * n).view(n, n)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return CorpusStats(vocab, unigram, bigram, len(text), sha)


def read_corpus(path: str | os.PathLike | None = None, *, download: bool = False) -> str:
    """The corpus text, read through `datasets` from a local file or the canonical URL (cached).

    The whole file is one document (`sample_by="document"`), so newlines are kept and the bigram
    statistics cover every adjacent pair of characters.
    """
    if path is None and not download:
        raise DataError("give a corpus path (--text PATH) or ask for the download (--download)")
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise DataError(f"corpus {p} is a directory, not a text file")
        if not p.is_file():
            raise DataError(f"corpus file not found: {p}")
        if p.stat().st_size == 0:
            raise DataError(f"corpus file is empty: {p}")
        _check_utf8(p)
        source = str(p)
    else:
        source = TINY_SHAKESPEARE_URL
    from datasets import load_dataset  # slow import, only when a corpus is actually read
    from datasets.utils import logging as ds_logging

    # one document: its "Generating train split" bar says nothing, and stderr is for errors
    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        ds = load_dataset("text", data_files={"train": source}, sample_by="document", split="train")
    except Exception as err:  # noqa: BLE001 - datasets raises many types; report them uniformly
        raise DataError(f"could not load the corpus from {source}: {err}") from None
    finally:
        if bars:
            ds_logging.enable_progress_bar()
    text = "".join(ds["text"])
    if not text:
        raise DataError(f"corpus is empty: {source}")
    return text


def _check_utf8(path: Path) -> None:
    """A corpus is text: a file that is not UTF-8 is refused with the first bad byte and its offset."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"corpus {path}: {err.strerror}") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"corpus {path} {not_utf8(data, err)}") from None


def load_stats(path: str | os.PathLike | None = None) -> CorpusStats:
    """The shipped statistics (default) or those stored in a JSON file written by `save_stats`."""
    if path is None:
        raw = resources.files("tasks").joinpath("data", SHIPPED_STATS).read_text()
        where = "shipped statistics"
    else:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"statistics file not found: {p}")
        raw, where = p.read_text(), str(p)
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as err:
        raise DataError(f"{where} is not valid JSON: {err}") from None
    return CorpusStats.from_json(obj)


def save_stats(stats: CorpusStats, path: str | os.PathLike) -> None:
    """Write atomically (temp file + rename) so a failed write never leaves a half file."""
    atomic_write_text(path, json.dumps(stats.to_json(), separators=(",", ":")))


def shipped_stats_path() -> Path:
    return Path(str(resources.files("tasks").joinpath("data", SHIPPED_STATS)))


def check_same_vocab(new: CorpusStats, reference: CorpusStats) -> None:
    if new.vocab != reference.vocab:
        missing = sorted(set(reference.vocab) - set(new.vocab))
        extra = sorted(set(new.vocab) - set(reference.vocab))
        raise DataError(
            f"the text's vocabulary ({new.vocab_size} characters) differs from the shipped one "
            f"({reference.vocab_size}): missing {missing!r}, extra {extra!r}"
        )
