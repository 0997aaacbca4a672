"""Multi-scale aspect-ratio buckets (PixArt-alpha `diffusion/data/datasets/utils.py`, diffusers
`pipeline_pixart_alpha.py`; PixArt-Σ's 2048 table: PixArt-sigma's same file, diffusers `pipeline_pixart_sigma.py`):
key = nominal height/width, value = (height, width) in pixels.

The 40-entry training tables; the 33-entry test tables (= diffusers' resolution-binning tables) drop 7 extreme
keys, except at 2048, where diffusers bins to all 40. The 512 and 256 tables are the 1024 table divided by 2 and 4
exactly, the 2048 table is it times 2.
"""
ASPECT_RATIO_1024 = {
    "0.25": (512, 2048), "0.26": (512, 1984), "0.27": (512, 1920), "0.28": (512, 1856), "0.32": (576, 1792),
    "0.33": (576, 1728), "0.35": (576, 1664), "0.4": (640, 1600), "0.42": (640, 1536), "0.48": (704, 1472),
    "0.5": (704, 1408), "0.52": (704, 1344), "0.57": (768, 1344), "0.6": (768, 1280), "0.68": (832, 1216),
    "0.72": (832, 1152), "0.78": (896, 1152), "0.82": (896, 1088), "0.88": (960, 1088), "0.94": (960, 1024),
    "1.0": (1024, 1024), "1.07": (1024, 960), "1.13": (1088, 960), "1.21": (1088, 896), "1.29": (1152, 896),
    "1.38": (1152, 832), "1.46": (1216, 832), "1.67": (1280, 768), "1.75": (1344, 768), "2.0": (1408, 704),
    "2.09": (1472, 704), "2.4": (1536, 640), "2.5": (1600, 640), "2.89": (1664, 576), "3.0": (1728, 576),
    "3.11": (1792, 576), "3.62": (1856, 512), "3.75": (1920, 512), "3.88": (1984, 512), "4.0": (2048, 512),
}
ASPECT_RATIO_512 = {k: (h // 2, w // 2) for k, (h, w) in ASPECT_RATIO_1024.items()}
ASPECT_RATIO_256 = {k: (h // 4, w // 4) for k, (h, w) in ASPECT_RATIO_1024.items()}
ASPECT_RATIO_2048 = {k: (h * 2, w * 2) for k, (h, w) in ASPECT_RATIO_1024.items()}
TRAIN_TABLES = {2048: ASPECT_RATIO_2048, 1024: ASPECT_RATIO_1024, 512: ASPECT_RATIO_512, 256: ASPECT_RATIO_256}

_NOT_IN_TEST = ("0.26", "0.27", "2.89", "3.11", "3.62", "3.75", "3.88")
TEST_TABLES = {size: {k: v for k, v in table.items() if size == 2048 or k not in _NOT_IN_TEST}
               for size, table in TRAIN_TABLES.items()}


def closest_bucket(height, width, table):
    """The key whose nominal ratio is nearest to height/width (the first such key on ties)."""
    ratio = height / width
    return min(table, key=lambda key: abs(float(key) - ratio))


def bin_size(height, width, table):
    """(height, width) of the bucket nearest to the requested size's aspect ratio."""
    return table[closest_bucket(height, width, table)]
