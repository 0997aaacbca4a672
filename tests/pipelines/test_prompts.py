"""Prompt encoding: caption cleaning, 120-token tokenisation and both null-caption modes, against the diffusers
PixArtAlphaPipeline (`_text_preprocessing`, `encode_prompt`) with a SentencePiece tokenizer built locally."""
import logging
import os
import re
import socket

import numpy as np
import pytest

from pixart_jax.pipelines.prompts import (
    MAX_LENGTH,
    encode_prompt,
    load_tokenizer,
    preprocess,
    tokenize,
    train_tokenizer,
    trimmed_length,
)
from pixart_jax.testing.random_weights import redraw
from pixart_jax.weights import WeightsError
from tests.helpers.parity import rel_error

pytest.importorskip("sentencepiece")

# (caption, what two cleaning passes make of it), recorded from diffusers' PixArtAlphaPipeline._text_preprocessing.
CLEANED = [
    ('', ''),
    ('   A Photo of a CAT   ', 'a photo of a cat'),
    ('An astronaut riding a horse on the moon, 4k, highly detailed',
     'an astronaut riding a horse on the moon, 4k, highly detailed'),
    ('Check https://www.example.com/path?q=1 and http://foo.org/bar for more', 'check ?q=1 and for more'),
    ('visit www:shop.example.ru now or mail me@site.com', 'visit www: now or mail me'),
    ('<p>A <b>bold</b> move &amp; a &quot;quoted&quot; word</p>', 'a bold move a "quoted" word'),
    ('Follow @artist_name for more #art #12 #123456 #1234', 'follow for more art 1234'),
    ('猫の写真 a cat photo 可爱的猫 ㈱ ㍿', 'の a cat photo'),
    ('Ein Hund läuft über die Straße — très beau – naïve café',
     'ein hund läuft über die straße - très beau - naïve café'),
    ('“Smart” quotes ‘single’ «guillemets» `back` ´acute¨', 'smart" quotes \'single\' "guillemets" "back" "acute'),
    ('server at 192.168.0.1 is down 3:45 ', 'server at is down 3:45'),
    ('line one\\nline two', 'line one line two'),
    ('order 1234567 shipped, see IMG_2043.jpg and photo.png image', 'order shipped, see and image'),
    ('free shipping worldwide free shipping click here! click for details download free', 'click here!'),
    ('this-is-my-cute-cat_with_many_parts', 'this is my cute cat with many parts'),
    ('***AUSVERKAUFT*** ~~~ ((wow)) [[tag]] {x} | a/b \\ c', 'ausverkauft wow tag x a b c'),
    ('a  .  b ... c.. d', 'a b c d'),
    ('jc6640 jc6640vc 6640vc231 j2d1a2a3 page 12', ''),
    ('size 1920x1080 and 2.5×3.5 and 10х20', 'size and and'),
    ('key : value ,and,so.on/there', 'key: value , and, so. on there'),
    ("'quoted whole caption'", 'quoted whole caption'),
    ('-leading dash and trailing plus+', 'leading dash and trailing plus'),
    ('.hidden', ''),
    ('A%20url%2Dencoded+caption%21', 'a url-encoded caption!'),
    ('&lt;b&gt;double &amp;amp; escaped&lt;/b&gt;', 'double ; escaped< b>'),
    ('caption with <person> tag and <unknown> tag', 'caption with person tag and tag'),
    ('Ã©tÃ© mojibake from ftfy', 'ã tã mojibake from ftfy'),
    ('pdf apk mp4 images of jpg', 'of'),
    ('    multiple     spaces\t\ttabs\n\nnewlines   ', 'multiple spaces tabs newlines'),
    ('He said \'\'hello\'\' and """bye"""', 'he said "hello" and "bye"'),
]
CAPTIONS = [caption for caption, _ in CLEANED]
LONG = " ".join(["an astronaut riding a horse on the moon, très beau, photo de chats"] * 4)
PROMPTS = ["A photo of a CAT sitting on a red sofa", "", LONG, "Ein Hund läuft über die Straße, naïve café 猫",
           "<b>An astronaut</b> riding a horse https://example.com/x.png @user #12 1920x1080"]
TRAINING_TEXT = ["a photo of a cat sitting on a red sofa", "an astronaut riding a horse on the moon, high quality",
                 "un chat noir dans la neige, très beau, photo de chats", "ein hund läuft über die straße, naïve café",
                 "bold move, quoted word, many parts, key value", "猫の写真 可爱的猫"] * 20


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A T5 tokenizer in the real on-disk format: a SentencePiece unigram `spiece.model` (pad 0, eos 1, unk 2)."""
    return load_tokenizer(train_tokenizer(TRAINING_TEXT, tmp_path_factory.mktemp("tokenizer")))


def test_cleaning_matches_recorded_reference():
    assert preprocess(CAPTIONS) == [cleaned for _, cleaned in CLEANED]
    assert preprocess("  Hello <b>World</b>  ", clean_caption=False) == ["hello <b>world</b>"]


def test_cleaning_matches_diffusers():
    pytest.importorskip("torch")
    from diffusers import PixArtAlphaPipeline

    pipeline = object.__new__(PixArtAlphaPipeline)  # _text_preprocessing uses no component
    texts = CAPTIONS + PROMPTS
    for clean in (True, False):
        assert preprocess(texts, clean) == PixArtAlphaPipeline._text_preprocessing(pipeline, texts, clean)


def test_tokenize_pads_truncates_and_warns(tokenizer, caplog):
    texts = preprocess(PROMPTS)
    with caplog.at_level(logging.WARNING, logger="pixart_jax.pipelines.prompts"):
        ids, mask = tokenize(tokenizer, texts)
    assert ids.shape == mask.shape == (len(PROMPTS), MAX_LENGTH) and ids.dtype == mask.dtype == np.int32
    assert [r.getMessage().startswith("The following part of your input was truncated") for r in caplog.records] \
        == [True]
    assert ids[1, 0] == 1 and mask[1].sum() == 1  # "" is EOS alone
    assert len(tokenizer(texts[2]).input_ids) > MAX_LENGTH
    assert ids[2, -1] == 1 and mask[2].all()  # truncated: 119 tokens and EOS
    for row_ids, row_mask in zip(ids, mask, strict=True):
        n = row_mask.sum()
        assert row_ids[n - 1] == 1 and not row_ids[n:].any() and not row_mask[n:].any()


class FakeEncoder:
    """A text encoder whose output reveals its input: embedding = (token id, mask, position)."""

    def __call__(self, input_ids, attention_mask):
        position = np.broadcast_to(np.arange(input_ids.shape[1]), input_ids.shape)
        return np.stack([input_ids, attention_mask, position], -1).astype(np.float32)


def test_null_embedding_mode(tokenizer):
    null = np.random.default_rng(0).standard_normal((MAX_LENGTH, 3)).astype(np.float32)
    out = encode_prompt(PROMPTS[:2], "ignored", tokenizer=tokenizer, text_encoder=FakeEncoder(), null_embedding=null)
    ids, mask = tokenize(tokenizer, preprocess(PROMPTS[:2]))
    np.testing.assert_array_equal(out.embeds[..., 0], ids)
    np.testing.assert_array_equal(out.mask, mask)
    np.testing.assert_array_equal(out.negative_mask, mask)  # the prompt's mask, as the original repo does
    np.testing.assert_array_equal(out.negative_embeds, np.broadcast_to(null, (2, MAX_LENGTH, 3)))


def test_negative_prompt_mode(tokenizer):
    out = encode_prompt("a cat", ["A <b>Dog</b>"], tokenizer=tokenizer, text_encoder=FakeEncoder())
    ids, mask = tokenize(tokenizer, ["a dog"])
    np.testing.assert_array_equal(out.negative_embeds[..., 0], ids)
    np.testing.assert_array_equal(out.negative_mask, mask)
    with pytest.raises(ValueError, match="2 negative prompts for 1 prompts"):
        encode_prompt("a cat", ["a", "b"], tokenizer=tokenizer, text_encoder=FakeEncoder())


def test_encode_prompt_matches_diffusers_pipeline(tokenizer, tmp_path):
    """Token ids, masks and embeddings of both branches equal PixArtAlphaPipeline.encode_prompt's (clean_caption
    on and off), with a tiny random T5 loaded through our loader from the same saved checkpoint."""
    torch = pytest.importorskip("torch")
    import diffusers
    import transformers

    from pixart_jax.weights.t5 import load_text_encoder

    config = transformers.T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, num_heads=4, d_ff=48,
                                   num_layers=2, feed_forward_proj="gated-gelu")
    reference = redraw(transformers.T5EncoderModel(config), 5).eval()
    reference.save_pretrained(tmp_path)
    seen = []
    reference.register_forward_pre_hook(lambda module, args: seen.append(args[0].numpy()))
    pipeline = diffusers.PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=reference, vae=None, transformer=None,
                                             scheduler=None)
    ours = load_text_encoder(str(tmp_path))
    for clean in (True, False):
        seen.clear()
        with torch.no_grad():
            expected = [t.numpy() for t in pipeline.encode_prompt(PROMPTS, negative_prompt="", device="cpu",
                                                                  clean_caption=clean)]
        got = encode_prompt(PROMPTS, "", tokenizer=tokenizer, text_encoder=ours, clean_caption=clean)
        np.testing.assert_array_equal(tokenize(tokenizer, preprocess(PROMPTS, clean))[0], seen[0])
        np.testing.assert_array_equal(tokenize(tokenizer, preprocess([""] * len(PROMPTS), clean))[0], seen[1])
        np.testing.assert_array_equal(got.mask, expected[1])
        np.testing.assert_array_equal(got.negative_mask, expected[3])
        errors = rel_error(got.embeds, expected[0]), rel_error(got.negative_embeds, expected[2])
        print(f"encode_prompt (clean_caption={clean}) rel_error cond {errors[0]:.2e} uncond {errors[1]:.2e}")
        assert max(errors) <= 1e-5


def test_trimmed_t5_runs_on_the_prompts_tokens_and_equals_the_full_run_there(tokenizer, tmp_path):
    """trim=True: T5 runs on the longest prompt's tokens rounded up to a power of two (16 at least); every position
    it ran on equals the full 120-token run (T5's output at a position sees only its token and the unmasked keys),
    the rest is zero. A prompt that fills the 120 tokens runs them all."""
    transformers = pytest.importorskip("transformers")
    from pixart_jax.weights.t5 import load_text_encoder

    config = transformers.T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, num_heads=4, d_ff=48,
                                   num_layers=2, feed_forward_proj="gated-gelu")
    redraw(transformers.T5EncoderModel(config), 5).save_pretrained(tmp_path)
    t5 = load_text_encoder(str(tmp_path))
    short = [PROMPTS[0], PROMPTS[3]]
    full = encode_prompt(short, "a dog", tokenizer=tokenizer, text_encoder=t5)
    trimmed = encode_prompt(short, "a dog", tokenizer=tokenizer, text_encoder=t5, trim=True)
    longest = int(np.asarray(full.mask).sum(axis=1).max())
    run = trimmed_length(full.mask, MAX_LENGTH)
    assert 16 <= longest <= run < MAX_LENGTH and run & (run - 1) == 0
    for got, expected in ((trimmed.embeds, full.embeds), (trimmed.negative_embeds, full.negative_embeds)):
        assert rel_error(got[:, :run], expected[:, :run]) <= 1e-6
        assert not np.asarray(got[:, run:]).any()
    np.testing.assert_array_equal(trimmed.mask, full.mask)
    assert trimmed_length(tokenize(tokenizer, ["a"])[1], MAX_LENGTH) == 16
    assert trimmed_length(tokenize(tokenizer, preprocess([LONG]))[1], MAX_LENGTH) == MAX_LENGTH
    assert trimmed_length(tokenize(tokenizer, preprocess([LONG]), 300)[1], 300) == 256


def test_tokenizers_load_from_local_files_only(tmp_path, monkeypatch):
    """A missing or empty tokenizer folder is an error naming it, never a hub download or an empty vocabulary."""
    def no_network(*_):
        raise AssertionError("reached for the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.chdir(tmp_path)
    for switch in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(switch, raising=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    for folder, message in (("empty", "tokenizer folder empty has no spiece.model or tokenizer.json (it is empty)"),
                            ("tokenizer", "tokenizer folder tokenizer does not exist (tokenizers are read from local "
                                          "files only)"),
                            ("other", "tokenizer folder other has no spiece.model or tokenizer.json")):
        with pytest.raises(WeightsError, match=rf"^{re.escape(message)}$"):
            load_tokenizer(folder)
    tokenizer = load_tokenizer(train_tokenizer(TRAINING_TEXT, tmp_path / "local"))
    assert tokenizer("a photo of a cat").input_ids[:-1] != [tokenizer.unk_token_id] * 4
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"


@pytest.mark.parametrize("name,content", [("tokenizer.json", "garbage"), ("tokenizer.json", '{"x": 1}'),
                                          ("spiece.model", "garbage")])
def test_a_damaged_tokenizer_file_is_named(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(WeightsError, match=rf"^{re.escape(str(tmp_path / name))} cannot be read as a T5 "
                                           r"tokenizer \(damaged, or of another kind\): ") as error:
        load_tokenizer(str(tmp_path))
    assert "\n" not in str(error.value)
