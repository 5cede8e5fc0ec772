"""Tests for seqtr_lib.text: cleaning, vocabulary, word vectors and the original release's files."""

import json
import os
import pickle
import re
import shlex
import sys
import types

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from seqtr_lib.text import (
    CLS_ID,
    PAD_ID,
    UNK_ID,
    Vocabulary,
    clean_expression,
    load_token_to_ix,
    load_word_vectors,
)

# ----------------------------------------------------------------------------------------- cleaning


@pytest.mark.parametrize(
    "expression, words",
    [
        ("The man's T-shirt!", ["the", "mans", "t", "shirt"]),
        ("left/right   guy", ["left", "right", "guy"]),
        ('Person (in "red"): #2; far-left?', ["person", "in", "red", "2", "far", "left"]),
        ("A.B,C*", ["abc"]),
        ("RED Ball\tnear\nTREE", ["red", "ball", "near", "tree"]),
        ("50% & more", ["50%", "&", "more"]),
        ("man\u2019s", ["man\u2019s"]),  # only the ASCII apostrophe is deleted
        (" .,'!?\"()*#:; ", []),
        ("", []),
    ],
)
def test_clean_expression_matches_hand_examples(expression, words):
    assert clean_expression(expression) == words


def _clean_as_seqtr_regex(expression: str) -> list[str]:
    return re.sub(r"([.,'!?\"()*#:;])", "", expression.lower()).replace("-", " ").replace("/", " ").split()


@given(st.text(alphabet=st.sampled_from(list("aBz .,'!?\"()*#:;-/\t\n\u00c9%")), max_size=30))
def test_clean_expression_agrees_with_the_original_regex(expression):
    assert clean_expression(expression) == _clean_as_seqtr_regex(expression)


# --------------------------------------------------------------------------------------- vocabulary


def _shapes_vocabulary() -> Vocabulary:
    return Vocabulary.build(["Red ball", "blue BALL, left", "red cube"])


def test_vocabulary_puts_specials_first_then_words_in_order_of_first_appearance():
    vocabulary = _shapes_vocabulary()
    assert vocabulary.words == ["<pad>", "<unk>", "<cls>", "red", "ball", "blue", "left", "cube"]
    assert (PAD_ID, UNK_ID, CLS_ID) == (0, 1, 2)
    assert len(vocabulary) == 8
    assert vocabulary.index("<pad>") == 0 and vocabulary.index("<cls>") == 2
    assert vocabulary.index("cube") == 7
    assert vocabulary.index("giraffe") == UNK_ID
    assert "ball" in vocabulary and "giraffe" not in vocabulary


def test_vocabulary_rejects_word_lists_without_specials_duplicates_or_white_space():
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary(["red", "<pad>", "<unk>", "<cls>"])
    with pytest.raises(ValueError, match="'red' appears twice, at ids 3 and 5"):
        Vocabulary(["<pad>", "<unk>", "<cls>", "red", "ball", "red"])
    with pytest.raises(ValueError, match="id 3"):
        Vocabulary(["<pad>", "<unk>", "<cls>", "red ball"])
    with pytest.raises(ValueError, match="id 4"):
        Vocabulary(["<pad>", "<unk>", "<cls>", "red", ""])


def test_encode_maps_words_to_ids_and_unknown_words_to_unk_then_pads():
    encoded = _shapes_vocabulary().encode("Blue ball, left of the giraffe!", max_token=8)
    assert encoded.dtype == np.int64 and encoded.shape == (8,)
    assert encoded.tolist() == [5, 4, 6, 1, 1, 1, 0, 0]


def test_encode_truncates_to_max_token():
    assert _shapes_vocabulary().encode("red cube left ball blue", max_token=3).tolist() == [3, 7, 6]


@pytest.mark.parametrize("expression", ["", "?!...", " (#) "])
def test_expression_that_cleans_to_nothing_encodes_as_a_single_unk(expression):
    assert _shapes_vocabulary().encode(expression, max_token=4).tolist() == [UNK_ID, PAD_ID, PAD_ID, PAD_ID]


def test_literal_pad_token_in_an_expression_is_not_padding():
    assert _shapes_vocabulary().encode("red <pad> cube", max_token=4).tolist() == [3, UNK_ID, 7, PAD_ID]


def test_encode_rejects_non_positive_max_token():
    with pytest.raises(ValueError, match="max_token"):
        _shapes_vocabulary().encode("red", max_token=0)


def test_vocabulary_json_round_trip_writes_readable_json(tmp_path):
    vocabulary = Vocabulary.build(["Red ball", "caf\u00e9 chair"])
    path = tmp_path / "vocab" / "vocabulary.json"
    vocabulary.save(path)
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["words"] == ["<pad>", "<unk>", "<cls>", "red", "ball", "caf\u00e9", "chair"]
    assert document["format"] == "seqtr-vocabulary" and document["version"] == 1
    assert Vocabulary.load(path) == vocabulary
    assert os.listdir(path.parent) == ["vocabulary.json"]  # no temporary file left behind


def test_vocabulary_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "vocabulary.json"
    Vocabulary.build(["a b c d e f"]).save(path)
    Vocabulary.build(["x"]).save(path)
    assert Vocabulary.load(path).words == ["<pad>", "<unk>", "<cls>", "x"]


def test_vocabulary_load_names_the_file_when_it_is_not_a_vocabulary(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"words": ["<pad>", "<unk>", "<cls>"]}')
    with pytest.raises(ValueError, match="other.json.*not a seqtr vocabulary"):
        Vocabulary.load(path)
    path.write_text('{"format": "seqtr-vocabulary", "version": 1, "words": ["<pad>", "<unk>"]}')
    with pytest.raises(ValueError, match="other.json.*must start with"):
        Vocabulary.load(path)


def test_vocabulary_list_survives_a_weights_only_torch_checkpoint(tmp_path):
    vocabulary = _shapes_vocabulary()
    torch.save({"vocabulary": vocabulary.to_list()}, tmp_path / "checkpoint.pt")
    restored = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert Vocabulary.from_list(restored["vocabulary"]) == vocabulary


# ------------------------------------------------------------------------------------- word vectors


def test_random_word_vectors_are_seeded_scaled_and_zero_for_pad():
    vocabulary = Vocabulary.build([" ".join(f"w{i}" for i in range(60))])
    vectors, coverage = load_word_vectors(vocabulary, "random", dim=64, seed=3)
    assert vectors.dtype == np.float32 and vectors.shape == (63, 64)
    assert coverage == 0.0
    assert not vectors[PAD_ID].any()
    assert np.array_equal(vectors, load_word_vectors(vocabulary, "random", dim=64, seed=3)[0])
    assert not np.allclose(vectors, load_word_vectors(vocabulary, "random", dim=64, seed=4)[0])
    # N(0, 1/dim): the std of n = 62 x 64 draws is off by 1/sqrt(2n) = 1.1 % (one sigma); 0.1 is 9 sigma
    assert vectors[1:].std() == pytest.approx(1 / 8, rel=0.1)


def _write_glove(tmp_path, text):
    path = tmp_path / "glove.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_glove_vectors_land_in_their_words_rows(tmp_path):
    vocabulary = Vocabulary.build(["red ball", "blue cube left"])  # red=3 ball=4 blue=5 cube=6 left=7
    path = _write_glove(
        tmp_path,
        "the 9 9 9\n"
        "red ball 7 7 7\n"  # a multi-word entry (GloVe 840B has some): never a vocabulary word
        "red 0.5 -1 2\n"
        "cube 1e-1 0 3\n"
        "red 8 8 8\n"  # duplicate: the first occurrence wins
        "\n"
        "left -2 -2 -2\n",
    )
    vectors, coverage = load_word_vectors(vocabulary, path, dim=3, seed=0)
    assert vectors.shape == (8, 3) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors[3], [0.5, -1, 2])
    np.testing.assert_array_equal(vectors[6], np.float32([0.1, 0, 3]))
    np.testing.assert_array_equal(vectors[7], [-2, -2, -2])
    assert coverage == pytest.approx(3 / 5)
    assert not vectors[PAD_ID].any()
    random_init, _ = load_word_vectors(vocabulary, "random", dim=3, seed=0)
    for missing in (UNK_ID, CLS_ID, 4, 5):  # <unk>, <cls>, ball, blue: seeded random rows
        assert vectors[missing].any()
        np.testing.assert_array_equal(vectors[missing], random_init[missing])


def test_glove_reader_accepts_a_word2vec_header(tmp_path):
    path = _write_glove(tmp_path, "2 3\nball 1 2 3\nzebra 4 5 6\n")
    vectors, coverage = load_word_vectors(Vocabulary.build(["ball"]), path, dim=3)
    np.testing.assert_array_equal(vectors[3], [1, 2, 3])
    assert coverage == 1.0


def test_glove_dimension_mismatch_names_file_and_line(tmp_path):
    path = _write_glove(tmp_path, "the 1 2 3\nof 1 2 3\nred 1 2\n")
    with pytest.raises(ValueError, match=r"glove\.txt, line 3: found 2 numbers .* expected dim=3"):
        load_word_vectors(Vocabulary.build(["red"]), path, dim=3)
    with pytest.raises(ValueError, match=r"glove\.txt, line 1: found 3 numbers .* expected dim=300"):
        load_word_vectors(Vocabulary.build(["red"]), path)


def test_word2vec_header_with_another_dimension_is_refused(tmp_path):
    path = _write_glove(tmp_path, "2 50\nball 1 2 3\n")
    with pytest.raises(ValueError, match=r"glove\.txt, line 1: .*50-d"):
        load_word_vectors(Vocabulary.build(["ball"]), path, dim=3)


def test_missing_word_vector_file_says_which_sources_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt.*'spacy:<pipeline>' or 'random'"):
        load_word_vectors(Vocabulary.build(["ball"]), tmp_path / "nowhere.txt")


def test_missing_spacy_pipeline_error_says_how_to_install_it():
    # Whether or not spaCy is installed, this pipeline is not: the message must say how to get it.
    with pytest.raises((ImportError, OSError), match="python -m spacy download seqtr_no_such_pipeline"):
        load_word_vectors(Vocabulary.build(["ball"]), "spacy:seqtr_no_such_pipeline", dim=3)


def test_spacy_vectors_are_looked_up_per_word(monkeypatch):
    table = {"red": [1.0, 2.0, 3.0], "cube": [4.0, 5.0, 6.0]}
    pipeline = types.SimpleNamespace(
        vocab=types.SimpleNamespace(
            vectors_length=3, has_vector=table.__contains__, get_vector=lambda word: np.array(table[word])
        )
    )
    fake_spacy = types.SimpleNamespace(load=lambda name: pipeline if name == "fake_lg" else None)
    monkeypatch.setitem(sys.modules, "spacy", fake_spacy)
    vectors, coverage = load_word_vectors(Vocabulary.build(["red ball cube"]), "spacy:fake_lg", dim=3)
    np.testing.assert_array_equal(vectors[3], [1, 2, 3])
    np.testing.assert_array_equal(vectors[5], [4, 5, 6])
    assert coverage == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3-d vectors, but dim is 300"):
        load_word_vectors(Vocabulary.build(["red"]), "spacy:fake_lg")


# ------------------------------------------------------------------------ original release files


def _write_pickle(tmp_path, obj, protocol=pickle.HIGHEST_PROTOCOL):
    path = tmp_path / "token_to_ix.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_valid_token_to_ix_loads_in_id_order_with_our_special_tokens(tmp_path, protocol):
    table = {"ball": 4, "PAD": 0, "red": 3, "CLS": 2, "UNK": 1}
    vocabulary = load_token_to_ix(_write_pickle(tmp_path, table, protocol))
    assert vocabulary.words == ["<pad>", "<unk>", "<cls>", "red", "ball"]


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class _OpensFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


class _Custom:
    pass


def test_pickle_that_calls_os_system_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = _write_pickle(tmp_path, _RunsShell(marker))
    with pytest.raises(ValueError, match=r"token_to_ix\.pkl: refused .*system"):
        load_token_to_ix(path)
    assert not marker.exists()


def test_pickle_with_a_side_effect_hidden_in_a_dict_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "created"
    payload = {"PAD": 0, "UNK": 1, "CLS": 2, "red": _OpensFile(marker)}
    pickle.loads(pickle.dumps(payload))["red"].close()
    assert marker.exists(), "the payload should have an observable effect when unpickled normally"
    marker.unlink()
    with pytest.raises(ValueError, match=r"refusing to load \w+\.open"):
        load_token_to_ix(_write_pickle(tmp_path, payload))
    assert not marker.exists()


def test_pickle_of_a_custom_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"token_to_ix\.pkl: refused .*_Custom"):
        load_token_to_ix(_write_pickle(tmp_path, _Custom()))


@pytest.mark.parametrize(
    "table, message",
    [
        ({"PAD": 0, "UNK": 1, "CLS": 2, "red": "3"}, "'red': '3' is not str -> int"),
        ({"PAD": 0, "UNK": 1, "CLS": 2, "red": 3.0}, "'red': 3.0 is not str -> int"),
        ({"PAD": 0, "UNK": True, "CLS": 2}, "'UNK': True is not str -> int"),
        ({"PAD": 0, "UNK": 1, "CLS": 2, 7: 3}, "7: 3 is not str -> int"),
        ({"PAD": 0, "UNK": 1, "CLS": 2, "red": 4}, r"ids must be 0\.\.3"),
        ({"red": 0, "UNK": 1, "CLS": 2, "PAD": 3}, "id 0 is 'red'"),
        ([("PAD", 0)], "expected a dict of word -> id, got list"),
    ],
)
def test_token_to_ix_that_is_not_a_word_to_id_table_is_refused(tmp_path, table, message):
    with pytest.raises(ValueError, match=r"token_to_ix\.pkl: .*" + message):
        load_token_to_ix(_write_pickle(tmp_path, table))

