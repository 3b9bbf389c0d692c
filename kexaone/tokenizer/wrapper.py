"""`KExaoneTokenizer`: the tokenizer every other part of kexaone talks to.

It wraps a `tokenizers.Tokenizer` (Rust, fast, parallel batches) built from a standard `tokenizer.json`, so a
kexaone tokenizer directory also loads unchanged in `tokenizers` and `transformers`, and any existing Hugging Face
tokenizer directory (for example a released K-EXAONE one) loads here. It builds the `tokenizer.json` of a freshly
trained SuperBPE vocabulary (`from_merges`) and writes `tokenizer_config.json` with the chat template.

Invalid Unicode rule (applied before encoding, see `pretokenize.fix_surrogates`): surrogate pairs are joined,
lone surrogates become U+FFFD. Then NFC (part of `tokenizer.json`), so `decode(encode(x)) == NFC(fixed(x))`.

It does not train (see `superbpe.py`) and does not render chats (see `chat.py`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from kexaone.tokenizer import pretokenize
from kexaone.tokenizer.specials import ENDOFTEXT, ENDOFTURN, PAD, SPECIAL_TOKENS
from kexaone.utils.io import atomic_write_text

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
DEFAULT_MODEL_MAX_LENGTH = 262_144  # K-EXAONE's 256K context


def _load_chat_template() -> str:
    return (Path(__file__).with_name("template.jinja")).read_text(encoding="utf-8")


class KExaoneTokenizer:
    """Byte-level BPE tokenizer with the K-EXAONE special tokens.

    Construct with `from_dir(path)` or `from_merges(...)`; `tokenizer` is the underlying `tokenizers.Tokenizer` and
    `config` the contents of `tokenizer_config.json` (may be empty for a bare `tokenizer.json`)."""

    def __init__(self, tokenizer, config: dict | None = None):
        self._tok = tokenizer
        self.config: dict = dict(config or {})
        self.train_stats = None  # superbpe.TrainStats when this tokenizer was just trained
        self._special_ids: dict[str, int] = {}
        for added in tokenizer.get_added_tokens_decoder().values():
            if added.special:
                tid = tokenizer.token_to_id(added.content)
                if tid is not None:
                    self._special_ids[added.content] = tid

    # ----------------------------------------------------------------------------------------------------------
    # construction / persistence

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "KExaoneTokenizer":
        """Load a directory holding `tokenizer.json` (and optionally `tokenizer_config.json`), or a `tokenizer.json`
        file itself."""
        from tokenizers import Tokenizer

        path = Path(path)
        file = path if path.is_file() else path / TOKENIZER_FILE
        if not file.is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} at {path} (expected a tokenizer directory or file)")
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
            raise ValueError(f"{file} is not a valid tokenizer.json: {e}") from None
        config: dict = {}
        cfg_file = file.parent / CONFIG_FILE
        if cfg_file.is_file():
            try:
                config = json.loads(cfg_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{cfg_file} is not valid JSON: {e}") from None
        tmpl_file = file.parent / CHAT_TEMPLATE_FILE
        if "chat_template" not in config and tmpl_file.is_file():
            config["chat_template"] = tmpl_file.read_text(encoding="utf-8")
        return cls(tok, config)

    @classmethod
    def from_merges(
        cls,
        token_bytes: Sequence[bytes],
        merges: Sequence[tuple[int, int]],
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
        nfc: bool = True,
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
        pattern: str = pretokenize.STAGE2_PATTERN,
    ) -> "KExaoneTokenizer":
        """Build from a trained vocabulary. `token_bytes[i]` is the byte string of id i for the learned ids (ids of
        special tokens hold b"" and are taken from `special_tokens`, which occupy ids 0..S-1); `merges` are id pairs
        in rank order."""
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

        n_special = len(special_tokens)
        vocab: dict[str, int] = {tok: i for i, tok in enumerate(special_tokens)}
        names: list[str] = list(special_tokens)
        for i in range(n_special, len(token_bytes)):
            name = pretokenize.bytes_to_token(token_bytes[i])
            if name in vocab:
                raise ValueError(f"token {name!r} appears twice in the vocabulary (ids {vocab[name]} and {i})")
            vocab[name] = i
            names.append(name)
        merge_names = [(names[a], names[b]) for a, b in merges]
        model = models.BPE(vocab=vocab, merges=merge_names, fuse_unk=False, byte_fallback=False)
        tok = Tokenizer(model)
        if nfc:
            tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special_tokens])
        config = default_config(list(special_tokens), model_max_length)
        return cls(tok, config)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write `tokenizer.json`, `tokenizer_config.json` (special tokens, chat template, model_max_length) and
        `chat_template.jinja` into `out_dir` (created if needed), each atomically. Returns the directory."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"{out} exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / TOKENIZER_FILE, self._tok.to_str(pretty=False))
        config = dict(self.config)
        atomic_write_text(out / CONFIG_FILE, json.dumps(config, ensure_ascii=False, indent=2) + "\n")
        if config.get("chat_template"):
            atomic_write_text(out / CHAT_TEMPLATE_FILE, config["chat_template"])
        return out

    # ----------------------------------------------------------------------------------------------------------
    # encoding / decoding

    @property
    def tokenizer(self):
        """The underlying `tokenizers.Tokenizer`."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS/EOS added; special-token strings in the text become their ids)."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return self._tok.encode(pretokenize.fix_surrogates(text), add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and, for each, its (start, end) character span in `text` after the surrogate rule (which keeps
        lengths unless it joins a surrogate pair)."""
        enc = self._tok.encode(pretokenize.fix_surrogates(text), add_special_tokens=False)
        return enc.ids, enc.offsets

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """`encode` for many texts at once, in parallel threads (Rust)."""
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise ValueError(f"encode_batch expects strings, got {type(t).__name__}")
        fixed = [pretokenize.fix_surrogates(t) for t in texts]
        return [e.ids for e in self._tok.encode_batch_fast(fixed, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; byte sequences that are not valid UTF-8 (a cut multi-byte character) decode to U+FFFD."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if i < 0 or i >= self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range [0, {self.vocab_size})")
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a learned token stands for (a special token gives its UTF-8 text)."""
        name = self.id_to_token(token_id)
        if name is None:
            raise ValueError(f"token id {token_id} is out of range [0, {self.vocab_size})")
        if name in self._special_ids:
            return name.encode("utf-8")
        try:
            return pretokenize.token_to_bytes(name)
        except ValueError:  # not a byte-level vocabulary (a foreign tokenizer): best effort
            return name.encode("utf-8")

    # ----------------------------------------------------------------------------------------------------------
    # vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    @property
    def special_ids(self) -> dict[str, int]:
        """Special token -> id."""
        return dict(self._special_ids)

    def _config_token_id(self, key: str) -> int | None:
        value = self.config.get(key)
        if isinstance(value, dict):  # serialized AddedToken
            value = value.get("content")
        return self.token_to_id(value) if isinstance(value, str) else None

    @property
    def pad_id(self) -> int | None:
        """Id of `<|pad|>` (0 in kexaone vocabularies); a foreign tokenizer's pad token otherwise."""
        tid = self.token_to_id(PAD)
        return tid if tid is not None else self._config_token_id("pad_token")

    @property
    def eot_id(self) -> int | None:
        """Id of `<|endoftext|>`, the document separator in pre-training."""
        tid = self.token_to_id(ENDOFTEXT)
        return tid if tid is not None else self._config_token_id("eos_token")

    @property
    def eos_id(self) -> int | None:
        """Id of `<|endofturn|>`, which ends a chat turn and generation."""
        tid = self.token_to_id(ENDOFTURN)
        return tid if tid is not None else self._config_token_id("eos_token")

    @property
    def chat_template(self) -> str | None:
        return self.config.get("chat_template")

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"KExaoneTokenizer(vocab_size={self.vocab_size}, specials={len(self._special_ids)})"


def default_config(special_tokens: list[str], model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> dict:
    """`tokenizer_config.json` contents for a kexaone vocabulary (read by `transformers.AutoTokenizer`)."""
    extra = [t for t in special_tokens if t not in (PAD, ENDOFTURN)]
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(model_max_length),
        "pad_token": PAD,
        "eos_token": ENDOFTURN,
        "bos_token": None,
        "unk_token": None,
        "extra_special_tokens": extra,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "padding_side": "left",
        "chat_template": _load_chat_template(),
    }
