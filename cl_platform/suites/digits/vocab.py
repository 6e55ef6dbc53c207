"""The closed vocabulary of the digits benchmark: ids, image and text tokenisers, prompt builders.

The tiny Chameleon-architecture base model is pre-trained on this vocabulary, so the id layout
below is **final**: never reorder, rename or remove an entry. New words go into the reserved
slots at the end (``<reserved_k>`` -> the new word), which keeps ``vocab_size`` and every existing
id unchanged.

Id layout (``VOCAB_SIZE`` = 128)::

    0 <pad>   1 <s>   2 </s>   3 <sep>   4 <boi>   5 <eoi>
    6..22     <img_0> .. <img_16>       one image code per grey level (8x8 digits, levels 0..16)
    23..      WORDS, in the fixed order of :data:`WORDS`
    then      <unk> (never produced by :func:`encode_text`: unknown words raise ValueError)
    then      <reserved_0> .. up to id 127, spare slots for future words

Sequences are ``<s> prompt <sep> answer </s>``; the loss starts after ``<sep>``
(``answer_start`` = index of the first token after ``<sep>``). An image inside a sequence is
``<boi>`` + 64 codes in row-major order + ``<eoi>`` (66 tokens).

- understanding: ``<s> <boi> img <eoi> what digit is this ? <sep> seven </s>``
- generation:    ``<s> draw a seven <sep> <boi> img <eoi> </s>``
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from cl_platform.models.modality import ModalitySpec

# --------------------------------------------------------------------------------------------
# Fixed id layout
# --------------------------------------------------------------------------------------------

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
SEP_ID = 3
BOI_ID = 4
EOI_ID = 5
#: Number of grey levels of an sklearn digit (0..16 inclusive).
NUM_LEVELS = 17
#: First image code id: grey level ``g`` is token ``IMAGE_CODE_LO + g``.
IMAGE_CODE_LO = 6
#: One past the last image code id.
IMAGE_CODE_HI = IMAGE_CODE_LO + NUM_LEVELS  # 23
#: Side of a digit image, in pixels; an image is ``IMAGE_SIDE**2`` codes.
IMAGE_SIDE = 8
IMAGE_NUM_CODES = IMAGE_SIDE * IMAGE_SIDE  # 64
#: Tokens of one image inside a sequence: ``<boi>`` + 64 codes + ``<eoi>``.
IMAGE_SEQ_LEN = IMAGE_NUM_CODES + 2  # 66

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<sep>", "<boi>", "<eoi>")
IMAGE_TOKENS: tuple[str, ...] = tuple(f"<img_{g}>" for g in range(NUM_LEVELS))

#: English digit words, index = digit. Answers of the pre-training understanding task.
DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Spanish digit words, index = digit. Answers of the ``name`` task (a new way to name a digit).
SPANISH_DIGIT_WORDS: tuple[str, ...] = ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve")
#: German digit words, index = digit (ASCII: "fuenf"). Answers of the ``pair`` task.
GERMAN_DIGIT_WORDS: tuple[str, ...] = ("null", "eins", "zwei", "drei", "vier", "fuenf", "sechs", "sieben", "acht", "neun")
#: Numerals "0".."18", answers of the ``plus_k`` task (digit + k).
NUMERALS: tuple[str, ...] = tuple(str(n) for n in range(19))

#: The fixed, ordered word list; word ``WORDS[i]`` has id ``FIRST_WORD_ID + i``. Append-only via the
#: reserved slots: never edit the order.
WORDS: tuple[str, ...] = (
    *DIGIT_WORDS,
    *NUMERALS,
    *SPANISH_DIGIT_WORDS,
    # question / instruction words
    "what", "which", "is", "are", "this", "these", "the", "a", "an", "of", "or", "and", "than", "in",
    "digit", "digits", "number", "image", "name", "spanish", "draw", "write", "show",
    "even", "odd", "plus", "greater", "less", "larger", "smaller", "same", "equal",
    "first", "second", "yes", "no",
    "?", ",", ".",
)
FIRST_WORD_ID = IMAGE_CODE_HI  # 23
UNK_TOKEN = "<unk>"
UNK_ID = FIRST_WORD_ID + len(WORDS)
#: Words added later, in the first reserved slots after ``<unk>`` (``<reserved_k>`` -> word k).
ADDED_WORDS: tuple[str, ...] = (*GERMAN_DIGIT_WORDS, "german", "both", "images")
FIRST_ADDED_WORD_ID = UNK_ID + 1
#: Total number of ids (fixed for the lifetime of the ``digits-v1`` spec).
VOCAB_SIZE = 128
#: The slots still free (they keep their ``<reserved_k>`` names as words are added).
RESERVED_TOKENS: tuple[str, ...] = tuple(f"<reserved_{k}>" for k in range(len(ADDED_WORDS), VOCAB_SIZE - UNK_ID - 1))
#: Every word, in id order (:data:`WORDS` then :data:`ADDED_WORDS`).
ALL_WORDS: tuple[str, ...] = (*WORDS, *ADDED_WORDS)

#: Every token, index = id.
ID_TO_TOKEN: tuple[str, ...] = (*SPECIAL_TOKENS, *IMAGE_TOKENS, *WORDS, UNK_TOKEN, *ADDED_WORDS, *RESERVED_TOKENS)
TOKEN_TO_ID: dict[str, int] = {tok: i for i, tok in enumerate(ID_TO_TOKEN)}
#: Tokens that are not words (control, image, unk, reserved); added as special tokens.
NON_WORD_TOKENS: tuple[str, ...] = (*SPECIAL_TOKENS, *IMAGE_TOKENS, UNK_TOKEN, *RESERVED_TOKENS)

assert len(ID_TO_TOKEN) == VOCAB_SIZE, "vocabulary layout does not add up to VOCAB_SIZE"
assert len(TOKEN_TO_ID) == VOCAB_SIZE, "duplicate token in the vocabulary"
assert len(RESERVED_TOKENS) >= 4, "keep a few reserved slots for future words"

#: The digits benchmark's modality spec: image codes 6..22, markers 4/5 (routed range [4, 23)).
DIGITS_SPEC = ModalitySpec(
    spec_id="digits-v1",
    vocab_size=VOCAB_SIZE,
    image_code_range=(IMAGE_CODE_LO, IMAGE_CODE_HI),
    boi_id=BOI_ID,
    eoi_id=EOI_ID,
    pad_id=PAD_ID,
    sep_id=SEP_ID,
    eos_id=EOS_ID,
)

#: The pre-training understanding question and generation instruction.
PRETRAIN_QUESTION = "what digit is this ?"
GENERATION_TEMPLATE = "draw {article} {word}"

# --------------------------------------------------------------------------------------------
# Image tokeniser
# --------------------------------------------------------------------------------------------


def _check_image_array(arr: np.ndarray, *, batched: bool, what: str) -> np.ndarray:
    want = 3 if batched else 2
    arr = np.asarray(arr)
    if arr.ndim != want or arr.shape[-2:] != (IMAGE_SIDE, IMAGE_SIDE):
        shape = "[N, 8, 8]" if batched else "[8, 8]"
        raise ValueError(f"{what}: expected an array of shape {shape}, got {arr.shape}")
    if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"{what}: grey levels must be integers 0..16, got non-integer values")
    if arr.size and (arr.min() < 0 or arr.max() >= NUM_LEVELS):
        raise ValueError(f"{what}: grey levels must be in 0..16, got range [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


def encode_images(images: np.ndarray) -> np.ndarray:
    """Encode a batch ``[N, 8, 8]`` of digits (levels 0..16) as ``[N, 66]`` int32 token ids."""
    arr = _check_image_array(images, batched=True, what="encode_images(images)")
    n = arr.shape[0]
    out = np.empty((n, IMAGE_SEQ_LEN), dtype=np.int32)
    out[:, 0] = BOI_ID
    out[:, 1:-1] = arr.reshape(n, IMAGE_NUM_CODES) + IMAGE_CODE_LO
    out[:, -1] = EOI_ID
    return out


def encode_image(image: np.ndarray) -> list[int]:
    """Encode one ``[8, 8]`` digit (levels 0..16) as ``[<boi>] + 64 codes + [<eoi>]``."""
    arr = _check_image_array(image, batched=False, what="encode_image(image)")
    return encode_images(arr[None])[0].tolist()


def decode_images(ids: np.ndarray) -> np.ndarray:
    """Decode ``[N, 66]`` image token ids (each row ``<boi>`` + 64 codes + ``<eoi>``) to ``[N, 8, 8]`` int64.

    Raises ValueError on a wrong shape, missing markers or a non-image id among the codes.
    """
    arr = np.asarray(ids)
    if arr.ndim != 2 or arr.shape[1] != IMAGE_SEQ_LEN:
        raise ValueError(f"decode_images(ids): expected shape [N, {IMAGE_SEQ_LEN}] (<boi> + 64 codes + <eoi>), got {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.shape[0]:
        bad = np.flatnonzero((arr[:, 0] != BOI_ID) | (arr[:, -1] != EOI_ID))
        if bad.size:
            r = int(bad[0])
            raise ValueError(
                f"decode_images(ids): row {r} must start with <boi> ({BOI_ID}) and end with <eoi> ({EOI_ID}), "
                f"got {int(arr[r, 0])} ... {int(arr[r, -1])}"
            )
        codes = arr[:, 1:-1]
        out_of_range = (codes < IMAGE_CODE_LO) | (codes >= IMAGE_CODE_HI)
        if out_of_range.any():
            r, c = (int(x) for x in np.argwhere(out_of_range)[0])
            raise ValueError(
                f"decode_images(ids): row {r} code {c} is id {int(codes[r, c])}, not an image code "
                f"[{IMAGE_CODE_LO}, {IMAGE_CODE_HI})"
            )
    return (arr[:, 1:-1] - IMAGE_CODE_LO).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


def decode_image(ids: Sequence[int]) -> np.ndarray:
    """Decode ``[<boi>] + 64 codes + [<eoi>]`` (66 ids) back to an ``[8, 8]`` int64 image.

    Also accepts the 64 bare codes without markers. Raises ValueError otherwise.
    """
    arr = np.asarray(list(ids), dtype=np.int64)
    if arr.ndim != 1 or arr.shape[0] not in (IMAGE_SEQ_LEN, IMAGE_NUM_CODES):
        raise ValueError(
            f"decode_image(ids): expected {IMAGE_SEQ_LEN} ids (<boi> + 64 codes + <eoi>) or {IMAGE_NUM_CODES} bare codes, "
            f"got {arr.shape[0] if arr.ndim == 1 else arr.shape}"
        )
    if arr.shape[0] == IMAGE_NUM_CODES:
        arr = np.concatenate([[BOI_ID], arr, [EOI_ID]])
    return decode_images(arr[None])[0]


# --------------------------------------------------------------------------------------------
# Text tokeniser
# --------------------------------------------------------------------------------------------


def build_tokenizer():
    """The word-level ``tokenizers.Tokenizer`` of the closed vocabulary.

    WordLevel model over :data:`ID_TO_TOKEN`, lower-casing normaliser, whitespace pre-tokeniser
    (``\\w+|[^\\w\\s]+``, so ``"this?"`` splits into ``this`` and ``?``), control / image / reserved
    tokens registered as added special tokens, no post-processor (no ids are added implicitly).
    Unknown words map to ``<unk>``; :func:`encode_text` turns that into a ValueError.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab=dict(TOKEN_TO_ID), unk_token=UNK_TOKEN))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with single spaces
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in NON_WORD_TOKENS])
    return tok


_TOKENIZER = None


def _tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = build_tokenizer()
    return _TOKENIZER


#: Special-token roles, as written to ``tokenizer_config.json`` / ``special_tokens_map.json``.
SPECIAL_TOKENS_MAP: dict[str, str] = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "<sep>",
    "unk_token": UNK_TOKEN,
}


def save_tokenizer(directory: str | Path) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` to ``directory``.

    ``transformers.PreTrainedTokenizerFast.from_pretrained(directory)`` (or ``AutoTokenizer``) then
    gives the same ids as :func:`encode_text`. Returns the directory.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name, text in tokenizer_files().items():
        (d / name).write_text(text, encoding="utf-8")
    return d


def tokenizer_files() -> dict[str, str]:
    """The saved tokenizer as ``{file name: text}`` (for writing into a store without a local dir)."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 1024,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "modality_spec": DIGITS_SPEC.to_dict(),
        **SPECIAL_TOKENS_MAP,
    }
    return {
        "tokenizer.json": _tokenizer().to_str(pretty=True),
        "tokenizer_config.json": json.dumps(config, indent=2, sort_keys=True) + "\n",
        "special_tokens_map.json": json.dumps(SPECIAL_TOKENS_MAP, indent=2, sort_keys=True) + "\n",
    }


def encode_text(text: str) -> list[int]:
    """Token ids of ``text`` (words separated by whitespace; punctuation splits off; case-insensitive).

    Special tokens written literally (``<s>``, ``<sep>``, ``<img_3>``...) are recognised. Adds no
    ``<s>``/``</s>``. Raises ValueError naming the word when a word is not in the closed vocabulary.
    """
    if not isinstance(text, str):
        raise TypeError(f"encode_text(text): expected str, got {type(text).__name__}")
    enc = _tokenizer().encode(text, add_special_tokens=False)
    if UNK_ID in enc.ids:
        unknown = [text[a:b] for i, (a, b) in zip(enc.ids, enc.offsets) if i == UNK_ID]
        raise ValueError(
            f"encode_text({text!r}): unknown word(s) {unknown}; the digits vocabulary is closed "
            f"(see cl_platform.suites.digits.vocab.ALL_WORDS)"
        )
    return list(enc.ids)


def decode_text(ids: Sequence[int], *, skip_special: bool = False) -> str:
    """Text of ``ids``: tokens joined by single spaces.

    With ``skip_special`` the control, image, unk and reserved tokens are dropped (the words only).
    Raises ValueError on an id outside ``[0, VOCAB_SIZE)``.
    """
    out: list[str] = []
    for i in ids:
        i = int(i)
        if not 0 <= i < VOCAB_SIZE:
            raise ValueError(f"decode_text(ids): id {i} outside the vocabulary [0, {VOCAB_SIZE})")
        if skip_special and not is_word_id(i):
            continue
        out.append(ID_TO_TOKEN[i])
    return " ".join(out)


def is_word_id(i: int) -> bool:
    """True when ``i`` is the id of a word (:data:`ALL_WORDS`)."""
    i = int(i)
    return FIRST_WORD_ID <= i < UNK_ID or FIRST_ADDED_WORD_ID <= i < FIRST_ADDED_WORD_ID + len(ADDED_WORDS)


def word_ids() -> list[int]:
    """The ids of every word of :data:`ALL_WORDS`, in order."""
    return [TOKEN_TO_ID[w] for w in ALL_WORDS]


def word_id(word: str) -> int:
    """Id of one vocabulary word (exact, lower-case). ValueError when it is not a word."""
    i = TOKEN_TO_ID.get(word)
    if i is None or not is_word_id(i):
        raise ValueError(f"word_id({word!r}): not a word of the digits vocabulary")
    return i


# --------------------------------------------------------------------------------------------
# Prompt builders (shared by pre-training and the tasks)
# --------------------------------------------------------------------------------------------


def _as_image_list(images) -> list[np.ndarray]:
    arr = np.asarray(images)
    if arr.ndim == 2:
        return [arr]
    if arr.ndim == 3:
        return list(arr)
    raise ValueError(f"understanding_prompt(images): expected one [8, 8] image or [K, 8, 8], got shape {arr.shape}")


def understanding_prompt(images, question: str | Sequence[str]) -> list[int]:
    """``<s> <boi> img <eoi> [<boi> img2 <eoi> ...] question <sep>``.

    ``images`` is one ``[8, 8]`` digit or a ``[K, 8, 8]`` stack (K images in order); ``question``
    is a string or a sequence of words.
    """
    text = question if isinstance(question, str) else " ".join(question)
    ids = [BOS_ID]
    for img in _as_image_list(images):
        ids += encode_image(img)
    ids += encode_text(text)
    ids.append(SEP_ID)
    return ids


def generation_instruction(digit: int) -> str:
    """The generation instruction for ``digit`` (``"draw a seven"``, ``"draw an eight"``)."""
    d = int(digit)
    if not 0 <= d <= 9:
        raise ValueError(f"generation_instruction(digit): digit must be 0..9, got {digit!r}")
    word = DIGIT_WORDS[d]
    return GENERATION_TEMPLATE.format(article="an" if word == "eight" else "a", word=word)


def generation_prompt(digit: int) -> list[int]:
    """``<s> draw a <digit word> <sep>`` (the model then emits ``<boi>`` + 64 codes + ``<eoi> </s>``)."""
    return [BOS_ID, *encode_text(generation_instruction(digit)), SEP_ID]


def answer_tokens(answer: str) -> list[int]:
    """What the model must emit after the prompt for a text answer: ``answer words + </s>``."""
    return [*encode_text(answer), EOS_ID]


def image_answer_tokens(image: np.ndarray) -> list[int]:
    """What the model must emit after a generation prompt: ``<boi> 64 codes <eoi> </s>``."""
    return [*encode_image(image), EOS_ID]


def make_example(prompt: Sequence[int], answer: Sequence[int]) -> tuple[list[int], int]:
    """A training row ``(tokens, answer_start)``: ``tokens = prompt + answer``, ``answer_start = len(prompt)``.

    ``prompt`` must end with ``<sep>`` so that the loss starts right after it.
    """
    prompt = list(prompt)
    if not prompt or prompt[-1] != SEP_ID:
        raise ValueError(f"make_example(prompt): the prompt must end with <sep> ({SEP_ID})")
    return prompt + list(answer), len(prompt)


def understanding_example(images, question: str, answer: str) -> tuple[list[int], int]:
    """``(tokens, answer_start)`` for ``<s> images question <sep> answer </s>``."""
    return make_example(understanding_prompt(images, question), answer_tokens(answer))


def generation_example(digit: int, image: np.ndarray) -> tuple[list[int], int]:
    """``(tokens, answer_start)`` for ``<s> draw a <word> <sep> <boi> img <eoi> </s>``."""
    return make_example(generation_prompt(digit), image_answer_tokens(image))


__all__ = [
    "PAD_ID", "BOS_ID", "EOS_ID", "SEP_ID", "BOI_ID", "EOI_ID", "UNK_ID",
    "IMAGE_CODE_LO", "IMAGE_CODE_HI", "NUM_LEVELS", "IMAGE_SIDE", "IMAGE_NUM_CODES", "IMAGE_SEQ_LEN",
    "FIRST_WORD_ID", "VOCAB_SIZE", "WORDS", "ADDED_WORDS", "ALL_WORDS", "FIRST_ADDED_WORD_ID", "DIGIT_WORDS",
    "SPANISH_DIGIT_WORDS", "GERMAN_DIGIT_WORDS", "NUMERALS", "word_ids",
    "ID_TO_TOKEN", "TOKEN_TO_ID", "DIGITS_SPEC", "PRETRAIN_QUESTION", "GENERATION_TEMPLATE",
    "SPECIAL_TOKENS_MAP",
    "encode_image", "decode_image", "encode_images", "decode_images",
    "build_tokenizer", "save_tokenizer", "tokenizer_files", "encode_text", "decode_text", "is_word_id", "word_id",
    "understanding_prompt", "generation_instruction", "generation_prompt", "answer_tokens", "image_answer_tokens",
    "make_example", "understanding_example", "generation_example",
]
