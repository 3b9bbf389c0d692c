"""IFEval instruction checkers (Zhou et al., 2023): does a reply follow verifiable formatting instructions?

Written here from the published instruction definitions, for all 25 instruction ids of IFEval with IFEval's kwargs
names, so the RL instruction-following reward and the evaluation harness score the same way as lm-eval's `ifeval`.
Unlike the reference code this needs no nltk data download: sentences are split by a regular expression (which
knows common abbreviations and decimals) and words are `\\w+` runs. Keywords are matched literally (IFEval's
own code reads them as regular expressions; its keywords are plain words, so the verdicts agree). Language checks
use langdetect (seeded, so repeatable); like IFEval, a text langdetect cannot classify counts as passing.

`check_instructions` returns IFEval's strict and loose verdicts per instruction. Strict: the reply as given (an
empty reply fails). Loose: any of 8 variants passes: the reply, without its first line, without its last line,
without both, and each of these four with every `*` removed.

What this module does not do: generate instruction prompts, or check IFBench's extended constraints.
"""

from __future__ import annotations

import collections
import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "IFResult", "check_instructions", "INSTRUCTION_IDS", "split_sentences", "count_words", "detect_language",
]

_RELATIONS = ("less than", "at least")

# ----------------------------------------------------------------------------------------------------------------
# Text helpers (replacing nltk's punkt and word tokenizers)

_ABBREVIATIONS = (
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "cf", "al", "fig", "no", "inc",
    "ltd", "co", "corp", "approx", "dept", "est", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec", "u.s", "u.k", "a.m", "p.m",
)
# A sentence ends at . ! ? (or their CJK forms), optionally followed by closing quotes/brackets, then whitespace.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?。！？])|(?<=[.!?。！？][\"'”’)\]]))\s+|(?<=[。！？])(?=\S)")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`. A period after a known abbreviation or a single initial ("J. Smith") ends no sentence;
    a decimal point never does (it is not followed by whitespace)."""
    pieces = [p for p in _SENTENCE_END.split(text.strip()) if p and p.strip()]
    sentences: list[str] = []
    for piece in pieces:
        if sentences:
            last_word = sentences[-1].rstrip().rsplit(None, 1)[-1].lower().rstrip(".")
            if sentences[-1].rstrip().endswith(".") and (
                last_word.lstrip("(\"'") in _ABBREVIATIONS or re.fullmatch(r"[a-z]", last_word)
            ):
                sentences[-1] = sentences[-1].rstrip() + " " + piece.strip()
                continue
        sentences.append(piece.strip())
    return sentences


def count_words(text: str) -> int:
    """Number of `\\w+` runs (IFEval counts words with nltk's RegexpTokenizer(r"\\w+"))."""
    return len(re.findall(r"\w+", text))


def _compare(count: int, relation: str, target: int) -> bool:
    if relation == "less than":
        return count < target
    if relation == "at least":
        return count >= target
    raise ValueError(f"relation must be one of {_RELATIONS}, got {relation!r}")


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code langdetect finds for `text` ("zh-cn"/"zh-tw" for Chinese), or None when it finds none."""
    import langdetect

    langdetect.DetectorFactory.seed = 0  # langdetect samples; a fixed seed makes a verdict repeatable
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None


# ----------------------------------------------------------------------------------------------------------------
# The checkers: one function per instruction id; keyword-only parameters are that instruction's IFEval kwargs.


def _keywords_existence(r: str, *, keywords: Sequence[str]) -> bool:
    return all(re.search(re.escape(k), r, flags=re.IGNORECASE) for k in keywords)


def _keywords_frequency(r: str, *, keyword: str, frequency: int, relation: str) -> bool:
    return _compare(len(re.findall(re.escape(keyword.strip()), r, flags=re.IGNORECASE)), relation, frequency)


def _keywords_forbidden(r: str, *, forbidden_words: Sequence[str]) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", r, flags=re.IGNORECASE) for w in forbidden_words)


def _keywords_letter_frequency(r: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    if len(letter) != 1:
        raise ValueError(f"letter must be a single character, got {letter!r}")
    return _compare(collections.Counter(r.lower())[letter.lower()], let_relation, let_frequency)


def _response_language(r: str, *, language: str) -> bool:
    detected = detect_language(r)
    return detected is None or detected == language


def _number_sentences(r: str, *, num_sentences: int, relation: str) -> bool:
    return _compare(len(split_sentences(r)), relation, num_sentences)


def _number_paragraphs(r: str, *, num_paragraphs: int) -> bool:
    paragraphs = re.split(r"\s?\*\*\*\s?", r)
    count = len(paragraphs)
    for i, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if i in (0, len(paragraphs) - 1):
                count -= 1  # a divider at the very start or end separates nothing
            else:
                return False  # two dividers in a row: an empty paragraph
    return count == num_paragraphs


def _number_words(r: str, *, num_words: int, relation: str) -> bool:
    return _compare(count_words(r), relation, num_words)


def _nth_paragraph_first_word(r: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    paragraphs = re.split(r"\n\n", r)
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count or nth_paragraph < 1:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'\"")
    found = ""
    for ch in word:
        if ch in ".,?!'\"":
            break
        found += ch.lower()
    return count == num_paragraphs and found == first_word.lower()


def _number_placeholders(r: str, *, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", r)) >= num_placeholders


def _postscript(r: str, *, postscript_marker: str) -> bool:
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, r.lower(), flags=re.MULTILINE))


def _number_bullet_lists(r: str, *, num_bullets: int) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def _constrained_response(r: str) -> bool:
    r = r.strip()
    return any(option in r for option in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


def _number_highlighted_sections(r: str, *, num_highlights: int) -> bool:
    single = [h for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h.removeprefix("**").removesuffix("**").strip()]
    return len(single) + len(double) >= num_highlights


def _multiple_sections(r: str, *, section_spliter: str, num_sections: int) -> bool:
    # IFEval's kwarg is spelled "section_spliter"; kept for compatibility with its data.
    sections = re.split(r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?", r)
    return len(sections) - 1 >= num_sections


def _json_format(r: str) -> bool:
    text = r.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        text = text.removeprefix(fence)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _title(r: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


def _two_responses(r: str) -> bool:
    parts = r.split("******")
    valid = []
    for i, part in enumerate(parts):
        if not part.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def _repeat_prompt(r: str, *, prompt_to_repeat: str) -> bool:
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


def _end_checker(r: str, *, end_phrase: str) -> bool:
    return r.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def _quotation(r: str) -> bool:
    r = r.strip()
    return len(r) > 1 and r[0] == '"' and r[-1] == '"'


def _capital_word_frequency(r: str, *, capital_frequency: int, capital_relation: str) -> bool:
    # Hyphenated words count once and contractions split ("DON'T" -> DON, T), as nltk's word_tokenize does.
    capitals = [w for w in re.findall(r"\w+(?:-\w+)*", r) if w.isupper()]
    return _compare(len(capitals), capital_relation, capital_frequency)


def _english_capital(r: str) -> bool:
    return r.isupper() and detect_language(r) in (None, "en")


def _english_lowercase(r: str) -> bool:
    return r.islower() and detect_language(r) in (None, "en")


def _no_comma(r: str) -> bool:
    return "," not in r


_CHECKERS: dict[str, Callable[..., bool]] = {
    "keywords:existence": _keywords_existence,
    "keywords:frequency": _keywords_frequency,
    "keywords:forbidden_words": _keywords_forbidden,
    "keywords:letter_frequency": _keywords_letter_frequency,
    "language:response_language": _response_language,
    "length_constraints:number_sentences": _number_sentences,
    "length_constraints:number_paragraphs": _number_paragraphs,
    "length_constraints:number_words": _number_words,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_first_word,
    "detectable_content:number_placeholders": _number_placeholders,
    "detectable_content:postscript": _postscript,
    "detectable_format:number_bullet_lists": _number_bullet_lists,
    "detectable_format:constrained_response": _constrained_response,
    "detectable_format:number_highlighted_sections": _number_highlighted_sections,
    "detectable_format:multiple_sections": _multiple_sections,
    "detectable_format:json_format": _json_format,
    "detectable_format:title": _title,
    "combination:two_responses": _two_responses,
    "combination:repeat_prompt": _repeat_prompt,
    "startend:end_checker": _end_checker,
    "startend:quotation": _quotation,
    "change_case:capital_word_frequency": _capital_word_frequency,
    "change_case:english_capital": _english_capital,
    "change_case:english_lowercase": _english_lowercase,
    "punctuation:no_comma": _no_comma,
}
INSTRUCTION_IDS: tuple[str, ...] = tuple(_CHECKERS)

# ----------------------------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class IFResult:
    """Per-instruction verdicts, in the order of the instruction ids."""

    strict: list[bool]
    loose: list[bool]

    @property
    def prompt_strict(self) -> bool:
        return all(self.strict)

    @property
    def prompt_loose(self) -> bool:
        return all(self.loose)


def _bind(instruction_id: str, kwargs: Mapping[str, object] | None, prompt: str) -> Callable[[str], bool]:
    """The checker for one instruction with its kwargs bound, after checking the kwargs' names."""
    checker = _CHECKERS.get(instruction_id)
    if checker is None:
        raise ValueError(f"unknown IFEval instruction id {instruction_id!r}; valid ids: {', '.join(INSTRUCTION_IDS)}")
    # IFEval's data lists every kwarg name of every instruction with None for the unused ones: drop those.
    args = {k: v for k, v in (kwargs or {}).items() if v is not None}
    params = inspect.signature(checker).parameters
    wanted = [name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    if instruction_id == "combination:repeat_prompt" and "prompt_to_repeat" not in args:
        args["prompt_to_repeat"] = prompt  # lm-eval rebuilds this instruction from the prompt itself
    unknown = sorted(set(args) - set(wanted))
    missing = [name for name in wanted if name not in args]
    if unknown or missing:
        raise ValueError(
            f"{instruction_id}: bad kwargs (unknown {unknown}, missing {missing}); expected exactly {wanted}"
        )
    return lambda response: checker(response, **args)


def _loose_variants(response: str) -> list[str]:
    lines = response.split("\n")
    trimmed = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return trimmed + [t.replace("*", "") for t in trimmed]


def check_instructions(
    response: str,
    instruction_id_list: Sequence[str],
    kwargs_list: Sequence[Mapping[str, object] | None],
    prompt: str = "",
) -> IFResult:
    """IFEval's strict and loose verdicts for each instruction of one prompt.

    `kwargs_list[i]` holds the kwargs of `instruction_id_list[i]` (IFEval's names; None values are ignored).
    `prompt` is only used by `combination:repeat_prompt` when its kwargs lack `prompt_to_repeat`.
    Raises ValueError for an unknown instruction id or kwargs that do not fit it.
    """
    if len(instruction_id_list) != len(kwargs_list):
        raise ValueError(
            f"instruction_id_list has {len(instruction_id_list)} ids but kwargs_list has {len(kwargs_list)} entries"
        )
    checks = [_bind(i, k, prompt) for i, k in zip(instruction_id_list, kwargs_list)]
    variants = [v for v in _loose_variants(response) if v.strip()]
    strict = [bool(response.strip()) and check(response) for check in checks]
    loose = [any(check(v) for v in variants) for check in checks]
    return IFResult(strict=strict, loose=loose)
