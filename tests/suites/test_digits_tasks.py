"""The digits suite: seeded split, the five tasks, the streams and the pre-training sets."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cl_platform.suites.digits import tasks as T
from cl_platform.suites.digits import vocab as V


@pytest.fixture(scope="module")
def suite() -> T.DigitsSuite:
    return T.build_suite(seed=0)


def _images_in(tokens: list[int]) -> list[np.ndarray]:
    """Decode every <boi> ... <eoi> block of a sequence."""
    out, i = [], 0
    while V.BOI_ID in tokens[i:]:
        i = tokens.index(V.BOI_ID, i)
        out.append(V.decode_image(tokens[i : i + V.IMAGE_SEQ_LEN]))
        i += V.IMAGE_SEQ_LEN
    return out


def test_deterministic_given_seed(suite):
    again = T.build_suite(seed=0)
    for name in T.TASK_ORDER:
        assert again.tasks[name].train.equals(suite.tasks[name].train)
        assert again.tasks[name].eval.equals(suite.tasks[name].eval)
    for name in ("kd", "probe"):
        assert again.streams[name].equals(suite.streams[name])
    other = T.make_split(seed=1)
    assert not np.array_equal(other.holdout, suite.split.holdout)
    u0, g0 = T.pretrain_examples(0)
    u1, g1 = T.pretrain_examples(0)
    assert u0.equals(u1) and g0.equals(g1)


def test_split_sizes_and_disjointness(suite):
    split = suite.split
    sizes = split.sizes()
    assert sizes["pretrain"] == 1247 and sizes["holdout"] == 150
    assert set(sizes["task_train"].values()) == {1247} and set(sizes["task_eval"].values()) == {80}
    pretrain = set(split.pretrain.tolist())
    held = set(split.holdout.tolist())
    evals = {n: set(v.tolist()) for n, v in split.task_eval.items()}
    trains = {n: set(v.tolist()) for n, v in split.task_train.items()}
    assert len(pretrain | held | set().union(*evals.values())) == 1797  # the pools cover the dataset
    everything_trained = pretrain | set().union(*trains.values())
    for n, ev in evals.items():
        assert not ev & everything_trained, n
        assert not ev & held, n
        for m, ev2 in evals.items():
            assert m == n or not ev & ev2
    assert not held & everything_trained
    for n, tr in trains.items():
        assert tr == pretrain  # documented decision: the tasks train on the pretrain pool
    for name, task in suite.tasks.items():
        if name != "pair":  # one distinct image per row (pair: an image and a partner of its digit)
            images = [it.images[0] for it in task.train_items]
            assert len(set(images)) == len(images) == T.TRAIN_ROWS_PER_TASK, name


def test_eval_images_never_appear_in_any_training_sequence(suite):
    images, _ = T.load_digit_images()
    held_idx = np.concatenate([suite.split.holdout, *suite.split.task_eval.values()])
    held_keys = {images[i].tobytes() for i in held_idx}
    train_keys = {images[i].tobytes() for i in suite.split.pretrain}
    assert not held_keys & train_keys  # no pixel-identical duplicate crosses the split either
    kd_images = V.decode_images(np.array([t[-67:-1] for t in suite.streams["kd"].column("tokens").to_pylist()]))
    assert not {im.astype(np.int64).tobytes() for im in kd_images} & held_keys
    for task in suite.tasks.values():
        for it in task.train_items:
            assert not set(it.images) & set(held_idx.tolist())


def test_column_types(suite):
    for task in suite.tasks.values():
        assert task.train.schema == pa.schema([("tokens", pa.list_(pa.int32())), ("answer_start", pa.int32())])
        assert task.eval.schema == pa.schema(
            [("prompt_tokens", pa.list_(pa.int32())), ("answer_tokens", pa.list_(pa.int32())), ("answer", pa.string())]
        )
        assert (task.train.num_rows, task.eval.num_rows) == (1000, 80)
    for name, n in (("kd", 500), ("probe", 100)):
        s = suite.streams[name]
        assert s.schema == pa.schema([("tokens", pa.list_(pa.int32())), ("label", pa.int32()), ("prompt_len", pa.int32())])
        assert s.num_rows == n
    assert np.bincount(suite.streams["probe"].column("label").to_numpy(), minlength=10).tolist() == [10] * 10


def test_all_ids_below_vocab_size_and_sequence_shape(suite):
    tables = [t.train.column("tokens") for t in suite.tasks.values()]
    tables += [t.eval.column(c) for t in suite.tasks.values() for c in ("prompt_tokens", "answer_tokens")]
    tables += [s.column("tokens") for s in suite.streams.values()]
    for col in tables:
        flat = pa.compute.list_flatten(col).to_numpy()
        assert flat.min() >= 0 and flat.max() < V.DIGITS_SPEC.vocab_size
        assert not (flat == V.UNK_ID).any()
    for task in suite.tasks.values():
        for toks, start in zip(task.train.column("tokens").to_pylist(), task.train.column("answer_start").to_pylist()):
            assert toks[0] == V.BOS_ID and toks[start - 1] == V.SEP_ID and toks[-1] == V.EOS_ID
            assert toks.count(V.SEP_ID) == 1
        for p, a in zip(task.eval.column("prompt_tokens").to_pylist(), task.eval.column("answer_tokens").to_pylist()):
            assert p[0] == V.BOS_ID and p[-1] == V.SEP_ID and a[-1] == V.EOS_ID


def test_answer_vocabularies_distinct_per_task(suite):
    seen: dict[str, set[str]] = {}
    pretrain_answers = set(V.DIGIT_WORDS)
    for name, task in suite.tasks.items():
        answers = set(task.eval.column("answer").to_pylist())
        train_answers = {V.decode_text(t[s:-1]) for t, s in zip(task.train.column("tokens").to_pylist(), task.train.column("answer_start").to_pylist())}
        assert answers <= set(task.answer_vocab) and train_answers <= set(task.answer_vocab)
        assert len(train_answers) >= min(len(task.answer_vocab), 10) - 1, name  # the train rows cover the vocabulary
        assert not set(task.answer_vocab) & pretrain_answers, name
        for other, vocab in seen.items():
            assert not vocab & set(task.answer_vocab), (name, other)
        seen[name] = set(task.answer_vocab)


def test_answers_consistent_with_labels(suite):
    images, labels = T.load_digit_images()
    for name, task in suite.tasks.items():
        rows = list(zip(task.eval.column("prompt_tokens").to_pylist(), task.eval.column("answer").to_pylist(), task.eval_items))
        rows += [(t[:s], V.decode_text(t[s:-1]), it) for t, s, it in
                 zip(task.train.column("tokens").to_pylist(), task.train.column("answer_start").to_pylist(), task.train_items)]
        for prompt, answer, item in rows:
            shown = _images_in(prompt)
            assert len(shown) == len(item.images)
            for img, idx in zip(shown, item.images):
                np.testing.assert_array_equal(img, images[idx])
            d = [int(labels[i]) for i in item.images]
            question = V.decode_text(prompt, skip_special=True)
            if name == "parity":
                expected = "even" if d[0] % 2 == 0 else "odd"
            elif name == "plus_k":
                k = V.DIGIT_WORDS.index(question.split()[-2])
                assert k == T.PLUS_K == item.param
                expected = str(d[0] + k)
            elif name == "compare":
                k = V.DIGIT_WORDS.index(question.split()[-2])
                assert k == T.COMPARE_K == item.param
                expected = "yes" if d[0] > k else "no"
            elif name == "name":
                expected = V.SPANISH_DIGIT_WORDS[d[0]]
            else:
                assert d[0] == d[1] and item.images[0] != item.images[1], item
                expected = V.GERMAN_DIGIT_WORDS[d[0]]
            assert answer == expected == item.answer, (name, question, d)


def test_streams_and_pretraining_sets(suite):
    images, labels = T.load_digit_images()
    probe = suite.streams["probe"]
    for toks, lab, plen in zip(probe.column("tokens").to_pylist(), probe.column("label").to_pylist(), probe.column("prompt_len").to_pylist()):
        assert toks[:plen] == V.generation_prompt(lab)
        assert toks[plen:] == V.image_answer_tokens(V.decode_image(toks[plen:-1]))
    u, g = T.pretrain_examples(0)
    assert u.num_rows == g.num_rows == 1247
    pretrain_keys = {images[i].tobytes() for i in suite.split.pretrain}
    for toks, start, lab in zip(u.column("tokens").to_pylist(), u.column("answer_start").to_pylist(), u.column("label").to_pylist()):
        assert V.decode_text(toks[start:]) == f"{V.DIGIT_WORDS[lab]} </s>"
        assert _images_in(toks)[0].tobytes() in pretrain_keys
    for toks, start, lab in zip(g.column("tokens").to_pylist()[:50], g.column("answer_start").to_pylist(), g.column("label").to_pylist()):
        assert toks[:start] == V.generation_prompt(lab)
        assert _images_in(toks)[0].tobytes() in pretrain_keys
    ev = T.pretrain_eval(0)
    assert ev.understanding.num_rows == 150 and ev.generation.num_rows == 100
    assert ev.understanding.column("answer").to_pylist() == [V.DIGIT_WORDS[d] for d in ev.understanding_labels]


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="unknown digits task"):
        T.build_task("nope", T.make_split(0))
