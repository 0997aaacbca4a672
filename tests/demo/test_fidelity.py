"""The demo's fidelity and step-change scores on ground truth and on controlled degradations of it."""
import numpy as np
import pytest

from pixart_jax.demo import fidelity, shapes


@pytest.fixture(scope="module")
def data():
    images, _, attributes = shapes.make_dataset(216, seed=3)  # every attribute combination, jittered
    canonical = np.stack([shapes.render(a) for a in attributes])
    return images, canonical, attributes


def box_blur(images, radius):
    """Mean over a (2r+1)² window (edges replicated): a blur without SciPy."""
    padded = np.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    size = images.shape[1]
    return np.mean([padded[:, dy:dy + size, dx:dx + size] for dy in range(2 * radius + 1)
                    for dx in range(2 * radius + 1)], axis=0)


def test_renderings_score_100_and_jittered_data_nearly(data):
    images, canonical, attributes = data
    assert fidelity.fidelity_percent(canonical, attributes) == 100.0
    assert 95 < fidelity.fidelity_percent(images, attributes) < 100


def test_blur_noise_and_faintness_lower_the_score(data):
    _, canonical, attributes = data
    blurred = [fidelity.fidelity_percent(box_blur(canonical, r), attributes) for r in (1, 2)]
    noisy = np.clip(canonical + np.random.default_rng(0).normal(0, 0.05, canonical.shape), 0, 1)
    faint = 0.5 * canonical + 0.5 * np.asarray(shapes.BACKGROUND, np.float32)
    assert 100 > blurred[0] > blurred[1] > 30, blurred
    assert 50 < fidelity.fidelity_percent(noisy, attributes) < 95
    assert 40 < fidelity.fidelity_percent(faint, attributes) < 60  # half-way membership everywhere on the shape


def test_the_wrong_shape_scores_low(data):
    _, canonical, attributes = data
    other = {"colour": dict(red="green", green="blue", blue="yellow", yellow="red"),
             "size": dict(small="big", big="small"), "kind": dict(circle="square", square="triangle",
                                                                   triangle="circle")}
    scores = {name: fidelity.fidelity_percent(canonical, [a._replace(**{name: swap[getattr(a, name)]})
                                                         for a in attributes]) for name, swap in other.items()}
    moved = [a._replace(position=shapes.POSITIONS[(shapes.POSITIONS.index(a.position) + 4) % 9]) for a in attributes]
    print(scores)
    assert scores["colour"] == 0 and scores["size"] < 45 and scores["kind"] < 75
    assert fidelity.fidelity_percent(canonical, moved) == 0
    background = np.broadcast_to(np.asarray(shapes.BACKGROUND, np.float32), canonical.shape)
    assert fidelity.fidelity_percent(background, attributes) == 0


def test_step_change():
    a = np.zeros((2, 4, 4, 3), np.float32)
    assert fidelity.step_change([a, a, a]) == 0
    assert fidelity.step_change([a, a + 0.25, a + 0.5]) == pytest.approx((0.25 + 0.5 + 0.25) / 3)
    with pytest.raises(ValueError, match="at least two image batches of one shape"):
        fidelity.step_change([a, a[:1]])
    with pytest.raises(ValueError, match="as many attributes as images"):
        fidelity.fidelity_percent(a, [])
