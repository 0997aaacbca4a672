"""The demo's "autoencoder": pixel space. The diffusion model works on RGB images in [-1, 1] directly, so the
decoder is the identity; it stands where the pipeline expects a VAE."""
from flax import nnx


class PixelSpace(nnx.Module):
    scaling_factor = 1.0
    spatial_factor = 1

    def decode(self, images):
        return images
