"""The image judge: held-out accuracy, not-a-digit detection, scores, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from cl_platform.suites.digits.judge import NOT_A_DIGIT, DigitsJudge, ImageJudge, generation_score, noise_images, train_digits_judge
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
    path = tmp_path / "judge.pkl"
    judge.save(str(path))
    loaded = DigitsJudge.load(str(path))
    np.testing.assert_array_equal(loaded.predict(images), judge.predict(images))
    generic = ImageJudge.load(str(path))  # the base class dispatches on the recorded class
    assert isinstance(generic, DigitsJudge)
    np.testing.assert_array_equal(generic.predict(images[:50]), judge.predict(images[:50]))
    with pytest.raises(ValueError, match="not a pickled judge"):
        DigitsJudge.from_bytes(b"not a pickle")


def test_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        DigitsJudge().predict(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match=r"\[N, 8, 8\]"):
        DigitsJudge().fit(np.zeros((2, 64)), [0, 1])
