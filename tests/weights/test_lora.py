"""LoRA adapter files against the real PEFT library: a tiny micro-conditioned diffusers PixArt with random weights,
wrapped by peft with the PixArt scripts' targets and random (nonzero) A and B; the adapter saved by PEFT and in the
other formats loads onto our model and gives PEFT's forward, and what we save loads in PEFT."""
import json
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

from pixart_jax.models import lora  # noqa: E402
from pixart_jax.testing.random_weights import redraw  # noqa: E402
from pixart_jax.weights import WeightsError, load_safetensors, save_safetensors  # noqa: E402
from pixart_jax.weights.keymaps.lora import PIXART_TARGETS  # noqa: E402
from pixart_jax.weights.lora import load_lora, save_lora, save_merged  # noqa: E402
from pixart_jax.weights.transformer import load_transformer, save_diffusers  # noqa: E402
from tests.helpers.lora import kohya, randomize_adapters, to_original_names  # noqa: E402
from tests.helpers.parity import rel_error  # noqa: E402
from tests.helpers.transformer_io import inputs, run_ours, run_reference  # noqa: E402

# Micro-conditioned (sample_size 128), hidden 24 (divisible by 3 for the size embedders).
TINY = dict(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8, num_layers=2,
            caption_channels=32, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
            activation_fn="gelu-approximate", attention_bias=True, cross_attention_dim=24, sample_size=128)
# Small timesteps: at t ≈ 999 the float32 timestep features of XLA and torch differ by up to 3e-5 (their exp
# rounds the frequencies differently; a base-model difference the transformer's parity tests bound), which random
# adapters on the timestep MLP amplify to ~1e-5 of the output. At t = 1, 20 the comparison measures the adapters
# (ours is then within 1.1e-6 of PEFT in float64, PEFT in float32 within 2.8e-6).
X = {**inputs(2, 8, 12), "timestep": np.array([1.0, 20.0], np.float32)}
# The second adapter: another rank and alpha, rsLoRA scaling, on fewer modules.
SECOND = dict(r=2, lora_alpha=3, use_rslora=True, target_modules=["to_q", "to_v", "proj", "linear_2"])


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base = redraw(diffusers.PixArtTransformer2DModel(**TINY), 1).eval()
    base.save_pretrained(root / "transformer", safe_serialization=True)
    base_out = run_reference(base, X)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(PIXART_TARGETS)))
    model.add_adapter("second", peft.LoraConfig(**SECOND))
    randomize_adapters(model, 2)
    model.save_pretrained(root / "peft")  # "default" in peft/, "second" in peft/second/
    model.eval()
    return types.SimpleNamespace(root=root, model=model, base_out=base_out,
                                 state=peft.get_peft_model_state_dict(model, adapter_name="default"))


def peft_forward(ref, weights):
    """PEFT's output with the adapters {name: weight} active (diffusers' set_adapters: each scaling times weight)."""
    for module in ref.model.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            module.set_adapter(list(weights))
            for name, weight in weights.items():
                module.set_scale(name, weight)
    return run_reference(ref.model, X)


def ours(ref, *adapters):
    """Our model from the saved base, with load_lora(path, scale) for each (path, scale) of `adapters`."""
    model = load_transformer(str(ref.root / "transformer"))
    for path, scale in adapters:
        load_lora(model, str(path), scale)
    return model


def test_peft_folder_matches_peft(ref):
    expected = peft_forward(ref, {"default": 1.0})
    assert rel_error(expected, ref.base_out) > 0.1  # the adapter matters
    got = run_ours(ours(ref, (ref.root / "peft", 1.0)), X)
    assert rel_error(got, expected) <= 1e-5


def other_formats(ref, root):
    """{format: path} of the default adapter re-saved in every other format we read."""
    state = {k: v.contiguous() for k, v in ref.state.items()}
    diffusers_keys = {"transformer." + k.removeprefix("base_model.model."): v for k, v in state.items()}
    script_keys = {"unet." + k: v for k, v in state.items()}
    kohya_keys = {kohya(k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0], k.rsplit(".lora_", 1)[1]): v
                  for k, v in state.items()}
    kohya_keys.update({k.rsplit(".lora_", 1)[0] + ".alpha": torch.tensor(8.0) for k in kohya_keys})
    paths = {"diffusers": root / "diffusers" / "pytorch_lora_weights.safetensors",
             "pixart-script": root / "pytorch_lora_weights.safetensors", "kohya": root / "kohya.safetensors",
             "original-names": root / "original.safetensors", "peft-bin": root / "bin" / "adapter_model.bin"}
    for name, tensors in (("diffusers", diffusers_keys), ("pixart-script", script_keys), ("kohya", kohya_keys),
                          ("original-names", to_original_names(state, TINY["num_layers"]))):
        paths[name].parent.mkdir(exist_ok=True)
        save_safetensors({k: v.numpy() for k, v in tensors.items()}, str(paths[name]))
    paths["peft-bin"].parent.mkdir()
    torch.save(state, paths["peft-bin"])
    (root / "bin" / "adapter_config.json").write_text((ref.root / "peft" / "adapter_config.json").read_text())
    return {"diffusers": paths["diffusers"].parent, **{k: v for k, v in paths.items() if k != "diffusers"},
            "peft-bin": paths["peft-bin"].parent}


@pytest.fixture(scope="module")
def formats(ref, tmp_path_factory):
    return other_formats(ref, tmp_path_factory.mktemp("formats"))


@pytest.mark.parametrize("fmt", ["diffusers", "pixart-script", "kohya", "original-names", "peft-bin"])
def test_every_format_gives_the_same_forward(ref, formats, fmt):
    expected = run_ours(ours(ref, (ref.root / "peft", 1.0)), X)
    if fmt in ("diffusers", "pixart-script"):  # no alpha in these files: PEFT's default 8, said once
        with pytest.warns(UserWarning, match="lora_alpha 8") as caught:
            model = ours(ref, (formats[fmt], 1.0))
        assert len(caught) == 1
    else:
        model = ours(ref, (formats[fmt], 1.0))
    assert rel_error(run_ours(model, X), expected) <= 1e-6


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_scale_matches_peft(ref, scale):
    got = run_ours(ours(ref, (ref.root / "peft", scale)), X)
    assert rel_error(got, peft_forward(ref, {"default": scale})) <= 1e-5


def test_two_adapters_with_weights_match_peft(ref):
    model = ours(ref, (ref.root / "peft", 0.7), (ref.root / "peft" / "second", 1.3))
    assert lora.active_adapters(model) == {"default_0": 0.7, "default_1": 1.3}
    expected = peft_forward(ref, {"default": 0.7, "second": 1.3})
    assert rel_error(run_ours(model, X), expected) <= 1e-5
    lora.set_adapters(model, ["default_1"], [0.4])
    assert rel_error(run_ours(model, X), peft_forward(ref, {"second": 0.4})) <= 1e-5


@pytest.mark.parametrize("source", ["peft", "original-names"])
def test_save_lora_loads_in_peft(ref, formats, tmp_path, source):
    path = ref.root / "peft" if source == "peft" else formats[source]
    model = ours(ref, (path, 1.0))
    save_lora(model, str(tmp_path / "saved"), base_model_name_or_path="tiny-pixart")
    config = json.loads((tmp_path / "saved" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-pixart"
    base = diffusers.PixArtTransformer2DModel.from_pretrained(ref.root / "transformer").eval()
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path / "saved").eval()
    assert rel_error(run_reference(reloaded, X), peft_forward(ref, {"default": 1.0})) <= 1e-5
    if source == "peft":  # the same tensors, bit for bit
        saved = load_safetensors(str(tmp_path / "saved" / "adapter_model.safetensors"))
        assert sorted(saved) == sorted(ref.state)
        assert all(np.array_equal(saved[k], ref.state[k].numpy()) for k in saved)


def test_merged_export_loads_in_diffusers(ref, tmp_path):
    model = ours(ref, (ref.root / "peft", 0.7), (ref.root / "peft" / "second", 1.3))
    save_merged(model, str(tmp_path / "merged"))
    assert lora.adapter_names(model) == ["default_0", "default_1"]  # the model keeps its adapters
    merged = diffusers.PixArtTransformer2DModel.from_pretrained(tmp_path / "merged").eval()
    expected = peft_forward(ref, {"default": 0.7, "second": 1.3})
    assert rel_error(run_reference(merged, X), expected) <= 1e-5
    assert rel_error(run_ours(load_transformer(str(tmp_path / "merged")), X), expected) <= 1e-5
    with pytest.raises(ValueError, match=r"holds LoRA adapters \['default_0', 'default_1'\].*save_merged"):
        save_diffusers(model, str(tmp_path / "plain"))  # would silently write the base weights
    assert not (tmp_path / "plain").exists()


def test_unknown_keys_are_named_with_the_file(ref, tmp_path):
    state = {k: v.numpy() for k, v in ref.state.items()}
    state["base_model.model.transformer_blocks.0.attn1.to_z.lora_A.weight"] = np.zeros((4, 24), np.float32)
    state["base_model.model.proj_out.lora_magnitude_vector"] = np.zeros(32, np.float32)
    save_safetensors(state, str(tmp_path / "bad.safetensors"))
    model = load_transformer(str(ref.root / "transformer"))
    with pytest.raises(WeightsError, match=r"bad\.safetensors: keys that name no LoRA tensor") as error:
        load_lora(model, str(tmp_path / "bad.safetensors"))
    assert "attn1.to_z.lora_A.weight" in str(error.value) and "proj_out.lora_magnitude_vector" in str(error.value)
    assert lora.adapter_names(model) == []


@pytest.mark.filterwarnings("ignore:.*PEFT's default lora_alpha")  # a bare file: no alpha
def test_a_shape_that_does_not_fit_is_an_error(ref, tmp_path):
    state = {k: v.numpy() for k, v in ref.state.items()}
    state["base_model.model.proj_out.lora_B.weight"] = np.zeros((31, 4), np.float32)
    save_safetensors(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match=r"bad\.safetensors: the LoRA of proj_out does not fit"):
        load_lora(load_transformer(str(ref.root / "transformer")), str(tmp_path / "bad.safetensors"))


def test_a_folder_without_an_adapter_is_an_error(tmp_path, ref):
    with pytest.raises(WeightsError, match="holds no LoRA adapter"):
        load_lora(load_transformer(str(ref.root / "transformer")), str(tmp_path))


def test_dora_adapters_are_refused(ref, tmp_path):
    config = json.loads((ref.root / "peft" / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    (tmp_path / "adapter_model.safetensors").write_bytes((ref.root / "peft" / "adapter_model.safetensors").read_bytes())
    with pytest.raises(WeightsError, match="use_dora=true adapters are not supported"):
        load_lora(load_transformer(str(ref.root / "transformer")), str(tmp_path))
