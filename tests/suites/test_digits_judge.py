"""The image judge: held-out accuracy, not-a-digit detection, scores, save/load as arrays, exact predictions."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
from safetensors import safe_open

from cl_platform.suites.digits.judge import (
    NOT_A_DIGIT, DigitsJudge, ImageJudge, generation_score, noise_images, shuffled_images, train_digits_judge,
)
from cl_platform.suites.digits.tasks import load_digit_images, make_split


@pytest.fixture(scope="module")
def trained():
    return train_digits_judge(seed=0)


def test_heldout_accuracy_and_noise(trained):
    judge, report = trained
    assert isinstance(judge, ImageJudge) and judge.NOT_A_DIGIT == NOT_A_DIGIT == 10
    assert report.n_heldout == 550
    assert report.accuracy >= 0.95
    assert report.not_a_digit_recall >= 0.95
    assert report.digits_rejected <= 0.02
    noise = noise_images(200, np.random.default_rng(123))
    assert np.mean(judge.predict(noise) == NOT_A_DIGIT) >= 0.95
    blank = np.zeros((3, 8, 8), dtype=int)
    assert (judge.predict(blank) == NOT_A_DIGIT).all()


def test_score_on_hand_made_set(trained):
    judge, _ = trained
    images, labels = load_digit_images()
    split = make_split(0)
    # one clear held-out example per digit, checked to be classified correctly, plus two noise images
    picks = []
    for d in range(10):
        cand = [i for i in split.holdout if labels[i] == d and judge.predict(images[i : i + 1])[0] == d]
        picks.append(cand[0])
    real = images[picks]
    noise = noise_images(2, np.random.default_rng(7))
    batch = np.concatenate([real, noise])
    requested = list(range(10)) + [3, 4]
    assert generation_score(judge, batch, requested) == pytest.approx(10 / 12)
    wrong = [(d + 1) % 10 for d in range(10)]
    assert judge.score(real, wrong) == 0.0
    assert judge.score(real[:4], [0, 1, 9, 9]) == pytest.approx(0.5)
    assert judge.score(real[:0], []) == 0.0
    with pytest.raises(ValueError, match="requested"):
        judge.score(real, [0])


def test_deterministic_and_save_load(trained, tmp_path):
    judge, _ = trained
    images, _ = load_digit_images()
    again, _ = train_digits_judge(seed=0)
    np.testing.assert_array_equal(again.predict(images), judge.predict(images))
    path = tmp_path / "judge.safetensors"
    judge.save(str(path))
    loaded = DigitsJudge.load(str(path))
    assert loaded.svc is None and loaded.settings() == judge.settings()
    np.testing.assert_array_equal(loaded.predict(images), judge.predict(images))
    generic = ImageJudge.load(str(path))  # the base class dispatches on the recorded class
    assert isinstance(generic, DigitsJudge)
    np.testing.assert_array_equal(generic.predict(images[:50]), judge.predict(images[:50]))
    with safe_open(str(path), framework="numpy") as f:  # numbers and JSON only
        assert set(f.keys()) == set(DigitsJudge.ARRAYS)
        assert json.loads(f.metadata()["cl_platform.judge"])["settings"]["gamma"] == judge.svc._gamma
    assert again.to_bytes() == judge.to_bytes()
    with pytest.raises(ValueError, match="not a judge written by ImageJudge.to_bytes"):
        DigitsJudge.from_bytes(b"not a judge")


def test_loaded_judge_predicts_exactly_as_the_fitted_svc(trained):
    """The numpy one-vs-one vote of a loaded judge against scikit-learn's SVC.predict on 2,800 images:
    every real digit (ties among them: the lower class wins), uniform noise, shuffled digits and
    blends of two digits (near the decision boundaries)."""
    judge, _ = trained
    loaded = ImageJudge.from_bytes(judge.to_bytes())
    images, _ = load_digit_images()
    rng = np.random.default_rng(11)
    a, b = images[rng.choice(len(images), 300)], images[rng.choice(len(images), 300)]
    sets = {"real": images, "noise": noise_images(300, rng), "shuffled": shuffled_images(images[:400], rng),
            "blends": np.rint((a + b) / 2).astype(np.int64)}
    for name, imgs in sets.items():
        expected = judge.svc.predict(DigitsJudge._features(imgs)).astype(np.int64)
        np.testing.assert_array_equal(loaded.predict(imgs), expected, err_msg=name)
        np.testing.assert_array_equal(judge.predict(imgs), expected, err_msg=name)
    assert len(set(judge.svc.predict(DigitsJudge._features(sets["blends"])))) >= 5  # not a degenerate set
    # the real digits include a tied vote, which only the lower-class rule decides
    svc = copy.deepcopy(judge.svc)
    svc.decision_function_shape = "ovo"
    dec, k = svc.decision_function(DigitsJudge._features(images)), len(svc.classes_)
    votes = np.zeros((len(images), k), dtype=int)
    for p, (i, j) in enumerate((i, j) for i in range(k) for j in range(i + 1, k)):
        votes[np.arange(len(images)), np.where(dec[:, p] > 0, i, j)] += 1
    top = np.sort(votes, axis=1)
    assert (top[:, -1] == top[:, -2]).any()


def test_arrays_that_do_not_fit_are_refused(trained):
    judge, _ = trained
    arrays, settings = judge.to_arrays()
    bad = [({**arrays, "n_support": arrays["n_support"][:-1]}, settings, "n_support"),
           ({**arrays, "dual_coef": arrays["dual_coef"][:, :-1]}, settings, "dual_coef"),
           ({k: v for k, v in arrays.items() if k != "intercept"}, settings, "missing"),
           ({**arrays, "support_vectors": arrays["support_vectors"].astype(np.int64)}, settings, "float"),
           (arrays, {**settings, "gamma": -1.0}, "gamma"),
           (arrays, {**settings, "kernel": "linear"}, "RBF")]
    for arr, sett, match in bad:
        with pytest.raises(ValueError, match=match):
            DigitsJudge.from_arrays(arr, sett)
    with pytest.raises(ValueError, match="pickled judge.*never loaded"):
        DigitsJudge.from_bytes(pickle.dumps({"format": "cl_platform.judge/1"}))


def test_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        DigitsJudge().predict(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match=r"\[N, 8, 8\]"):
        DigitsJudge().fit(np.zeros((2, 64)), [0, 1])
