"""The digits vocabulary: id layout, image and text tokenisers, saved tokenizer, prompt builders."""

from __future__ import annotations

import numpy as np
import pytest

from cl_platform.suites.digits import vocab as V
from cl_platform.suites.digits.tasks import load_digit_images


def test_id_layout_and_spec_ranges():
    assert V.ID_TO_TOKEN[:6] == ("<pad>", "<s>", "</s>", "<sep>", "<boi>", "<eoi>")
    assert [V.TOKEN_TO_ID[f"<img_{g}>"] for g in range(17)] == list(range(6, 23))
    assert V.TOKEN_TO_ID[V.WORDS[0]] == 23 == V.FIRST_WORD_ID
    assert len(set(V.WORDS)) == len(V.WORDS)
    assert len(V.ID_TO_TOKEN) == V.VOCAB_SIZE == 128
    spec = V.DIGITS_SPEC
    assert (spec.spec_id, spec.vocab_size, spec.image_code_range) == ("digits-v1", 128, (6, 23))
    assert (spec.boi_id, spec.eoi_id, spec.pad_id, spec.sep_id) == (4, 5, 0, 3)
    assert spec.image_token_ranges == ((4, 23),)  # markers + codes routed to the visual adapter
    # every word a prompt or answer of the suite uses is a word (not a special token)
    for w in (*V.DIGIT_WORDS, *V.SPANISH_DIGIT_WORDS, *V.GERMAN_DIGIT_WORDS, *V.NUMERALS, "even", "odd", "yes", "no",
              "first", "second", "german", "both", "images", "?"):
        assert V.is_word_id(V.word_id(w))
    # words added later take the first reserved slots after <unk>: no earlier id moves
    assert V.TOKEN_TO_ID["null"] == V.UNK_ID + 1 == V.FIRST_ADDED_WORD_ID
    assert V.ID_TO_TOKEN[V.FIRST_ADDED_WORD_ID + len(V.ADDED_WORDS)] == f"<reserved_{len(V.ADDED_WORDS)}>"
    assert V.word_ids() == [V.TOKEN_TO_ID[w] for w in (*V.WORDS, *V.ADDED_WORDS)]
    assert not V.is_word_id(V.UNK_ID) and not V.is_word_id(V.FIRST_ADDED_WORD_ID + len(V.ADDED_WORDS))


def test_image_round_trip_all_digits_lossless():
    images, _ = load_digit_images()
    ids = V.encode_images(images)
    assert ids.shape == (len(images), 66) and ids.dtype == np.int32
    assert (ids[:, 0] == V.BOI_ID).all() and (ids[:, -1] == V.EOI_ID).all()
    assert ((ids[:, 1:-1] >= 6) & (ids[:, 1:-1] < 23)).all()
    np.testing.assert_array_equal(V.decode_images(ids), images)
    for i in (0, 17, 1796):  # the single-image API agrees with the batch one
        one = V.encode_image(images[i])
        assert one == ids[i].tolist()
        np.testing.assert_array_equal(V.decode_image(one), images[i])
        np.testing.assert_array_equal(V.decode_image(one[1:-1]), images[i])


def test_image_errors_are_clear():
    img = np.zeros((8, 8), dtype=int)
    with pytest.raises(ValueError, match="shape"):
        V.encode_image(np.zeros((7, 8)))
    with pytest.raises(ValueError, match="0..16"):
        V.encode_image(img + 17)
    good = V.encode_image(img)
    with pytest.raises(ValueError, match="65"):
        V.decode_image(good[:-1])
    with pytest.raises(ValueError, match="not an image code"):
        V.decode_image(good[:10] + [V.word_id("yes")] + good[11:])
    with pytest.raises(ValueError, match="<boi>"):
        V.decode_image([V.BOS_ID] + good[1:])


def test_text_round_trip_and_unknown_word():
    text = "what is the spanish name of this digit ?"
    ids = V.encode_text(text)
    assert all(V.is_word_id(i) for i in ids) and len(ids) == 9
    assert V.decode_text(ids) == text
    assert V.encode_text("What is this digit?") == V.encode_text("what is this digit ?")
    assert V.encode_text("<s> draw a seven <sep>") == [1, *V.encode_text("draw a seven"), 3]
    assert V.decode_text([1, *ids, 3, 9], skip_special=True) == text
    with pytest.raises(ValueError, match="'zebra'"):
        V.encode_text("is this a zebra ?")
    with pytest.raises(ValueError, match="outside"):
        V.decode_text([V.VOCAB_SIZE])


def test_saved_tokenizer_loads_in_transformers_with_identical_ids(tmp_path):
    from transformers import PreTrainedTokenizerFast

    V.save_tokenizer(tmp_path)
    tok = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert len(tok) == V.VOCAB_SIZE
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.sep_token_id) == (0, 1, 2, 3)
    for text in ("what digit is this ?", "is this digit greater than five ?", "what is this digit plus nine ? 18",
                 "<s> <boi> <img_0> <img_16> <eoi> what is the second digit in german ? <sep> fuenf </s>"):
        assert tok(text)["input_ids"] == V.encode_text(text)
    seq = V.understanding_prompt(np.zeros((8, 8), dtype=int), V.PRETRAIN_QUESTION)
    assert tok.decode(seq) == V.decode_text(seq)


def test_prompt_builders():
    img = np.arange(64).reshape(8, 8) % 17
    p = V.understanding_prompt(img, V.PRETRAIN_QUESTION)
    assert p[0] == V.BOS_ID and p[-1] == V.SEP_ID and p[1:67] == V.encode_image(img)
    two = V.understanding_prompt(np.stack([img, img]), "are these the same digit ?")
    assert two[1:67] == two[67:133] == V.encode_image(img)
    g = V.generation_prompt(8)
    assert V.decode_text(g) == "<s> draw an eight <sep>"
    tokens, start = V.generation_example(7, img)
    assert tokens[start - 1] == V.SEP_ID and tokens[start:] == V.encode_image(img) + [V.EOS_ID]
    tokens, start = V.understanding_example(img, V.PRETRAIN_QUESTION, "seven")
    assert tokens[start:] == [V.word_id("seven"), V.EOS_ID]
    with pytest.raises(ValueError, match="digit"):
        V.generation_prompt(10)
