"""Math final answers: extract the final answer from a model's reply and decide whether two answers are equivalent.

Used by the RL math reward and by the evaluation harness (GSM8K, MATH-style tasks), so both score a reply the same
way. Equivalence goes through math-verify (LaTeX/expression parsing into SymPy), which knows fractions, radicals,
sets, intervals, percentages, `x = 5` against `5` and thousands separators; a normalised-string / numeric comparison
is the fallback when it cannot parse either side (plain words, Korean text...).

math-verify bounds its parsing and comparison time with SIGALRM, which only works on the main thread. Off the main
thread (reward workers, a server's thread pool) the comparison therefore runs in one persistent helper process whose
main thread can use the alarm; a call that overruns its wait kills and replaces that process and counts as "not
equal".

What this module does not do: grade proofs or multi-part free-form answers, or judge with a model.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

__all__ = ["extract_final_answer", "answers_equal", "gsm8k_gold"]

# ----------------------------------------------------------------------------------------------------------------
# Extraction


def _last_braced(text: str, commands: tuple[str, ...]) -> str | None:
    """Content of the last `\\cmd{...}` (brace-matched, nested braces allowed) or `\\cmd X` for any cmd given."""
    best_start, best_cmd = -1, ""
    for cmd in commands:
        at = text.rfind(cmd)
        # `\boxed` must not match the tail of a longer command name such as `\boxedanswer`.
        while at != -1 and at + len(cmd) < len(text) and text[at + len(cmd)].isalpha():
            at = text.rfind(cmd, 0, at)
        if at > best_start:
            best_start, best_cmd = at, cmd
    if best_start < 0:
        return None
    i = best_start + len(best_cmd)
    if i < len(text) and text[i] == " ":
        # The `\boxed 5` form: the argument is the next token.
        rest = text[i + 1:]
        token = re.match(r"[^\s$]+", rest)
        return token.group(0) if token else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j].strip()
    return None  # unbalanced: the reply was cut off inside the box


# One pattern per way of announcing the answer, in the six languages K-EXAONE speaks (en, ko, es, de, ja, vi).
# Each captures what follows on the same line.
_PHRASES = re.compile(
    r"(?:"
    r"final\s+answer\s*(?:is|:)|the\s+answer\s+is\s*:?|\banswer\s*[:：]"
    r"|정답\s*(?:은|는)?\s*[:：]?|(?<![가-힣])답\s*(?:은|는)?\s*[:：]"
    r"|la\s+respuesta\s+(?:final\s+)?es\s*:?|\brespuesta\s*[:：]"
    r"|die\s+antwort\s+(?:lautet|ist)\s*:?|ist\s+die\s+antwort\s*:?|\bantwort\s*[:：]"
    r"|答え\s*(?:は)?\s*[:：]?"
    r"|đáp\s+án\s*(?:là|:)|câu\s+trả\s+lời\s+(?:là|:)"
    r")[ \t]*([^\n]+)",
    re.IGNORECASE,
)
# Words that close a Korean/Japanese/Vietnamese answer sentence and are not part of the answer.
_TRAILERS = re.compile(r"\s*(?:입니다|이에요|예요|이다|です|だ)\s*[.。!]?\s*$")
_GSM8K = re.compile(r"####\s*([^\n]+)")


def _clean_phrase_answer(raw: str) -> str | None:
    # "Final Answer: The final answer is 12": phrases can nest; the innermost one announces the answer.
    inner = list(_PHRASES.finditer(raw))
    while inner:
        raw = inner[-1].group(1)
        inner = list(_PHRASES.finditer(raw))
    s = raw.strip()
    if s.startswith("$"):
        # `$...$`: the math span is the answer; what follows it is prose.
        close = s.find("$", 1)
        if close > 1:
            return s[1:close].strip()
    s = s.replace("**", "")
    s = re.split(r"\.\s|。", s, maxsplit=1)[0]  # first sentence only; decimals have no space after the point
    s = _TRAILERS.sub("", s)
    s = s.strip().rstrip(".").strip().strip("$").strip()
    return s or None


def extract_final_answer(text: str) -> str | None:
    """The final answer announced in a model's reply, or None when it announces none.

    Tried in this order, the first that matches wins:
      1. the last `\\boxed{...}` or `\\fbox{...}` (brace-matched, so `\\boxed{\\frac{1}{2}}` keeps its inner braces),
      2. the last answer phrase: "the answer is X", "final answer is X", "Answer: X", "정답: X" / "답: X",
         "la respuesta es X", "die Antwort ist X", "答え: X", "đáp án là X" (X = the rest of that sentence on that
         line; a `$...$` span right after the phrase is taken whole),
      3. the last GSM8K-style `#### N` line,
      4. otherwise None.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_final_answer expects a str, got {type(text).__name__}")
    boxed = _last_braced(text, ("\\boxed", "\\fbox"))
    if boxed:
        return boxed
    phrases = list(_PHRASES.finditer(text))
    for match in reversed(phrases):
        answer = _clean_phrase_answer(match.group(1))
        if answer:
            return answer
    marks = _GSM8K.findall(text)
    if marks:
        return marks[-1].strip() or None
    return None


def gsm8k_gold(answer_field: str) -> str:
    """The gold answer of a GSM8K `answer` field: the text after `####`, commas removed (`1,234` -> `1234`)."""
    if "####" not in answer_field:
        raise ValueError(f"GSM8K answer field has no '####' line: {answer_field[-80:]!r}")
    return answer_field.rsplit("####", 1)[1].strip().replace(",", "")


# ----------------------------------------------------------------------------------------------------------------
# Equivalence


_UNWRAP = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname|boxed)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,!;: ]|\\left|\\right|\\displaystyle|\\\(|\\\)|\\\[|\\\]|\$")
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d])")
_ASSIGN = re.compile(r"^[a-z]\s*=\s*(?=\S)", re.IGNORECASE)
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?$", re.IGNORECASE)
# A plain word answer ("Paris", "yes", "서울"): compared as text, because SymPy would read "Paris" as the product
# a*i*p*r*s and call it equal to "Pairs".
_WORDY = re.compile(r"^[^\W\d_]{2,}(?:[\s'\-][^\W\d_]+)*$")


# A number followed by unit words ("18 dollars", "1/2 cup", "7 Äpfel"): the number is the answer. The words may
# hold no digits or math, so "3 hours 20 minutes" and "5 \pi" are left alone.
_NUMBER_THEN_WORDS = re.compile(r"^\s*(\$?[+-]?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?)\s+[^\W\d_][^\d\\^_{}=+*/()]*$")


def _drop_unit_words(s: str) -> str:
    match = _NUMBER_THEN_WORDS.match(s)
    return match.group(1) if match else s


def _normalise(s: str) -> str:
    s = s.strip()
    for _ in range(3):  # nested \text{\textbf{..}}
        s = _UNWRAP.sub(r"\1", s)
    s = _SPACING.sub("", s)
    s = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), s)
    s = s.strip().rstrip(".").strip()
    s = _ASSIGN.sub("", s)
    if re.fullmatch(r"\(\s*[A-Za-z]\s*\)", s):  # multiple choice "(B)"
        s = s.strip("() ")
    return " ".join(s.split()).casefold()


def _as_number(s: str) -> Fraction | None:
    s = s.replace(" ", "")
    try:
        if _NUMBER.match(s):
            return Fraction(s)
        frac = re.fullmatch(r"([+-]?\d+)/(\d+)", s) or re.fullmatch(r"([+-]?\d+)\\(?:d|t)?frac\{?(\d+)\}?", s)
        if frac and int(frac.group(2)) != 0:
            return Fraction(int(frac.group(1)), int(frac.group(2)))
        frac = re.fullmatch(r"([+-]?)\\(?:d|t)?frac\{(\d+)\}\{(\d+)\}", s)
        if frac and int(frac.group(3)) != 0:
            value = Fraction(int(frac.group(2)), int(frac.group(3)))
            return -value if frac.group(1) == "-" else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _fallback_equal(gold: str, pred: str) -> bool:
    # Deliberately no sympy.sympify/parse_expr here: both eval() their input, and `pred` is model output.
    g, p = _normalise(gold), _normalise(pred)
    if g == p:
        return True
    gn, pn = _as_number(g), _as_number(p)
    if gn is not None and pn is not None:
        return abs(gn - pn) <= Fraction(1, 10**6) * max(1, abs(gn))
    return False


def _as_latex(s: str) -> str:
    """Wrap a bare answer in `$...$` so math-verify's LaTeX extractor reads it (it only parses delimited math)."""
    if "$" in s or "\\(" in s or "\\[" in s:
        return s
    return "$" + re.sub(r"(?<!\\)%", r"\\%", s) + "$"  # a bare % would start a LaTeX comment


def _mathverify_equal(gold: str, pred: str, timeout_s: int) -> bool | None:
    """True/False from math-verify, or None when it cannot parse one side. Must run on a main thread."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    try:
        gold_parsed = parse(_as_latex(gold), extraction_config=config, parsing_timeout=timeout_s)
        pred_parsed = parse(_as_latex(pred), extraction_config=config, parsing_timeout=timeout_s)
        if not gold_parsed or not pred_parsed:
            return None
        # verify is asymmetric (the gold side decides how sets and relations are read): gold first.
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s))
    except Exception:  # noqa: BLE001 - math-verify raises many kinds on odd input; treat as unparsable
        return None


def serve_helper() -> None:  # pragma: no cover - runs in the helper process
    """The helper process's loop: one JSON request per stdin line, one JSON verdict per stdout line."""
    import json
    import sys

    for line in sys.stdin:
        gold, pred, timeout_s = json.loads(line)
        sys.stdout.write(json.dumps(_mathverify_equal(gold, pred, timeout_s)) + "\n")
        sys.stdout.flush()


# The helper is a plain `python -c` child, not multiprocessing: spawn would re-import the caller's __main__ (e.g.
# `python -m kexaone`, whose __main__ runs the CLI), and fork would copy this process's threads and locks.
_HELPER_CODE = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from kexaone.rl.verifiers.math import serve_helper; serve_helper()"
)


class _HelperProcess:
    """One persistent child process that runs math-verify on its main thread for callers on other threads.

    Callers are serialised by a lock (a comparison takes milliseconds); one that overruns its wait kills the
    process, and the next call starts a fresh one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[3])  # the directory holding the kexaone package
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _HELPER_CODE.format(root=root)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
        )

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc.stdin.close()
            self._proc.stdout.close()
        self._proc = None

    def compare(self, gold: str, pred: str, timeout_s: int, wait_s: float) -> bool | None:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._stop()
                self._start()
            try:
                self._proc.stdin.write(json.dumps([gold, pred, timeout_s]) + "\n")
                self._proc.stdin.flush()
                ready, _, _ = select.select([self._proc.stdout], [], [], wait_s)
                if ready:
                    line = self._proc.stdout.readline()
                    if line:
                        return json.loads(line)
            except (OSError, ValueError):
                pass
            self._stop()
            return None


_HELPER = _HelperProcess()


def answers_equal(pred: str | None, gold: str, *, timeout_s: int = 5) -> bool:
    """Whether a predicted final answer is equivalent to the gold one.

    `0.75` == `\\frac{3}{4}`, `\\sqrt{8}` == `2\\sqrt{2}`, `1,000` == `1000`, `x = 5` == `5`, `50\\%` == `0.5`,
    `\\{1,2\\}` == `\\{2,1\\}`. Plain-word answers compare case-insensitively as text. An empty or None prediction
    is never equal. `timeout_s` bounds each parse/compare step; a comparison that overruns counts as not equal.
    Safe to call from any thread.
    """
    if pred is None:
        return False
    if not isinstance(pred, str) or not isinstance(gold, str):
        raise TypeError(f"answers_equal expects str answers, got {type(pred).__name__} and {type(gold).__name__}")
    if not pred.strip() or not gold.strip():
        return False
    if "\\boxed" in pred or "\\fbox" in pred:
        pred = extract_final_answer(pred) or pred
    pred, gold = _drop_unit_words(pred), _drop_unit_words(gold)
    if _normalise(gold) == _normalise(pred):
        return True
    if _WORDY.match(_normalise(gold)) or _WORDY.match(_normalise(pred)):
        return False  # word answers differ as text (see _WORDY)
    if threading.current_thread() is threading.main_thread():
        verdict = _mathverify_equal(gold, pred, timeout_s)
    else:
        # Room for the helper's first start (it imports SymPy) plus two parses and one comparison.
        verdict = _HELPER.compare(gold, pred, timeout_s, wait_s=30.0 + 3 * timeout_s)
    if verdict is None:
        return _fallback_equal(gold, pred)
    return verdict
