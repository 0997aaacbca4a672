"""An LRU cache of prompt embeddings for the pipelines (JAX and PyTorch): a server sees the same prompts (and the
same empty negative prompt) again and again, and T5 is the costly part of a few-step image. Off (size 0) unless
asked for: `pipe.prompt_cache = PromptCache(256)`."""
import collections
import threading
import weakref
from typing import Any, Callable, Hashable, NamedTuple


class PromptKey(NamedTuple):
    """Everything a call's embeddings depend on besides the encoder: the prompts and negative prompts (as given:
    a string or a tuple of strings), the token count, caption cleaning, the null caption's kind and whether the
    call is guided (unguided calls encode no negative prompt)."""
    prompt: Hashable
    negative_prompt: Hashable
    max_length: int
    clean_caption: bool
    null_caption: str
    guided: bool


def prompt_key(request, max_length: int) -> PromptKey:
    """The PromptKey of a GenerationRequest encoding its prompts into `max_length` tokens."""
    as_key = lambda value: value if isinstance(value, str) else tuple(value)  # noqa: E731
    return PromptKey(as_key(request.prompt), as_key(request.negative_prompt), int(max_length),
                     bool(request.clean_caption), str(request.null_caption), bool(request.guided))


class PromptCache:
    """Up to `size` prompt embeddings, least recently used dropped first (0: nothing is kept). Entries belong to
    one (text encoder, tokenizer) pair: asked with other ones, the cache empties first. Thread-safe; `hits` and
    `misses` count lookups."""

    def __init__(self, size: int = 0):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"prompt cache size must be a non-negative integer, got {size!r}")
        self.size = size
        self.hits = self.misses = 0
        self._entries = collections.OrderedDict()
        self._owners = ()
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._entries)

    def get(self, key: PromptKey, owners: tuple, encode: Callable[[], Any]):
        """The cached value of `key` for the encoder objects `owners`, or encode()'s (then kept)."""
        if self.size == 0:
            return encode()
        with self._lock:
            if len(owners) != len(self._owners) or any(ref() is not o for ref, o in zip(self._owners, owners)):
                self._entries.clear()
                self._owners = tuple(_reference(owner) for owner in owners)
            if key in self._entries:
                self.hits += 1
                self._entries.move_to_end(key)
                return self._entries[key]
            self.misses += 1
        value = encode()  # outside the lock: other threads' hits need not wait for T5
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value


def _reference(owner):
    """A weak reference to `owner` (the cache must not keep a replaced T5 alive), or a strong one for objects
    that take none."""
    try:
        return weakref.ref(owner)
    except TypeError:
        return lambda: owner
