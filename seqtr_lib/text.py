"""Referring expressions as token ids: cleaning, vocabulary, word vectors, original-release files.

Token ids: ``PAD_ID = 0`` (padding, never a word), ``UNK_ID = 1`` (unknown word), ``CLS_ID = 2``
(reserved, as in SeqTR; never produced by `Vocabulary.encode`), then the words in order of their first
appearance in the expressions the vocabulary is built from (`seqtr_lib.data.refer.load_vocabulary`).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from seqtr_lib.atomic import write_text_atomic

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
CLS_TOKEN = "<cls>"
PAD_ID = 0
UNK_ID = 1
CLS_ID = 2
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN)

VOCABULARY_FORMAT = "seqtr-vocabulary"
VOCABULARY_VERSION = 1

# Lower-casing comes first; then these characters are deleted and these become spaces.
_DELETED_CHARACTERS = ".,'!?\"()*#:;"
_SPACED_CHARACTERS = "-/"
_CLEANING_TABLE = str.maketrans(
    {**{c: None for c in _DELETED_CHARACTERS}, **{c: " " for c in _SPACED_CHARACTERS}}
)


def clean_expression(expression: str) -> list[str]:
    """Split a referring expression into words exactly as SeqTR does.

    Lower-case, delete ``. , ' ! ? " ( ) * # : ;``, replace ``-`` and ``/`` with spaces, split on white
    space. ``"The man's T-shirt!"`` -> ``["the", "mans", "t", "shirt"]``.
    """
    return expression.lower().translate(_CLEANING_TABLE).split()


class Vocabulary:
    """Word <-> id table: the three special tokens, then words in order of first appearance.

    Immutable. Stored on disk as JSON (`save` / `load`) and inside checkpoints as a plain list of
    words (`to_list` / `from_list`); the id of a word is its position in that list.
    """

    def __init__(self, words: Sequence[str]) -> None:
        """Wrap a full word list, specials included: ``["<pad>", "<unk>", "<cls>", "red", ...]``."""
        words = list(words)
        if tuple(words[:3]) != SPECIAL_TOKENS:
            raise ValueError(
                f"a vocabulary must start with {list(SPECIAL_TOKENS)} (ids 0, 1, 2); got {words[:3]}"
            )
        index: dict[str, int] = {}
        for i, word in enumerate(words):
            if not isinstance(word, str) or word.split() != [word]:
                raise ValueError(
                    f"vocabulary word at id {i} is {word!r}: words must be non-empty strings without "
                    "white space (as clean_expression produces them)"
                )
            if word in index:
                raise ValueError(f"vocabulary word {word!r} appears twice, at ids {index[word]} and {i}")
            index[word] = i
        self._words = tuple(words)
        self._index = index

    @classmethod
    def build(cls, expressions: Iterable[str]) -> Vocabulary:
        """Collect the cleaned words of `expressions` in order of first appearance."""
        words = dict.fromkeys(SPECIAL_TOKENS)
        for expression in expressions:
            words.update(dict.fromkeys(clean_expression(expression)))
        return cls(list(words))

    @classmethod
    def from_list(cls, words: Sequence[str]) -> Vocabulary:
        """Rebuild from `to_list` output (as stored in a checkpoint)."""
        return cls(words)

    def to_list(self) -> list[str]:
        """All words, specials first; position = id. Plain values only, safe for checkpoints."""
        return list(self._words)

    @property
    def words(self) -> list[str]:
        """All words, specials first; position = id."""
        return list(self._words)

    def __len__(self) -> int:
        return len(self._words)

    def __contains__(self, word: object) -> bool:
        return word in self._index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._words == other._words

    def __hash__(self) -> int:
        return hash(self._words)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} ids: {', '.join(self._words[:6])}{', ...' if len(self) > 6 else ''})"

    def index(self, word: str) -> int:
        """Id of `word`, or `UNK_ID` when the word is not in the vocabulary."""
        return self._index.get(word, UNK_ID)

    def encode(self, expression: str, max_token: int) -> np.ndarray:
        """Clean `expression` and map it to ids, truncated to `max_token` and padded with `PAD_ID`.

        Returns int64 ``(max_token,)``. Unknown words become `UNK_ID`. An expression that cleans to no
        words becomes a single `UNK_ID`, so the language model's max-pool over valid (non-PAD) tokens
        always has at least one token. No CLS token is prepended.
        """
        if max_token < 1:
            raise ValueError(f"max_token must be at least 1, got {max_token}")
        ids = [self.index(word) for word in clean_expression(expression)[:max_token]]
        # A literal "<pad>" typed in an expression must not masquerade as padding.
        ids = [UNK_ID if i == PAD_ID else i for i in ids] or [UNK_ID]
        encoded = np.full(max_token, PAD_ID, dtype=np.int64)
        encoded[: len(ids)] = ids
        return encoded

    def save(self, path: str | os.PathLike) -> None:
        """Write ``{"format", "version", "words"}`` as JSON, atomically (temporary file, then rename)."""
        document = {"format": VOCABULARY_FORMAT, "version": VOCABULARY_VERSION, "words": self.to_list()}
        write_text_atomic(Path(path), json.dumps(document, ensure_ascii=False, indent=0) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a vocabulary written by `save`."""
        path = Path(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); expected a vocabulary saved by "
                             "Vocabulary.save") from error
        if not isinstance(document, dict) or document.get("format") != VOCABULARY_FORMAT:
            raise ValueError(f"{path} is not a seqtr vocabulary file (missing \"format\": "
                             f"\"{VOCABULARY_FORMAT}\")")
        if document.get("version") != VOCABULARY_VERSION:
            raise ValueError(f"{path} has vocabulary format version {document.get('version')!r}; this "
                             f"code reads version {VOCABULARY_VERSION}")
        words = document.get("words")
        if not isinstance(words, list):
            raise ValueError(f"{path}: key \"words\" must be a list of strings")
        try:
            return cls(words)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error


# ---------------------------------------------------------------------------------------------------
# Word vectors
# ---------------------------------------------------------------------------------------------------


def load_word_vectors(
    vocabulary: Vocabulary, source: str | os.PathLike, dim: int = 300, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Build the word-embedding matrix for `vocabulary`; return ``(vectors, coverage)``.

    `source` is one of
      - a path to a GloVe-style text file, one ``word v1 ... v_dim`` per line (a word2vec header line
        ``"count dim"`` is accepted);
      - ``"spacy:<pipeline>"``, an installed spaCy pipeline with word vectors
        (e.g. ``"spacy:en_core_web_lg"``; needs ``pip install 'seqtr[spacy]'``);
      - ``"random"``: no pretrained vectors (train the embedding instead).

    `vectors` is float32 ``(len(vocabulary), dim)``. Row `PAD_ID` is zero. Every other row starts as
    N(0, 1/dim) noise drawn from `seed` (the same for a given vocabulary size, dim and seed, whatever
    the source) and is overwritten by the pretrained vector where the source has the word.
    `coverage` is the fraction of the non-special words found in the source (0.0 for ``"random"`` or a
    vocabulary with no words).
    """
    if dim < 1:
        raise ValueError(f"dim must be at least 1, got {dim}")
    vectors = np.random.default_rng(seed).normal(0.0, 1.0 / np.sqrt(dim), (len(vocabulary), dim))
    vectors = vectors.astype(np.float32)
    vectors[PAD_ID] = 0.0
    words = vocabulary.words[len(SPECIAL_TOKENS):]
    source_text = os.fspath(source)
    if source_text == "random":
        found: dict[str, np.ndarray] = {}
    elif source_text.startswith("spacy:"):
        found = _read_spacy_vectors(source_text.removeprefix("spacy:"), words, dim)
    else:
        found = _read_glove_vectors(Path(source_text), set(words), dim)
    for word, vector in found.items():
        vectors[vocabulary.index(word)] = vector
    coverage = len(found) / len(words) if words else 0.0
    return vectors, coverage


def _read_glove_vectors(path: Path, wanted: set[str], dim: int) -> dict[str, np.ndarray]:
    """Vectors of the `wanted` words from a GloVe / word2vec text file (first occurrence wins)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"word vector file {path} does not exist; word_vectors must be a GloVe text file, "
            "'spacy:<pipeline>' or 'random'"
        )
    found: dict[str, np.ndarray] = {}
    with path.open(encoding="utf-8", errors="replace") as file:
        for line_number, line in enumerate(file, start=1):
            head = line.split(maxsplit=1)
            if not head:
                continue
            # Only line 1 (header or first vector, to catch a wrong dim early) and the wanted words are
            # parsed in full, so a 2M-word file reads fast.
            if line_number > 1 and (head[0] not in wanted or head[0] in found):
                continue
            fields = line.split()
            if line_number == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                if int(fields[1]) != dim:
                    raise ValueError(f"{path}, line 1: the word2vec header says {fields[1]}-d vectors, "
                                     f"but dim is {dim}; set dim to {fields[1]}")
                continue
            if len(fields) > dim + 1 and not _is_number(fields[-dim - 1]):
                # A "word" with spaces in it (GloVe 840B has some); clean words never contain spaces.
                continue
            if len(fields) != dim + 1:
                raise ValueError(f"{path}, line {line_number}: found {len(fields) - 1} numbers after the "
                                 f"word, expected dim={dim}; set dim to the file's vector size")
            try:
                vector = np.array(fields[1:], dtype=np.float32)
            except ValueError as error:
                raise ValueError(f"{path}, line {line_number}: not a number ({error})") from error
            if fields[0] in wanted:
                found[fields[0]] = vector
    return found


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_spacy_vectors(pipeline: str, words: list[str], dim: int) -> dict[str, np.ndarray]:
    """Vectors of `words` from the installed spaCy pipeline `pipeline`."""
    install = f"pip install 'seqtr[spacy]' && python -m spacy download {pipeline}"
    try:
        import spacy
    except ImportError as error:
        raise ImportError(
            f"word vectors 'spacy:{pipeline}' need spaCy, which is not installed; run: {install} "
            "(or use a GloVe text file or 'random')"
        ) from error
    try:
        nlp = spacy.load(pipeline)
    except OSError as error:
        raise OSError(
            f"spaCy pipeline {pipeline!r} is not installed; run: python -m spacy download {pipeline}"
        ) from error
    if nlp.vocab.vectors_length == 0:
        raise ValueError(f"spaCy pipeline {pipeline!r} has no word vectors; use one that has "
                         "(en_core_web_lg, en_core_web_md) or a GloVe text file")
    if nlp.vocab.vectors_length != dim:
        raise ValueError(f"spaCy pipeline {pipeline!r} has {nlp.vocab.vectors_length}-d vectors, but dim "
                         f"is {dim}; set dim to {nlp.vocab.vectors_length}")
    return {
        word: np.asarray(nlp.vocab.get_vector(word), dtype=np.float32)
        for word in words
        if nlp.vocab.has_vector(word)
    }


# ---------------------------------------------------------------------------------------------------
# Files of the original SeqTR release (token_to_ix.pkl)
# ---------------------------------------------------------------------------------------------------

# Names the original release gives ids 0, 1, 2 (its tokenizer writes 'PAD', 'UNK', 'CLS').
_ORIGINAL_SPECIAL_NAMES = tuple(
    {name, name.upper(), f"<{name}>", f"<{name.upper()}>"} for name in ("pad", "unk", "cls")
)


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickler that builds only built-in containers and scalars: every class or function is refused."""

    def find_class(self, module: str, name: str) -> None:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is accepted")


def load_token_to_ix(path: str | os.PathLike) -> Vocabulary:
    """Read the original release's ``token_to_ix.pkl`` ({word: id}) as a `Vocabulary`, safely.

    The pickle is read by an unpickler that refuses every class and function, so a malicious file
    cannot run code. The content must be a dict of str -> int whose ids are 0..n-1, with ids 0, 1, 2
    named PAD, UNK, CLS (any case, with or without <>); those become ``<pad>``, ``<unk>``, ``<cls>``
    and the other words keep their ids.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            table = PlainDataUnpickler(file).load()
    except Exception as error:  # a damaged pickle can raise almost any exception type
        raise ValueError(f"{path}: refused to unpickle ({error}); token_to_ix.pkl must hold a plain "
                         "dict of word -> id") from error
    if type(table) is not dict:
        raise ValueError(f"{path}: expected a dict of word -> id, got {type(table).__name__}")
    for word, i in table.items():
        if type(word) is not str or type(i) is not int:
            raise ValueError(f"{path}: entry {word!r}: {i!r} is not str -> int; token_to_ix.pkl must map "
                             "words to integer ids")
    if sorted(table.values()) != list(range(len(table))):
        raise ValueError(f"{path}: ids must be 0..{len(table) - 1}, each used once")
    words = sorted(table, key=table.__getitem__)
    for i, (word, names) in enumerate(zip(words, _ORIGINAL_SPECIAL_NAMES)):
        if word not in names:
            raise ValueError(f"{path}: id {i} is {word!r}, expected one of {sorted(names)} (ids 0, 1, 2 "
                             "are PAD, UNK, CLS in the original release)")
    try:
        return Vocabulary(list(SPECIAL_TOKENS) + words[len(SPECIAL_TOKENS):])
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
