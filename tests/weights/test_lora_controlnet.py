"""LoRA on a ControlNet-Transformer against the real PEFT library: peft wraps the PyTorch ControlNet wrapper
(pixart_jax.torch.controlnet, diffusers' transformer plus the copies and zero linears; its outputs equal the official
wrapper's) built from the official tiny fixture, with random (nonzero) A and B on the PixArt scripts' targets in the
frozen base and in the copies, and on the zero linears. Its adapter loads onto our PixArtControlNet and gives PEFT's
forward; what we save loads in PEFT and gives the same; merged equals unmerged, also written and read back."""
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from pixart_jax.models import lora  # noqa: E402
from pixart_jax.torch import load_controlnet as load_torch_controlnet  # noqa: E402
from pixart_jax.weights.controlnet import load_controlnet  # noqa: E402
from pixart_jax.weights.keymaps.lora import PIXART_TARGETS  # noqa: E402
from pixart_jax.weights.lora import add_lora, load_lora, save_lora, save_merged  # noqa: E402
from tests.helpers.controlnet_fixtures import fixture, run, run_torch  # noqa: E402
from tests.helpers.lora import randomize_adapters  # noqa: E402
from tests.helpers.parity import rel_error  # noqa: E402

TARGETS = [*PIXART_TARGETS, "before_proj", "after_proj"]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The fixture's ControlNet under PEFT (r 4, lora_alpha 8), its saved adapter and outputs."""
    root = tmp_path_factory.mktemp("controlnet-lora")
    folder, io = fixture("ms")
    io["t"] = np.array([1.0, 20.0], np.float32)  # small timesteps, as tests/weights/test_lora.py says why
    model = peft.get_peft_model(load_torch_controlnet(folder), peft.LoraConfig(r=4, lora_alpha=8,
                                                                               target_modules=TARGETS))
    randomize_adapters(model, 5)
    model.save_pretrained(root / "peft")
    model.eval()
    with model.disable_adapter():
        base = run_torch(model, io)
    return types.SimpleNamespace(root=root, folder=folder, io=io, base=base, out=run_torch(model, io),
                                 keys=set(peft.get_peft_model_state_dict(model)))


def test_a_peft_adapter_on_the_controlnet_gives_peft_s_forward(ref):
    assert any(".copied_block." in k for k in ref.keys) and any(".after_proj." in k for k in ref.keys)
    assert rel_error(ref.out, ref.base) > 0.1  # the adapter matters
    ours = load_lora(load_controlnet(ref.folder), str(ref.root / "peft"))
    paths = {".".join(map(str, p)) for p, _ in lora.adapted_modules(ours)}
    assert {"copies.attn.qkv", "copies.mlp.fc2", "before_proj", "after_proj", "base.blocks.attn.qkv"} <= paths
    error = rel_error(run(ours, ref.io), ref.out)
    print(f"ControlNet LoRA vs PEFT: {error:.2e} relative")
    assert error <= 1e-5


def test_what_we_save_loads_in_peft_and_merges_exactly(ref, tmp_path):
    ours = load_lora(load_controlnet(ref.folder), str(ref.root / "peft"))
    unmerged = run(ours, ref.io)
    save_lora(ours, str(tmp_path / "ours"))
    model = peft.PeftModel.from_pretrained(load_torch_controlnet(ref.folder), str(tmp_path / "ours")).eval()
    assert {k.replace(".default", "") for k in peft.get_peft_model_state_dict(model)} == ref.keys
    assert rel_error(run_torch(model, ref.io), ref.out) <= 1e-5
    save_merged(ours, str(tmp_path / "merged"))
    merged = run(load_controlnet(str(tmp_path / "merged")), ref.io)
    lora.fuse_lora(ours)
    fused = run(ours, ref.io)
    print(f"ControlNet LoRA merged vs unmerged: {rel_error(fused, unmerged):.2e} (fused), "
          f"{rel_error(merged, unmerged):.2e} (saved merged) relative")
    assert rel_error(fused, unmerged) <= 1e-6 and rel_error(merged, unmerged) <= 1e-6


def test_new_adapters_on_the_copies_alone():
    """A regular expression picks the copies (the frozen base untouched); a name the wrapper lacks is an error."""
    folder, io = fixture("ms")
    model = load_controlnet(folder)
    before = run(model, io)
    add_lora(model, r"controlnet\.\d+\.copied_block\..*\.(to_q|to_k|to_v)", rank=2)
    assert [p for p, _ in lora.adapted_modules(model)] == [("copies", "attn", "qkv"), ("copies", "cross_attn", "kv"),
                                                           ("copies", "cross_attn", "q")]
    assert np.array_equal(run(model, io), before)  # B starts at zero
    with pytest.raises(ValueError, match=r"unknown LoRA targets \['to_z'\]: no module of the PyTorch ControlNet"):
        add_lora(model, ["to_q", "to_z"], adapter_name="x")
