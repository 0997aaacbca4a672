"""PixArt transformer configuration: the released variants, a tiny test size, and the diffusers config.json.

PixArt-Σ (arXiv 2403.04692) keeps PixArt-α's transformer; its released variants differ only in these numbers
(PixArt-alpha/PixArt-sigma `configs/pixart_sigma_config/*.py`, `tools/convert_pixart_to_diffusers.py`; diffusers
`PixArtSigmaPipeline`):
- 300 caption tokens (`model_max_length = 300`, the `y_embedding` null caption is (300, 4096); diffusers'
  `max_sequence_length=300`) instead of α's 120;
- position-embedding interpolation by resolution (`pe_interpolation`, diffusers' `interpolation_scale`): 256 → 0.5,
  512 → 1, 1024 → 2, 2048 → 4, with `sample_size` = image size / 8 (diffusers picks its resolution-binning table by
  that: 32, 64, 128, 256);
- no micro-conditions at any size (`micro_condition = False`; diffusers' `use_additional_conditions=False`, and
  `PixArtSigmaPipeline` passes none);
- files `PixArt-Sigma-XL-2-{256x256,512-MS,1024-MS,2K-MS}.pth` (the 256 model is the fixed-size `PixArt_XL_2`, the
  others `PixArtMS_XL_2`: the same weights and keys without micro-conditions). KV-token compression is off
  (`kv_compress = False`) in every released config and is not implemented here.
The SDXL VAE (`scaling_factor` 0.13025) is the pipeline's, read from its `vae/config.json`.
"""
import dataclasses
import re

ALPHA_TOKENS, SIGMA_TOKENS = 120, 300
# The caption length of each diffusers pipeline class (its `max_sequence_length` default): a diffusers transformer
# config does not store it, its pipeline's model_index.json tells.
PIPELINE_TOKENS = {"PixArtAlphaPipeline": ALPHA_TOKENS, "PixArtSigmaPipeline": SIGMA_TOKENS}
MAX_TOKENS_KEY = "_pixart_jax_max_tokens"  # ours in a diffusers config.json (diffusers ignores "_" keys)


@dataclasses.dataclass(frozen=True)
class PixArtConfig:
    depth: int = 28
    hidden_size: int = 1152
    num_heads: int = 16
    patch_size: int = 2
    in_channels: int = 4
    out_channels: int = 8          # learned sigma: eps (4) + variance interpolation v (4)
    mlp_ratio: float = 4.0
    caption_channels: int = 4096
    max_tokens: int = ALPHA_TOKENS  # T5 tokens; the size of the y_embedding null caption
    sample_size: int = 128         # native latent side; base_size = sample_size / patch_size
    interpolation_scale: float = 2.0   # "lewei_scale" of the original code
    micro_conditions: bool = True  # resolution + aspect-ratio embedders (the MS models)
    norm_eps: float = 1e-6

    @property
    def head_dim(self):
        return self.hidden_size // self.num_heads

    @property
    def base_size(self):
        return self.sample_size // self.patch_size

    @property
    def mlp_hidden(self):
        return int(self.hidden_size * self.mlp_ratio)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown PixArtConfig fields: {unknown}")
        return cls(**d)

    def to_diffusers(self):
        """The `config.json` of a diffusers `PixArtTransformer2DModel` with this architecture."""
        return {
            "_class_name": "PixArtTransformer2DModel",
            "num_attention_heads": self.num_heads, "attention_head_dim": self.head_dim,
            "in_channels": self.in_channels, "out_channels": self.out_channels, "num_layers": self.depth,
            "patch_size": self.patch_size, "attention_bias": True, "cross_attention_dim": self.hidden_size,
            "activation_fn": "gelu-approximate", "num_embeds_ada_norm": 1000, "norm_type": "ada_norm_single",
            "norm_elementwise_affine": False, "norm_eps": self.norm_eps, "caption_channels": self.caption_channels,
            "sample_size": self.sample_size, "interpolation_scale": self.interpolation_scale,
            "use_additional_conditions": self.micro_conditions, "dropout": 0.0, "upcast_attention": False,
            "norm_num_groups": 32, "attention_type": "default",
            MAX_TOKENS_KEY: self.max_tokens,
        }

    @classmethod
    def from_diffusers(cls, d, max_tokens=None):
        """From a diffusers `PixArtTransformer2DModel` (or older `Transformer2DModel`) config.json dict. The caption
        length: `max_tokens` (the pipeline's, PIPELINE_TOKENS), else the config's MAX_TOKENS_KEY (what we write),
        else α's 120."""
        if d.get("norm_type") != "ada_norm_single":
            raise ValueError(f"not a PixArt transformer config: norm_type is {d.get('norm_type')!r}, "
                             "expected 'ada_norm_single'")
        heads, head_dim = d["num_attention_heads"], d["attention_head_dim"]
        in_channels = d.get("in_channels", 4)
        sample_size = d.get("sample_size", 128)
        micro = d.get("use_additional_conditions")
        return cls(
            depth=d["num_layers"], hidden_size=heads * head_dim, num_heads=heads,
            patch_size=d.get("patch_size", 2), in_channels=in_channels,
            out_channels=d.get("out_channels") or in_channels, caption_channels=d.get("caption_channels", 4096),
            sample_size=sample_size,
            interpolation_scale=float(d.get("interpolation_scale") or max(sample_size // 64, 1)),
            micro_conditions=sample_size == 128 if micro is None else bool(micro),
            norm_eps=d.get("norm_eps", 1e-6), max_tokens=max_tokens or d.get(MAX_TOKENS_KEY, ALPHA_TOKENS),
        )


XL_2 = PixArtConfig()
SIGMA_XL_2 = XL_2.replace(max_tokens=SIGMA_TOKENS, micro_conditions=False)
PRESETS = {
    "PixArt-XL-2-256x256": XL_2.replace(sample_size=32, interpolation_scale=1.0, micro_conditions=False),
    "PixArt-XL-2-512x512": XL_2.replace(sample_size=64, interpolation_scale=1.0, micro_conditions=False),
    "PixArt-XL-2-1024-MS": XL_2,
    "PixArt-Sigma-XL-2-256x256": SIGMA_XL_2.replace(sample_size=32, interpolation_scale=0.5),
    "PixArt-Sigma-XL-2-512-MS": SIGMA_XL_2.replace(sample_size=64, interpolation_scale=1.0),
    "PixArt-Sigma-XL-2-1024-MS": SIGMA_XL_2,
    "PixArt-Sigma-XL-2-2K-MS": SIGMA_XL_2.replace(sample_size=256, interpolation_scale=4.0),
    "tiny": PixArtConfig(depth=2, hidden_size=48, num_heads=2, caption_channels=32,
                         sample_size=16, interpolation_scale=1.0, micro_conditions=True),
    # The embedded demo's model (pixart_jax/demo/run.py): 32 patch-PCA channels on a 3×3 latent grid (48 px images,
    # 16 px per latent cell), 16-token captions from a 64-wide random T5.
    "shapes-demo": PixArtConfig(depth=4, hidden_size=128, num_heads=4, patch_size=1, in_channels=32, out_channels=64,
                                caption_channels=64, max_tokens=16, sample_size=3, interpolation_scale=1.0,
                                micro_conditions=False),
}
# Released file names that map onto a preset (SAM / MSCOCO 256 models share the 256 architecture); Σ's first, as
# its names also contain α's patterns.
_NAME_PATTERNS = [(r"Sigma.*2K-MS", "PixArt-Sigma-XL-2-2K-MS"), (r"Sigma.*1024-MS", "PixArt-Sigma-XL-2-1024-MS"),
                  (r"Sigma.*512-MS", "PixArt-Sigma-XL-2-512-MS"), (r"Sigma.*256x256", "PixArt-Sigma-XL-2-256x256"),
                  (r"1024-MS", "PixArt-XL-2-1024-MS"), (r"512x512", "PixArt-XL-2-512x512"),
                  (r"256x256", "PixArt-XL-2-256x256")]


def preset(name_or_path):
    """A released variant's config, from its name or any file name containing it (e.g. `PixArt-XL-2-512x512.pth`)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    for pattern, name in _NAME_PATTERNS:
        if re.search(pattern, str(name_or_path)):
            return PRESETS[name]
    raise ValueError(f"cannot tell the PixArt variant from {name_or_path!r}: pass config= one of "
                     f"{sorted(PRESETS)} or a PixArtConfig")
