"""The render stage's tokenizer: exact round trips, growth with text, determinism, a reproducible model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from turnbench.tokenizer import DEFAULT_PATH, Tokenizer, corpus_files, corpus_name, load_tokenizer, main

ROOT = Path(__file__).resolve().parents[3]
CORPUS = ROOT / "turnbench" / "data" / "corpus"
CORPUS_FILES = corpus_files(CORPUS)

UNICODE_SAMPLES = [
    "",
    " ",
    "héllo wörld — “quoted” ‘text’",
    "日本語のテキストと中文文本",
    "emoji: 🎉👩‍👩‍👧‍👦 flags 🇫🇷 skin 👍🏽",
    "combining: e\u0301 a\u0308 \u200d zero-width \ufeff bom",
    "controls: \x00\x01\t\r\n\x7f and\r\nwindows line ends\n\n\n",
    "    indented   spaces\t\ttabs   ",
    "Ελληνικά, русский, العربية, עברית, हिन्दी",
]


def _run_python(code: str, **env: str) -> str:
    """Runs `code` in a fresh interpreter with the repo importable. Returns: its stdout."""
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_tokenizer()


def test_corpus_is_shipped() -> None:
    assert 30 <= len(CORPUS_FILES) <= 45
    total = sum(p.stat().st_size for p in CORPUS_FILES)
    assert 300_000 <= total <= 1_200_000
    assert not list(CORPUS.rglob("*.py"))  # sources are stored as NAME.py.txt: data, not the project's code


def test_corpus_name_drops_the_storage_suffix_of_sources_only() -> None:
    assert corpus_name("src/abc.py.txt") == "src/abc.py"
    assert corpus_name("docs/idle_news.txt") == "docs/idle_news.txt"
    assert corpus_name("LICENSE-PSF.txt") == "LICENSE-PSF.txt"
    assert corpus_name("docs/email_architecture.rst") == "docs/email_architecture.rst"


def test_manifest_lists_every_file_with_its_size() -> None:
    rows = [line.split() for line in (CORPUS / "MANIFEST.txt").read_text().splitlines() if not line.startswith("#")]
    listed = {path: int(size) for size, path in rows}
    actual = {p.relative_to(CORPUS).as_posix(): p.stat().st_size for p in CORPUS_FILES}
    assert listed == actual


def test_package_data_ships_every_corpus_file() -> None:
    """The wheel's package-data globs (pyproject) cover every corpus file, MANIFEST.txt included."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["turnbench"]
    shipped = {p for g in globs for p in (ROOT / "turnbench").glob(g)}
    assert set(CORPUS_FILES) | {CORPUS / "MANIFEST.txt"} <= shipped


def test_vocab_size_and_model_file(tok: Tokenizer) -> None:
    assert tok.vocab_size == 8192
    assert DEFAULT_PATH.stat().st_size < 1_500_000


def test_default_is_loaded_once_and_explicit_path_loads_fresh(tok: Tokenizer) -> None:
    assert load_tokenizer() is tok
    other = load_tokenizer(str(DEFAULT_PATH))
    assert other is not tok
    assert other.encode("def f(x): return x") == tok.encode("def f(x): return x")


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_corpus_round_trip(tok: Tokenizer, path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)
    # byte-level BPE never does worse than 1 byte per token; a trained one does far better, even on regexes
    assert len(text.encode()) / len(ids) > 2.0


def test_trained_model_compresses_its_corpus(tok: Tokenizer) -> None:
    texts = [p.read_text(encoding="utf-8") for p in CORPUS_FILES]
    n_bytes = sum(len(t.encode()) for t in texts)
    n_tokens = sum(len(ids) for ids in tok.encode_batch(texts))
    assert n_bytes / n_tokens > 3.5


@pytest.mark.parametrize("text", UNICODE_SAMPLES)
def test_unicode_round_trip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # byte-level: never more tokens than UTF-8 bytes
    assert len(ids) <= len(text.encode())


def test_encode_batch_count_and_encode_agree(tok: Tokenizer) -> None:
    texts = [p.read_text() for p in CORPUS_FILES[:6]] + UNICODE_SAMPLES
    batch = tok.encode_batch(texts)
    assert batch == [tok.encode(t) for t in texts]
    assert [tok.count(t) for t in texts] == [len(ids) for ids in batch]


def test_count_grows_with_text(tok: Tokenizer) -> None:
    text = (CORPUS / "src" / "argparse.py.txt").read_text()
    counts = [tok.count(text[:n]) for n in (1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000)]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    unit = (CORPUS / "src" / "bisect.py.txt").read_text()
    one = tok.count(unit)
    for k in (2, 5, 10):
        assert 0.95 * k * one <= tok.count(unit * k) <= 1.05 * k * one


def test_deterministic_across_processes(tok: Tokenizer) -> None:
    text = (CORPUS / "docs" / "idle_news.txt").read_text()[:5_000] + UNICODE_SAMPLES[4]
    code = (
        "import json\nfrom turnbench.tokenizer import load_tokenizer\n"
        f"print(json.dumps(load_tokenizer().encode({text!r})))"
    )
    first = json.loads(_run_python(code, PYTHONHASHSEED="1"))
    second = json.loads(_run_python(code, PYTHONHASHSEED="2"))
    assert first == second == tok.encode(text)


def test_import_is_light() -> None:
    out = _run_python("import sys, turnbench.tokenizer; print('tokenizers' in sys.modules)")
    assert out.strip() == "False"


def test_committed_model_is_reproducible(tmp_path: Path) -> None:
    """Retraining on the corpus (in a child process, so its thread pool stays out of this one) gives the
    committed JSON byte for byte."""
    out = tmp_path / "tokenizer.json"
    _run_python(f"from turnbench.tokenizer import main; main(['train', '--out', {str(out)!r}])")
    assert out.read_bytes() == DEFAULT_PATH.read_bytes()


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    assert "--vocab-size" in help_text and "--corpus" in help_text and "--out" in help_text


def test_token_texts_are_each_ids_text_alone_and_rebuild_the_answer() -> None:
    tok = Tokenizer.from_file(DEFAULT_PATH)  # a fresh table
    text = "Naïve tests — 東京 compile the parser; the parser compiles the tests."
    ids = tok.encode(text)
    texts = tok.token_texts(ids)
    assert texts == [tok.decode([t]) for t in ids]
    assert tok.token_texts(ids) == texts and len(tok._texts) == len(set(ids))  # one entry per id, reused
    if "".join(texts) == text:  # no multi-byte character split across tokens
        assert "".join(tok.token_texts(tok.encode("the parser"))) == "the parser"
    else:
        assert "\ufffd" in "".join(texts)  # a cut character decodes to U+FFFD alone (split_pieces falls back)


def test_encode_runs_on_the_calling_thread(tok: Tokenizer) -> None:
    """A stage's CPU is read from its thread's clock: encode must not hand work to the library's pool (a batch
    of several texts would), or render would look cheaper than it is."""
    import time

    text = (CORPUS / "src" / "argparse.py.txt").read_text()[:60_000]  # 15 pieces of 4 KiB
    tok.encode(text)
    t0, p0 = time.thread_time(), time.process_time()
    for _ in range(5):
        tok.encode(text)
    thread, process = time.thread_time() - t0, time.process_time() - p0
    assert thread >= 0.9 * process, (thread, process)
