"""Text preparation shared by the trainer, the encoder and the evaluator: the two pre-tokenizer regexes of SuperBPE,
the byte-level alphabet, the rule for invalid surrogates, NFC, and a light script-based language detector.

It does not train or encode anything; `superbpe.py` and `wrapper.py` do.
"""

from __future__ import annotations

import functools
import itertools
import unicodedata

import regex

# Stage 2 (and the released K-EXAONE tokenizer): runs of letters joined by *single* spaces form one pre-token, so
# merges may cross single spaces; each digit is its own pre-token; punctuation runs split off. (SPEC section 2.)
STAGE2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+"
)
# Stage 1: the same pattern without the single-space continuation, i.e. ordinary whitespace-bounded words (each
# word may carry one leading space or symbol), so stage-1 tokens never contain a letter followed by a space.
STAGE1_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*)+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+"
)

STAGE1_RE = regex.compile(STAGE1_PATTERN)
STAGE2_RE = regex.compile(STAGE2_PATTERN)

_SURROGATE_RE = regex.compile(r"[\ud800-\udfff]")


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """The byte-level alphabet used by GPT-2-style tokenizers (and by `tokenizers.pre_tokenizers.ByteLevel`):
    printable Latin-1 bytes map to themselves, the other 68 bytes to code points from U+0100 on, so every byte is a
    visible character and a token is a plain string."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


@functools.lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def bytes_to_token(data: bytes) -> str:
    """Raw bytes -> the byte-level string that names them in `tokenizer.json`."""
    table = byte_to_unicode()
    return "".join(table[b] for b in data)


def token_to_bytes(token: str) -> bytes:
    """Inverse of `bytes_to_token`; raises ValueError for a string outside the byte-level alphabet."""
    table = unicode_to_byte()
    try:
        return bytes(table[c] for c in token)
    except KeyError as e:
        raise ValueError(f"token {token!r} contains {e.args[0]!r}, which is not a byte-level character") from None


def fix_surrogates(text: str) -> str:
    """The rule for text that is not valid Unicode: a high+low surrogate pair (as left by UTF-16 data decoded code
    unit by code unit) becomes the character it encodes, and every lone surrogate becomes U+FFFD. Valid text is
    returned unchanged (and cheaply)."""
    if _SURROGATE_RE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def normalize(text: str, nfc: bool = True) -> str:
    """What the encoder does to text before pre-tokenizing it: `fix_surrogates`, then NFC (unless disabled)."""
    text = fix_surrogates(text)
    return unicodedata.normalize("NFC", text) if nfc else text


# ---------------------------------------------------------------------------------------------------------------
# Language detection: only as fine as the per-language superword budget needs (en / ko / the rest), plus the
# languages the benchmark reports. Scripts decide first; Latin text is told apart by letters and stopwords.

LANGUAGES = ("en", "ko", "ja", "zh", "de", "es", "vi", "code", "stem", "other")

_HANGUL_RE = regex.compile(r"[\p{Hangul}]")
_KANA_RE = regex.compile(r"[\p{Hiragana}\p{Katakana}]")
_HAN_RE = regex.compile(r"[\p{Han}]")
_LATIN_RE = regex.compile(r"[\p{Latin}]")
_WORD_RE = regex.compile(r"\p{L}+")
_ASCII_LETTER_RE = regex.compile(r"[A-Za-z]")
# Letters that (among en/de/es/vi) only Vietnamese uses: horned/breve vowels, d-stroke, dot-below/hook-above tones.
_VI_RE = regex.compile(r"[ăâđêôơưĂÂĐÊÔƠƯạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ]")
_DE_RE = regex.compile(r"[äöüßÄÖÜ]")
_ES_RE = regex.compile(r"[ñÑ¿¡]")
_STOPWORDS = {
    "en": frozenset("the and of to is in that it was with for as on are be this by not he she they his her at from "
                    "has have had were which who works born".split()),
    "de": frozenset("der die das und nicht ist ein eine einen zu den mit sich auf dem des von ich sie er es im wurde "
                    "hat als war sind wird nach bei aus auch seinen seine ihre geboren arbeitet".split()),
    "es": frozenset("el la los las que y de en un una por con para se del no es su al lo fue como trabaja nació "
                    "está son tiene".split()),
}


def _latin_language(text: str, latin: int) -> str:
    """en / de / es / vi for text that is mostly Latin letters (`latin` of them)."""
    if latin and len(_VI_RE.findall(text)) >= max(1, 0.02 * latin):
        return "vi"
    words = [m.group().lower() for m in itertools.islice(_WORD_RE.finditer(text), 200)]
    scores = {lang: sum(w in stop for w in words) for lang, stop in _STOPWORDS.items()}
    if latin:  # not pure ASCII: German and Spanish letters count too
        scores["de"] += 2 * len(_DE_RE.findall(text))
        scores["es"] += 2 * len(_ES_RE.findall(text))
    best = max(scores, key=lambda k: (scores[k], k == "en"))
    return best if scores[best] > 0 else "en"


def detect_language(text: str) -> str:
    """Best guess among LANGUAGES from the scripts and words of `text` ("other" when it has no letters)."""
    if text.isascii():  # fast path (most lines of English, code and maths): no script or diacritic to look at
        return _latin_language(text, 0) if _ASCII_LETTER_RE.search(text) else "other"
    hangul = len(_HANGUL_RE.findall(text))
    kana = len(_KANA_RE.findall(text))
    han = len(_HAN_RE.findall(text))
    latin = len(_LATIN_RE.findall(text))
    letters = hangul + kana + han + latin
    if letters == 0:
        return "other"
    if hangul >= 0.2 * letters:
        return "ko"
    if kana > 0 and kana + han >= 0.2 * letters:
        return "ja"
    if han >= 0.2 * letters:
        return "zh"
    if latin < 0.5 * letters:
        return "other"
    return _latin_language(text, latin)


def language_group(lang: str, groups: tuple[str, ...]) -> str:
    """Map a language to its superword-budget group: itself when it has its own share, else "other"."""
    return lang if lang in groups else "other"
