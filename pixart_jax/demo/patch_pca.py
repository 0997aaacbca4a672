"""The demo's autoencoder: a linear one fitted in the demo (PCA of non-overlapping image patches).

An image (B, 3, H, W) in [-1, 1] is cut into p×p patches; each patch (3·p·p values) is encoded as its top K
principal components, giving latents (B, K, H/p, W/p). Decoding maps the components back through the
orthonormal basis. Shapes images compress well: at p = 16 (one latent cell per 3×3 position cell), K = 32 of 768
components keep colour, size and position of every image and the kind of 87 % (tests/demo/test_patch_pca.py; 64
components: 97 %). Diffusion in the K-dimensional space is far cheaper to learn than in pixels, and fewer channels
learn where to put the shape sooner (teacher position accuracy after 2,000 steps: 78 % at K = 32, 11 % at 64).

`scaling_factor` plays the role of SD's 0.18215: latents × scaling_factor have unit standard deviation over the
training set. The module stands where the pipeline expects a VAE (`decode`, `scaling_factor`, `spatial_factor`).
"""
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pixart_jax.files import atomic_file


def _to_patches(images, patch):
    """(B, C, H, W) -> (B, H/p, W/p, C·p·p), each patch's values in (C, py, px) order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(b, h // patch, w // patch, c * patch * patch)


def _from_patches(patches, patch, channels=3):
    """Inverse of _to_patches."""
    b, gh, gw, _ = patches.shape
    x = patches.reshape(b, gh, gw, channels, patch, patch)
    return x.transpose(0, 3, 1, 4, 2, 5).reshape(b, channels, gh * patch, gw * patch)


class PatchPCA(nnx.Module):
    """Linear patch autoencoder: `basis` (K, 3·p·p) orthonormal rows, `mean` (3·p·p,) patch mean."""

    def __init__(self, basis, mean, patch, scaling_factor):
        self.basis = nnx.Variable(jnp.asarray(basis, jnp.float32))
        self.mean = nnx.Variable(jnp.asarray(mean, jnp.float32))
        self.spatial_factor = int(patch)
        self.scaling_factor = float(scaling_factor)

    @classmethod
    def fit(cls, images, patch=8, components=32):
        """Fits on `images` (B, 3, H, W) in [-1, 1] (H, W divisible by `patch`)."""
        images = np.asarray(images, np.float64)
        if images.ndim != 4 or images.shape[2] % patch or images.shape[3] % patch:
            raise ValueError(f"images must be (B, 3, H, W) with H and W divisible by {patch}, got {images.shape}")
        if not 0 < components <= images.shape[1] * patch * patch:
            raise ValueError(f"components must be in [1, {images.shape[1] * patch * patch}], got {components}")
        patches = _to_patches(images, patch).reshape(-1, images.shape[1] * patch * patch)
        if len(patches) < components:
            raise ValueError(f"{components} components need at least as many patches, the images give {len(patches)}")
        mean = patches.mean(0)
        _, _, vt = np.linalg.svd(patches - mean, full_matrices=False)
        basis = vt[:components]
        latent_std = ((patches - mean) @ basis.T).std()
        return cls(basis, mean, patch, 1.0 / latent_std)

    def encode(self, images):
        """(B, 3, H, W) in [-1, 1] -> unscaled latents (B, K, H/p, W/p)."""
        patches = _to_patches(jnp.asarray(images, jnp.float32), self.spatial_factor)
        return jnp.moveaxis((patches - self.mean[...]) @ self.basis[...].T, -1, 1)

    def decode(self, latents):
        """Unscaled latents (B, K, h, w) -> images (B, 3, h·p, w·p), about [-1, 1]."""
        patches = jnp.moveaxis(jnp.asarray(latents, jnp.float32), 1, -1) @ self.basis[...] + self.mean[...]
        return _from_patches(patches, self.spatial_factor)

    def save(self, path):
        with atomic_file(path, overwrite=True) as tmp, open(tmp, "wb") as f:
            np.savez(f, basis=np.asarray(self.basis[...]), mean=np.asarray(self.mean[...]),
                     patch=self.spatial_factor, scaling_factor=self.scaling_factor)

    @classmethod
    def load(cls, path):
        with np.load(path) as f:
            return cls(f["basis"], f["mean"], int(f["patch"]), float(f["scaling_factor"]))
