"""Control images: the HED network against a PyTorch implementation of the ControlNetHED_Apache2 layout (random
weights, saved as ControlNetHED.pth), OpenCV's Canny, reading/fitting images, and the VAE encoding."""
import numpy as np
import pytest
from flax import nnx

from pixart_jax.models.hed import HED, STAGES
from pixart_jax.models.vae import AutoencoderKL, VAEConfig
from pixart_jax.pipelines.control import ControlKind, canny, control_latents, control_pixels, edge_maps, fit, read_image
from pixart_jax.testing.random_weights import redraw
from pixart_jax.weights.hed import load_hed
from tests.helpers.parity import rel_error


def torch_hed():
    """The HED of spec §5.3 in PyTorch with the standard ControlNetHED.pth names (controlnet-aux's class needs a
    torchvision that does not load against this torch, so the test carries its own)."""
    import torch
    import torch.nn.functional as F

    class Stage(torch.nn.Module):
        def __init__(self, din, dout, convs):
            super().__init__()
            self.convs = torch.nn.Sequential(*[torch.nn.Conv2d(din if j == 0 else dout, dout, 3, padding=1)
                                               for j in range(convs)])
            self.projection = torch.nn.Conv2d(dout, 1, 1)

        def forward(self, x, pool):
            if pool:
                x = F.max_pool2d(x, 2, 2)
            for conv in self.convs:
                x = F.relu(conv(x))
            return x, self.projection(x)

    class HED(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.Parameter(torch.zeros(1, 3, 1, 1))
            channels = [3] + [c for _, c in STAGES]
            for i, (n, c) in enumerate(STAGES):
                setattr(self, f"block{i + 1}", Stage(channels[i], c, n))

        def logits(self, rgb255):
            h, sides = rgb255 - self.norm, []
            for i in range(len(STAGES)):
                h, side = getattr(self, f"block{i + 1}")(h, i > 0)
                sides.append(F.interpolate(side, size=rgb255.shape[2:], mode="bilinear", align_corners=False))
            return torch.stack(sides).mean(0)

    return HED()


@pytest.fixture(scope="module")
def hed_pair(tmp_path_factory):
    torch = pytest.importorskip("torch")
    ref = redraw(torch_hed(), 0).eval()
    with torch.no_grad():
        ref.norm.copy_(torch.tensor([123.7, 116.3, 103.5]).view(1, 3, 1, 1))
    path = tmp_path_factory.mktemp("hed") / "ControlNetHED.pth"
    torch.save(ref.state_dict(), path)
    return ref, load_hed(str(path))


def test_hed_matches_the_pytorch_network(hed_pair):
    import torch

    ref, ours = hed_pair
    images = np.random.default_rng(0).uniform(0, 1, (2, 3, 40, 56)).astype(np.float32)  # pools to 2x3 at stage 5
    with torch.no_grad():
        logits = ref.logits(torch.from_numpy(images) * 255).numpy()
    err = rel_error(ours.logits(images), logits)
    print(f"HED logits rel error {err:.2e} (range {logits.min():.1f} .. {logits.max():.1f})")
    assert err <= 1e-5
    edges = np.asarray(ours(images))
    assert rel_error(edges, 1 / (1 + np.exp(-logits.astype(np.float64)))) <= 1e-5
    assert edges.shape == (2, 1, 40, 56) and 0 <= edges.min() and edges.max() <= 1


def square(size=48, lo=12, hi=36):
    image = np.full((size, size, 3), 40, np.uint8)
    image[lo:hi, lo:hi] = (220, 30, 30)
    return image


def test_canny_marks_the_border_of_a_square():
    edges = canny(square())
    assert set(np.unique(edges)) == {0.0, 1.0}
    rows, cols = np.nonzero(edges)
    assert 10 <= rows.min() <= 13 and 34 <= rows.max() <= 37 and 10 <= cols.min() <= 13 and 34 <= cols.max() <= 37
    assert edges[20:28, 20:28].sum() == 0 and edges[:8].sum() == 0  # nothing inside or far outside


def test_edge_maps_and_vae_input():
    hed = HED(rngs=nnx.Rngs(0))
    images = np.stack([square(), square(lo=4, hi=20)])
    maps = {kind: np.asarray(edge_maps(images, kind, hed)) for kind in ControlKind}
    assert maps["canny"].shape == maps["hed"].shape == (2, 1, 48, 48) and maps["none"].shape == (2, 3, 48, 48)
    np.testing.assert_array_equal(maps["canny"][1, 0], canny(images[1]))
    np.testing.assert_allclose(maps["none"], images.transpose(0, 3, 1, 2) / 255.0, atol=1e-7)
    pixels = np.asarray(control_pixels(maps["canny"]))
    assert pixels.shape == (2, 3, 48, 48) and set(np.unique(pixels)) == {-1.0, 1.0}
    assert (pixels[:, 0] == pixels[:, 2]).all()
    with pytest.raises(ValueError, match="control 'hed' needs the HED network"):
        edge_maps(images, "hed")


def test_control_latents_are_a_scaled_posterior_sample():
    import jax

    vae = AutoencoderKL(VAEConfig(block_out_channels=(8, 8, 8, 8), norm_num_groups=4), rngs=nnx.Rngs(0))
    pixels = control_pixels(edge_maps(np.stack([square()]), "canny"))
    key = jax.random.key(3)
    latents = np.asarray(control_latents(vae, pixels, key))
    mean, std = vae.encode(pixels)
    expected = 0.18215 * np.asarray(mean + std * jax.random.normal(key, mean.shape))
    assert latents.shape == (1, 4, 6, 6)
    np.testing.assert_allclose(latents, expected, rtol=1e-6, atol=1e-7)


def test_read_and_fit_images(tmp_path):
    image = square()
    path = tmp_path / "edges.png"
    from PIL import Image

    Image.fromarray(image).save(path)
    np.testing.assert_array_equal(read_image(str(path)), image)
    np.testing.assert_array_equal(read_image(image[..., 0]), np.repeat(image[..., :1], 3, axis=-1))
    assert read_image(image.astype(np.float32) / 255).dtype == np.uint8
    assert fit(image, 32, 64).shape == (32, 64, 3) and fit(image, 48, 48) is image
    with pytest.raises(ValueError, match="control image .*missing.png does not exist"):
        read_image(str(tmp_path / "missing.png"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read control image .*bad.png"):
        read_image(str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match=r"must be \(H, W\) or \(H, W, 3\), got shape \(4, 4, 2\)"):
        read_image(np.zeros((4, 4, 2)))
