"""Prompts -> T5 embeddings as the PixArt pipelines produce them (diffusers
`PixArtAlphaPipeline.encode_prompt` and `_clean_caption`, from DeepFloyd IF).

Caption cleaning (the DeepFloyd-IF / PixArt `clean_caption` procedure, applied twice), T5 tokenisation padded and
truncated to 120 tokens with an attention mask, and the conditional / unconditional embeddings for guidance.
"""
import html
import io
import logging
import os
import re
import urllib.parse as urlparse
from typing import NamedTuple

import ftfy
import jax.numpy as jnp
import numpy as np
from bs4 import BeautifulSoup
from flax import nnx

from pixart_jax.models.inference_jit import inference_jit
from pixart_jax.weights import WeightsError

MAX_LENGTH = 120
SHORTEST_RUN = 16  # trimmed T5 runs: the longest prompt's tokens rounded up to a power of two from this
TOKENIZER_FILES = ("spiece.model", "tokenizer.json")
logger = logging.getLogger(__name__)

_URL = r"\b(?:{scheme}:(?:/{{1,3}}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+\.(?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@))"
_DASHES = ("\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40\u301c\u3030\u30a0\ufe31"
           "\ufe32\ufe58\ufe63\uff0d")
_EXTENSIONS = "png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4"

# (pattern, replacement) applied in order before the HTML parse ...
_BEFORE_HTML = [
    ("<person>", "person"),
    (_URL.format(scheme="https?"), ""),
    (_URL.format(scheme="www"), ""),
]
# ... between the HTML parse and ftfy ...
_BEFORE_FTFY = [
    (r"@[\w\d]+\b", ""),  # @handles
    (r"[\u31c0-\u9fff]+", ""),  # CJK strokes, katakana ext., enclosed CJK, compatibility, ideographs (+ ext. A)
    (f"[{_DASHES}]+", "-"),  # every dash-like character
    ("[`´«»“”¨]", '"'),
    ("[‘’]", "'"),
    ("&quot;?", ""),
    ("&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),  # IP addresses
    (r"\d:\d\d\s+$", ""),  # trailing article ids
    (r"\\n", " "),  # a literal backslash-n
    (r"#\d{1,3}\b", ""),
    (r"#\d{5,}\b", ""),
    (r"\b\d{6,}\b", ""),
    (rf"\S+\.(?:{_EXTENSIONS})", ""),  # file names
    ("[\"']{2,}", '"'),
    (r"\.{2,}", " "),
    (r"[#®•©™&@·º½¾¿¡§~)(\]\[}{|\\/*]+", " "),  # runs of decorative punctuation
    (r"\s+\.\s+", " "),
]
# ... and after ftfy and HTML unescaping.
_AFTER_FTFY = [
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),  # product codes: jc6640
    (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),  # jc6640vc
    (r"\b\d+[a-zA-Z]+\d+\b", ""),  # 6640vc231
    (r"(worldwide\s+)?(free\s+)?shipping", ""),
    (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""),
    (rf"\b(?:{_EXTENSIONS})(\simage[s]?)?", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),  # j2d1a2a...
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),  # dimensions 1920x1080 (latin x, cyrillic х, ×)
    (r"\b\s+:\s+", ": "),
    (r"(\D[,./])\b", r"\1 "),
    (r"\s+", " "),
    # The whitespace is collapsed but not stripped here, so a leading/trailing space blocks the next rules.
    (r"^[\"']([\w\W]+)[\"']$", r"\1"),
    (r"^['_,\-:;]", ""),
    (r"['_,\-:+]$", ""),
    (r"^\.\S+$", ""),
]


def _apply(rules, text):
    for pattern, replacement in rules:
        text = re.sub(pattern, replacement, text)
    return text


def clean_caption_once(caption):
    """One pass of the caption cleaning of spec §3.7 (web-scraped caption noise removed, lower-cased)."""
    text = urlparse.unquote_plus(str(caption)).strip().lower()
    text = _apply(_BEFORE_HTML, text)
    text = BeautifulSoup(text, features="html.parser").text
    text = _apply(_BEFORE_FTFY, text)
    if len(re.findall(r"[-_]", text)) > 3:  # this-is-a-slug / this_is_a_slug
        text = re.sub(r"[-_]", " ", text)
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _apply(_AFTER_FTFY, text).strip()


def preprocess(prompts, clean_caption=True):
    """The text the tokenizer sees: cleaned twice when `clean_caption`, else only lower-cased and stripped."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if clean_caption:
        return [clean_caption_once(clean_caption_once(p)) for p in prompts]
    return [p.lower().strip() for p in prompts]


def load_tokenizer(directory: str):
    """The T5 SentencePiece tokenizer of a local `tokenizer/` folder (`spiece.model` and/or `tokenizer.json`).

    Only local files are read, never the network: a folder without either file is a WeightsError naming it
    (transformers would otherwise take the path for a hub model id, or build a tokenizer with no vocabulary), and
    so is a file transformers cannot read."""
    present = [os.path.join(directory, name) for name in TOKENIZER_FILES
               if os.path.isfile(os.path.join(directory, name))]
    if not present:
        if not os.path.isdir(directory):
            raise WeightsError(f"tokenizer folder {directory} does not exist (tokenizers are read from local "
                                  "files only)")
        empty = " (it is empty)" if not os.listdir(directory) else ""
        raise WeightsError(f"tokenizer folder {directory} has no {' or '.join(TOKENIZER_FILES)}{empty}")
    # read when transformers is first imported: never the network, and no "PyTorch was not found" advice (only the
    # tokenizer is used)
    for switch in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        os.environ.setdefault(switch, "1")
    from transformers import T5Tokenizer  # imported on use: transformers takes seconds to import

    try:
        return T5Tokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:  # not JSON, not SentencePiece, ...
        raise WeightsError(f"{' and '.join(present)} cannot be read as a T5 tokenizer (damaged, or of another "
                           f"kind): {type(e).__name__}: {e}") from None


def train_tokenizer(texts, directory, vocab_size=90, model_type="unigram"):
    """Trains a SentencePiece model (`model_type` "unigram", or "word" for one piece per word of a small closed
    vocabulary) on `texts` and writes it as a T5 tokenizer folder (`spiece.model`; pad 0, eos 1, unk 2, no bos —
    T5's ids). For small models built offline; returns the folder's path."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
                                   model_type=model_type, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "spiece.model"), "wb") as f:
        f.write(model.getvalue())
    return str(directory)


def tokenize(tokenizer, texts, max_length=MAX_LENGTH):
    """(input_ids, attention_mask), both int32 (B, max_length): EOS appended, padded with 0, truncated to fit.

    A text longer than `max_length` tokens (EOS included) loses its tail; that is logged as a warning with the
    removed text, as the diffusers pipeline does.
    """
    batch = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
                      return_attention_mask=True, return_tensors="np")
    for ids in tokenizer(texts, add_special_tokens=True).input_ids:
        if len(ids) > max_length:
            removed = tokenizer.decode(ids[max_length - 1:-1])
            logger.warning("The following part of your input was truncated because T5 can only handle sequences up "
                           "to %d tokens: %s", max_length, removed)
    return batch.input_ids.astype(np.int32), batch.attention_mask.astype(np.int32)


class PromptEmbeddings(NamedTuple):
    """Conditional and unconditional T5 embeddings (B, L, D) with their masks (B, L)."""

    embeds: jnp.ndarray
    mask: jnp.ndarray
    negative_embeds: jnp.ndarray
    negative_mask: jnp.ndarray


@inference_jit
def _run_module(text_encoder, input_ids, attention_mask):
    return text_encoder(input_ids, attention_mask)


def trimmed_length(attention_mask, max_length):
    """The tokens a trimmed T5 run covers: the longest row's (the mask's last 1) rounded up to a power of two, at
    least SHORTEST_RUN, at most max_length (few lengths: few compilations)."""
    used = np.asarray(attention_mask).any(axis=0).nonzero()[0]
    longest = int(used[-1]) + 1 if used.size else 1
    return min(max_length, max(SHORTEST_RUN, 1 << (longest - 1).bit_length()))


def _encode(text_encoder, input_ids, attention_mask, trim=False):
    """(B, L, D) embeddings of (B, L) tokens. With `trim`, T5 runs on the first trimmed_length(mask, L) tokens
    only and the positions past them are zero: a T5 encoder's output at a position depends on that position's
    token and the unmasked keys alone, so every position it runs on is as in the full run, and the models mask
    the positions past the prompt out of their cross-attention (the same images for a fraction of the T5 work:
    PixArt pads every prompt to 120 or 300 tokens)."""
    length = input_ids.shape[1]
    run = trimmed_length(attention_mask, length) if trim else length
    ids, mask = input_ids[:, :run], attention_mask[:, :run]
    if isinstance(text_encoder, nnx.Module):
        out = _run_module(text_encoder, ids, mask)
    else:
        out = jnp.asarray(text_encoder(ids, mask))
    return out if run == length else jnp.pad(out, ((0, 0), (0, length - run), (0, 0)))


class PromptTokens(NamedTuple):
    """Token ids and masks (B, L) int32 of the prompts and, unless the null caption replaces them, of the negative
    prompts (None then)."""

    ids: np.ndarray
    mask: np.ndarray
    negative_ids: np.ndarray | None
    negative_mask: np.ndarray | None


def prompt_tokens(prompts, negative_prompt="", *, tokenizer, max_length=MAX_LENGTH, clean_caption=True,
                  negatives=True):
    """The tokens `encode_prompt` encodes (any runtime's encoder): prompts (a string or B strings) and, when
    `negatives`, negative_prompt (a string used for every prompt, or B strings)."""
    texts = preprocess(prompts, clean_caption)
    ids, mask = tokenize(tokenizer, texts, max_length)
    if not negatives:
        return PromptTokens(ids, mask, None, None)
    batch = len(texts)
    negative_texts = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negative_texts) != batch:
        raise ValueError(f"{len(negative_texts)} negative prompts for {batch} prompts")
    return PromptTokens(ids, mask, *tokenize(tokenizer, preprocess(negative_texts, clean_caption), max_length))


def encode_prompt(prompts, negative_prompt="", *, tokenizer, text_encoder, max_length=MAX_LENGTH,
                  clean_caption=True, null_embedding=None, do_classifier_free_guidance=True, trim=False):
    """T5 embeddings and masks of `prompts` and of the unconditional branch of classifier-free guidance.

    prompts: a string or a list of B strings; negative_prompt: a string (used for every prompt) or B strings.
    Unconditional branch (spec §2.8): with `null_embedding` (the checkpoint's `y_embedding`, (max_length, D)),
    that embedding for every prompt with the prompt's own mask, as the original repo does; otherwise the T5
    encoding of `negative_prompt` with its own mask, as the diffusers pipeline does. Without guidance only the
    prompts are encoded (half the T5 work) and the unconditional fields are None. `trim`: T5 runs only as far as
    the longest prompt needs and the embeddings past that are zero (see `_encode`; the pipelines' default: the
    same images, a fraction of the T5 work); off, every position is diffusers' `encode_prompt`'s.
    """
    if null_embedding is not None and null_embedding.shape[0] != max_length:
        raise ValueError(f"null_embedding has {null_embedding.shape[0]} tokens, prompts have {max_length}")
    tokens = prompt_tokens(prompts, negative_prompt, tokenizer=tokenizer, max_length=max_length,
                           clean_caption=clean_caption,
                           negatives=null_embedding is None and do_classifier_free_guidance)
    batch = tokens.ids.shape[0]
    if null_embedding is not None:
        null_embedding = jnp.asarray(null_embedding)
        embeds = _encode(text_encoder, tokens.ids, tokens.mask, trim)
        negative = jnp.broadcast_to(null_embedding.astype(embeds.dtype), (batch, *null_embedding.shape))
        return PromptEmbeddings(embeds, jnp.asarray(tokens.mask), negative, jnp.asarray(tokens.mask))
    if not do_classifier_free_guidance:
        return PromptEmbeddings(_encode(text_encoder, tokens.ids, tokens.mask, trim), jnp.asarray(tokens.mask), None,
                                None)
    # One encoder call for both branches: rows do not interact, and it is one compilation per batch size.
    both = _encode(text_encoder, np.concatenate([tokens.ids, tokens.negative_ids]),
                   np.concatenate([tokens.mask, tokens.negative_mask]), trim)
    return PromptEmbeddings(both[:batch], jnp.asarray(tokens.mask), both[batch:], jnp.asarray(tokens.negative_mask))
