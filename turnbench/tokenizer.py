"""The `render` stage's real work: byte-level BPE tokenization of request text into model tokens.

A `Tokenizer` wraps a HuggingFace `tokenizers` byte-level BPE model (GPT-2 style: ByteLevel pre-tokenizer and
decoder, no normalizer, no special tokens), so `decode(encode(text)) == text` for any Unicode string and the
cost of `encode` grows with the text, as a real model's tokenizer does. The model is trained on the fixture
corpus (`turnbench/data/corpus/`) and committed as `turnbench/data/tokenizer.json`; regenerate it with

    python -m turnbench.tokenizer train [--corpus DIR] [--out PATH] [--vocab-size N]

Threads: `encode` on one string runs on the calling thread. `encode_batch` and `train` use the library's rayon
pool; whether that pool may be used is left to the user through the `TOKENIZERS_PARALLELISM` environment
variable (this module never sets it). The library itself turns the pool off in a child after a fork that
follows parallel use, and warns once when it does.

Nothing heavy runs at import: the `tokenizers` extension is imported and the JSON is parsed on first load.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tokenizers

__all__ = [
    "DEFAULT_CORPUS",
    "DEFAULT_PATH",
    "DEFAULT_VOCAB_SIZE",
    "STORED_SUFFIX",
    "Tokenizer",
    "corpus_files",
    "corpus_name",
    "load_tokenizer",
    "main",
    "save",
    "train",
]

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "tokenizer.json"
"""The committed tokenizer model (JSON, a few hundred KB)."""

DEFAULT_CORPUS = Path(__file__).resolve().parent / "data" / "corpus"
"""The fixture corpus the committed model was trained on; the agent's tools read it too."""

STORED_SUFFIX = ".txt"
"""Appended to the name of each of the corpus's Python sources (``src/abc.py`` is stored as ``src/abc.py.txt``):
the corpus is data, and no linter, type checker, IDE index or code search takes it for the project's code.
The bytes are the original's; :func:`corpus_name` gives the name without it."""

DEFAULT_VOCAB_SIZE = 8192
MIN_FREQUENCY = 2


PIECE_CHARS = 4 * 1024
"""Longest text one call of a native tokenizer or regex gets (~5 ms of the GIL held at most)."""


def pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """`text` in consecutive pieces of about `size` characters, each cut just before a single space that sits
    between two non-space characters (a word boundary for the byte-level pre-tokenizer, whose words carry
    their leading space, and for ``\\w+`` style regexes), so encoding the pieces one by one gives the ids
    of the whole. A text with no such space within ``4 * size`` characters of a cut is cut there anyway."""
    start, n = 0, len(text)
    while n - start > size:
        cut = -1
        at = start + size
        limit = min(n - 1, start + 4 * size)
        while at < limit:
            at = text.find(" ", at, limit)
            if at < 0:
                break
            if not text[at - 1].isspace() and not text[at + 1].isspace():
                cut = at
                break
            at += 1
        if cut < 0:
            cut = limit if limit > start + size else n
        yield text[start:cut]
        start = cut
    if start < n:
        yield text[start:]


class Tokenizer:
    """Text to token ids and back, with a fixed vocabulary of `vocab_size` ids (0 .. vocab_size - 1)."""

    __slots__ = ("_texts", "_tok", "vocab_size")

    vocab_size: int

    def __init__(self, tok: tokenizers.Tokenizer) -> None:
        self._tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self._texts: dict[int, str] = {}  # token id → its text alone (at most vocab_size entries)

    def encode(self, text: str) -> list[int]:
        """Returns: the token ids of `text`, in order; single-threaded. A long text is encoded in pieces cut
        where a pre-token ends (:func:`pieces`): the same ids, and the GIL changes hands between pieces (one
        `encode` call of the extension holds it throughout: ~11 s for 10 MB, every other thread stalled)."""
        if len(text) <= PIECE_CHARS:
            return self._encode_one(text)
        out: list[int] = []
        for piece in pieces(text):
            out.extend(self._encode_one(piece))
        return out

    def _encode_one(self, text: str) -> list[int]:
        # a batch of one without offsets: the same ids as `encode`, ~25% less CPU, and still on this thread
        # (a batch of several may go to the library's pool, whose CPU a stage's thread clock would not see)
        ids: list[int] = self._tok.encode_batch_fast([text], add_special_tokens=False)[0].ids
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Returns: one id list per text; may use the library's thread pool (see `TOKENIZERS_PARALLELISM`)."""
        return [enc.ids for enc in self._tok.encode_batch(texts, add_special_tokens=False)]

    def count(self, text: str) -> int:
        """Returns: the number of tokens in `text` (the same work as `encode`)."""
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Returns: the text of `ids`; exact inverse of `encode` (a cut inside a multi-byte character
        decodes to U+FFFD)."""
        text: str = self._tok.decode(list(ids), skip_special_tokens=False)
        return text

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Returns: each id's text decoded alone (``decode([id])``), from a table filled as ids are first
        seen: an answer streamed token by token decodes each id once per process, not once per token."""
        texts, out = self._texts, []
        for t in ids:
            s = texts.get(t)
            if s is None:
                s = texts[t] = self._tok.decode([t], skip_special_tokens=False)
            out.append(s)
        return out

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a model saved by `train` (a `tokenizers` JSON file)."""
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(path)))


@functools.cache
def _load_default() -> Tokenizer:
    return Tokenizer.from_file(DEFAULT_PATH)


def load_tokenizer(path: str | None = None) -> Tokenizer:
    """Returns: the tokenizer at `path`, or the committed default (loaded once per process and shared)."""
    if path is None:
        return _load_default()
    return Tokenizer.from_file(path)


def corpus_files(corpus: Path) -> list[Path]:
    """Returns: the corpus's text files in a fixed (sorted) order, MANIFEST.txt left out. The storage suffix
    changes no file's place in that order (no stored name is a prefix of another), so it trains the same model."""
    return sorted(p for p in corpus.rglob("*") if p.is_file() and p.name != "MANIFEST.txt")


def corpus_name(rel: str) -> str:
    """Returns: the name a corpus file is presented under (the agent's tools show it): its corpus-relative
    path `rel` with the storage suffix of a stored source dropped (``src/abc.py.txt`` → ``src/abc.py``);
    other names (``docs/idle_news.txt``) unchanged."""
    stem = rel.removesuffix(STORED_SUFFIX)
    return stem if stem != rel and stem.endswith(".py") else rel


def _read_texts(files: Sequence[Path]) -> Iterator[str]:
    for path in files:
        yield path.read_text(encoding="utf-8")


def train(corpus: Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train a byte-level BPE model on every file under `corpus`.

    Deterministic: the same files and `vocab_size` give the same JSON. The whole 256-byte alphabet is seeded,
    so any text (not only the corpus's characters) encodes without unknown tokens.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    files = corpus_files(corpus)
    if not files:
        raise FileNotFoundError(f"no files under {corpus}")
    tok = HFTokenizer(models.BPE())
    # add_prefix_space=False keeps the round trip exact: no space is invented before the first word
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_FREQUENCY,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_read_texts(files), trainer=trainer, length=len(files))
    return Tokenizer(tok)


def save(tokenizer: Tokenizer, out: Path) -> str:
    """Write the model as compact JSON to `out`. Returns: the file's SHA-256, hex."""
    out.parent.mkdir(parents=True, exist_ok=True)
    data = tokenizer._tok.to_str(pretty=False).encode("utf-8")
    out.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: `python -m turnbench.tokenizer train ...`. Returns: the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m turnbench.tokenizer",
        description="Manage turnbench's byte-level BPE tokenizer (the render stage's model).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser(
        "train",
        help="retrain the tokenizer on the fixture corpus and write its JSON",
        description="Train a byte-level BPE tokenizer (min_frequency 2, full byte alphabet, no special "
        "tokens) deterministically on every file under --corpus, and write it as compact JSON.",
    )
    p_train.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder (default: %(default)s)")
    p_train.add_argument("--out", type=Path, default=DEFAULT_PATH, help="output JSON path (default: %(default)s)")
    p_train.add_argument(
        "--vocab-size",
        type=int,
        default=DEFAULT_VOCAB_SIZE,
        help="target vocabulary size (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.command == "train":
        tokenizer = train(args.corpus, vocab_size=args.vocab_size)
        digest = save(tokenizer, args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size} bytes, vocab {tokenizer.vocab_size}, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
