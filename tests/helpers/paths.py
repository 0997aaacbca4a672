"""Where the tests find the checkout and its configs, wherever the test file sits."""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
