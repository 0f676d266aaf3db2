"""Shakespeare statistics: the shipped JSON equals what the corpus gives, and errors are clear.

The corpus is read from `../shared/data/tinyshakespeare.txt` relative to the repository root
(never committed). Everything that reads it runs with `datasets` offline and its caches in a
temporary directory, so no test touches the network or the home cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from birth.cli import main as cli_main
from tasks.shakespeare import (
    CorpusStats,
    DataError,
    check_same_vocab,
    compute_stats,
    load_stats,
    read_corpus,
    save_stats,
    shipped_stats_path,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

needs_corpus = pytest.mark.skipif(
    not CORPUS.is_file(), reason=f"tiny Shakespeare corpus not found at {CORPUS}"
)

# Facts of the corpus (reference-facts.md, "Birth of a Transformer — task")
N_CHARS = 1_115_394
N_PAIRS = 1_115_393
N_DISTINCT_PAIRS = 1_403
VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _offline(mp: pytest.MonkeyPatch, cache: Path) -> None:
    """datasets offline, every Hugging Face cache under `cache` (env and already-imported config)."""
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_HOME", str(cache / "hf_home"))
    mp.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    mp.setenv("HF_MODULES_CACHE", str(cache / "modules"))
    import datasets.config

    mp.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    mp.setattr(datasets.config, "HF_CACHE_HOME", str(cache / "hf_home"))
    mp.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "datasets")
    mp.setattr(datasets.config, "HF_MODULES_CACHE", cache / "modules")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    _offline(monkeypatch, tmp_path / "hf")
    return tmp_path / "hf"


@pytest.fixture(scope="module")
def corpus_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    if not CORPUS.is_file():
        pytest.skip(f"tiny Shakespeare corpus not found at {CORPUS}")
    cache = tmp_path_factory.mktemp("hf")
    with pytest.MonkeyPatch.context() as mp:
        _offline(mp, cache)
        text = read_corpus(CORPUS)
    assert (cache / "datasets").is_dir(), "datasets did not use the temporary cache"
    return text


@pytest.fixture(scope="module")
def corpus_stats(corpus_text: str) -> CorpusStats:
    return compute_stats(corpus_text)


# -- the shipped statistics are those of the corpus --------------------------------------------


@needs_corpus
def test_read_corpus_keeps_the_whole_text(corpus_text: str) -> None:
    raw = CORPUS.read_text(encoding="utf-8")
    assert corpus_text == raw  # newlines kept, nothing split or stripped
    assert len(corpus_text) == N_CHARS


@needs_corpus
def test_shipped_stats_equal_recomputed(corpus_stats: CorpusStats) -> None:
    shipped = load_stats()
    assert shipped.vocab == corpus_stats.vocab
    assert shipped.n_chars == corpus_stats.n_chars
    assert shipped.sha256 == corpus_stats.sha256
    assert torch.equal(shipped.unigram_counts, corpus_stats.unigram_counts)
    assert torch.equal(shipped.bigram_counts, corpus_stats.bigram_counts)


@needs_corpus
def test_corpus_facts(corpus_text: str, corpus_stats: CorpusStats) -> None:
    s = corpus_stats
    assert s.vocab == VOCAB
    assert list(s.vocab) == sorted(set(corpus_text))
    assert s.vocab_size == 65
    assert s.n_chars == N_CHARS
    assert int(s.unigram_counts.sum()) == N_CHARS
    assert int(s.bigram_counts.sum()) == N_PAIRS
    assert int((s.bigram_counts > 0).sum()) == N_DISTINCT_PAIRS
    assert bool((s.bigram_counts.sum(dim=1) > 0).all()), "every bigram row must be non-empty"
    # spot checks against plain Python counting
    assert int(s.unigram_counts[s.vocab.index(" ")]) == corpus_text.count(" ")
    e, space = s.vocab.index("e"), s.vocab.index(" ")
    assert int(s.bigram_counts[e, space]) == corpus_text.count("e ")


def test_shipped_stats_facts() -> None:
    """Holds without the corpus: the shipped file alone has the paper's statistics."""
    s = load_stats()
    assert s.vocab == VOCAB
    assert s.n_chars == N_CHARS == int(s.unigram_counts.sum())
    assert int(s.bigram_counts.sum()) == N_PAIRS
    assert int((s.bigram_counts > 0).sum()) == N_DISTINCT_PAIRS
    assert bool((s.bigram_counts.sum(dim=1) > 0).all())
    assert torch.allclose(s.bigram_probs.sum(dim=1), torch.ones(65, dtype=torch.float64))
    assert s.decode(s.frequency_ranking()[:5]) == " etoa"
    # row sums of the bigram counts are the unigram counts of every character but the last one
    row = s.unigram_counts.clone()
    row[s.vocab.index("\n")] -= 1  # the text ends with a newline
    assert torch.equal(s.bigram_counts.sum(dim=1), row)


def test_compute_stats_small_text() -> None:
    s = compute_stats("abab\n")
    assert s.vocab == "\nab"
    assert s.unigram_counts.tolist() == [1, 2, 2]
    assert s.bigram_counts.tolist() == [[0, 0, 0], [0, 0, 2], [1, 1, 0]]
    assert s.n_chars == 5
    assert s.decode(s.encode("ba\n")) == "ba\n"
    with pytest.raises(DataError, match="not in the vocabulary"):
        s.encode("abc")


def test_save_load_roundtrip(tmp_path: Path) -> None:
    s = load_stats()
    out = tmp_path / "sub" / "stats.json"
    save_stats(s, out)
    back = load_stats(out)
    assert back.vocab == s.vocab and back.n_chars == s.n_chars and back.sha256 == s.sha256
    assert torch.equal(back.unigram_counts, s.unigram_counts)
    assert torch.equal(back.bigram_counts, s.bigram_counts)
    assert not list(out.parent.glob("*.tmp")), "temporary file left behind"


# -- clear errors -------------------------------------------------------------------------------


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)  # so the CLI reports it as a one-line exit-2 error


def test_missing_corpus_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_corpus(tmp_path / "nope.txt")


def test_empty_corpus_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_corpus(empty)
    with pytest.raises(DataError, match="empty"):
        compute_stats("")


def test_no_source_given() -> None:
    with pytest.raises(DataError, match="--text"):
        read_corpus(None)


def test_read_small_corpus_through_datasets(tmp_path: Path, offline: Path) -> None:
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    f = tmp_path / "small.txt"
    f.write_text(text)
    assert read_corpus(f) == text
    assert (offline / "datasets").is_dir(), "datasets did not use the temporary cache"


def test_vocabulary_mismatch() -> None:
    shipped = load_stats()
    check_same_vocab(shipped, shipped)  # same vocabulary: no error
    fewer = compute_stats("to be or not to be\n")
    with pytest.raises(DataError, match="vocabulary") as err:
        check_same_vocab(fewer, shipped)
    assert "missing" in str(err.value) and "'Z'" in str(err.value)
    extra = compute_stats(VOCAB + "é")
    with pytest.raises(DataError, match="extra") as err:
        check_same_vocab(extra, shipped)
    assert "'é'" in str(err.value)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ("[]", "malformed"),
        ('{"vocab": "ab"}', "malformed"),
        (
            '{"vocab": "ab", "n_chars": 3, "sha256": "x", "unigram_counts": [1, 2, 3], "bigram_counts": []}',
            "malformed",
        ),
        (
            '{"vocab": "ba", "n_chars": 3, "sha256": "x", "unigram_counts": [1, 2], "bigram_counts": []}',
            "malformed",
        ),
        (
            '{"vocab": "ab", "n_chars": 3, "sha256": "x", "unigram_counts": [1, 2],'
            ' "bigram_counts": [[0, 5, 1]]}',
            "malformed",
        ),
        (
            '{"vocab": "ab", "n_chars": 3, "sha256": "x", "unigram_counts": [1, 2],'
            ' "bigram_counts": [[0, 1]]}',
            "malformed",
        ),
    ],
    ids=["not-json", "list", "missing-keys", "unigram-length", "unsorted-vocab", "pair-index", "pair-arity"],
)
def test_malformed_stats_json(tmp_path: Path, content: str, match: str) -> None:
    f = tmp_path / "stats.json"
    f.write_text(content)
    with pytest.raises(DataError, match=match):
        load_stats(f)


def test_missing_stats_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_stats(tmp_path / "missing.json")


# -- `birth prepare-data` ---------------------------------------------------------------------------


@needs_corpus
def test_prepare_data_cli_rebuilds_shipped_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stats.json"
    rc = cli_main(["prepare-data", "--text", str(CORPUS), "--out", str(out)])
    assert rc == 0
    assert json.loads(out.read_text()) == json.loads(shipped_stats_path().read_text())
    printed = capsys.readouterr().out
    assert "1,115,394 characters" in printed
    assert load_stats().sha256 in printed
    assert "1,115,393" in printed and "1,403 distinct" in printed


def test_prepare_data_missing_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stats.json"
    rc = cli_main(["prepare-data", "--text", str(tmp_path / "nope.txt"), "--out", str(out)])
    assert rc == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err


def test_prepare_data_missing_file_keeps_existing_out(tmp_path: Path) -> None:
    out = tmp_path / "stats.json"
    out.write_text("sentinel")
    rc = cli_main(["prepare-data", "--text", str(tmp_path / "nope.txt"), "--out", str(out)])
    assert rc == 2
    assert out.read_text() == "sentinel"


def test_prepare_data_vocab_mismatch_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "small.txt"
    text.write_text("to be or not to be\n")
    out = tmp_path / "stats.json"
    rc = cli_main(["prepare-data", "--text", str(text), "--out", str(out)])
    assert rc == 2
    assert not out.exists()
    assert "vocabulary" in capsys.readouterr().err
    # accepted on request, into an explicit file
    rc = cli_main(["prepare-data", "--text", str(text), "--out", str(out), "--allow-new-vocab"])
    assert rc == 0
    assert load_stats(out).vocab == "".join(sorted(set("to be or not to be\n")))


# -- the shipped statistics are protected --------------------------------------------------------------


def test_shipped_checksum_is_the_canonical_corpus() -> None:
    from tasks.shakespeare import CANONICAL_SHA256

    assert load_stats().sha256 == CANONICAL_SHA256
    if CORPUS.is_file():
        import hashlib

        assert hashlib.sha256(CORPUS.read_bytes()).hexdigest() == CANONICAL_SHA256


@pytest.fixture(scope="module")
def reversed_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus backwards: the same 65 characters and 1,115,394 of them, not the same text."""
    if not CORPUS.is_file():
        pytest.skip(f"tiny Shakespeare corpus not found at {CORPUS}")
    path = tmp_path_factory.mktemp("reversed") / "reversed.txt"
    path.write_text(CORPUS.read_text(encoding="utf-8")[::-1], encoding="utf-8")
    return path


def _fingerprint(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_ino


def test_a_non_canonical_text_never_writes_the_shipped_statistics(
    reversed_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = shipped_stats_path()
    before = _fingerprint(shipped)
    monkeypatch.chdir(tmp_path)
    # no --out: its own file in the current directory
    assert cli_main(["prepare-data", "--text", str(reversed_corpus)]) == 0
    assert "not the canonical" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name != "hf"] == ["reversed_stats.json"]
    written = load_stats(tmp_path / "reversed_stats.json")
    assert written.vocab == load_stats().vocab and written.sha256 != load_stats().sha256
    # ... which a second casual command does not replace
    assert cli_main(["prepare-data", "--text", str(reversed_corpus)]) == 2
    assert "--out" in capsys.readouterr().err
    # --out naming the shipped file is refused without --force-shipped
    assert cli_main(["prepare-data", "--text", str(reversed_corpus), "--out", str(shipped)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force-shipped" in err[0] and "not the canonical" in err[0]
    assert _fingerprint(shipped) == before


@needs_corpus
def test_the_canonical_corpus_rebuilds_the_shipped_file_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = shipped_stats_path()
    before = _fingerprint(shipped)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["prepare-data", "--text", str(CORPUS)]) == 0
    assert f"{shipped} is up to date" in capsys.readouterr().out
    assert _fingerprint(shipped) == before  # identical statistics: not even rewritten
    # a stale shipped file (here a copy standing in for it) is rewritten from the canonical corpus
    stand_in = tmp_path / "shipped.json"
    stand_in.write_text(json.dumps({**json.loads(shipped.read_text()), "n_chars": 1}))
    monkeypatch.setattr("birth.commands.prepare_data.shipped_stats_path", lambda: stand_in)
    assert cli_main(["prepare-data", "--text", str(CORPUS)]) == 0
    assert json.loads(stand_in.read_text()) == json.loads(shipped.read_text())


def test_force_shipped_replaces_the_shipped_file(
    reversed_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in = tmp_path / "shipped.json"
    stand_in.write_text(shipped_stats_path().read_text())
    monkeypatch.setattr("birth.commands.prepare_data.shipped_stats_path", lambda: stand_in)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["prepare-data", "--text", str(reversed_corpus), "--force-shipped"]) == 0
    assert load_stats(stand_in).sha256 == compute_stats(reversed_corpus.read_text(encoding="utf-8")).sha256
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "hf") == ["shipped.json"]
