"""The demo's linear patch autoencoder: exact with every component; at the demo's 32 the checker reads colour, size
and position back off every reconstruction and the kind off most (fine shape edges live in later components)."""
import numpy as np
import pytest

from pixart_jax.demo import checker, shapes
from pixart_jax.demo.patch_pca import PatchPCA


@pytest.fixture(scope="module")
def dataset():
    images, _, attributes = shapes.make_dataset(432, seed=3)
    return shapes.to_model_input(images), attributes


def test_all_components_reconstruct_exactly(dataset):
    x, _ = dataset
    pca = PatchPCA.fit(x[:128], patch=16, components=3 * 16 * 16)
    latents = pca.encode(x[128:144])
    assert latents.shape == (16, 768, 3, 3)
    np.testing.assert_allclose(np.asarray(pca.decode(latents)), x[128:144], atol=1e-5)


def test_32_components_keep_the_attributes_and_give_unit_scaled_latents(dataset):
    x, attributes = dataset
    pca = PatchPCA.fit(x, patch=16, components=32)
    latents = np.asarray(pca.encode(x))
    assert latents.shape == (len(x), 32, 3, 3) and pca.spatial_factor == 16
    assert abs((latents * pca.scaling_factor).std() - 1) < 1e-3
    read = checker.attribute_percentages(shapes.from_model_output(np.asarray(pca.decode(latents))), attributes)
    assert read["colour"] == read["size"] == read["position"] == 100 and read["kind"] >= 85, read


def test_save_load_round_trip(dataset, tmp_path):
    x, _ = dataset
    pca = PatchPCA.fit(x[:64], patch=16, components=8)
    pca.save(tmp_path / "pca.npz")
    loaded = PatchPCA.load(tmp_path / "pca.npz")
    assert loaded.scaling_factor == pca.scaling_factor and loaded.spatial_factor == 16
    np.testing.assert_array_equal(np.asarray(loaded.encode(x[:4])), np.asarray(pca.encode(x[:4])))


def test_bad_inputs_name_the_problem(dataset):
    x, _ = dataset
    with pytest.raises(ValueError, match="divisible by 10"):
        PatchPCA.fit(x[:4], patch=10)
    with pytest.raises(ValueError, match=r"components must be in \[1, 768\]"):
        PatchPCA.fit(x[:4], patch=16, components=769)
    with pytest.raises(ValueError, match="at least as many patches"):
        PatchPCA.fit(x[:4], patch=16, components=64)
