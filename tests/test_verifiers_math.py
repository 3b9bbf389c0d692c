"""Math final-answer extraction and equivalence (kexaone.rl.verifiers.math)."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from kexaone.rl.verifiers.math import answers_equal, extract_final_answer, gsm8k_gold


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so the result is \boxed{42}.", "42"),
        (r"first \boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"nested \boxed{\sqrt{\frac{a}{b}}} done", r"\sqrt{\frac{a}{b}}"),
        (r"\fbox{7}", "7"),
        (r"hence \boxed 9 is it", "9"),
        # The box wins over a later phrase; a later box wins over an earlier one.
        (r"\boxed{3}. The answer is 4", "3"),
        ("Let me think. The answer is 17.", "17"),
        ("Therefore, the final answer is $\\frac{3}{4}$. I hope it is correct.", r"\frac{3}{4}"),
        ("Final Answer: The final answer is 12. I hope it is correct.", "12"),
        ("Answer: 3.5\n", "3.5"),
        ("**Answer:** 250", "250"),
        ("The answer is 1 first.\nThe answer is 2.", "2"),
        ("계산하면 정답: 15", "15"),
        ("따라서 정답은 27입니다.", "27"),
        ("답: 8", "8"),
        ("Por lo tanto, la respuesta es 12.", "12"),
        ("Also ist die Antwort 99.", "99"),
        ("答えは 6 です。", "6"),
        ("Vậy đáp án là 31.", "31"),
        ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
        ("#### 1,200", "1,200"),
        ("no answer announced here", None),
        ("", None),
        (r"cut off \boxed{\frac{1}{2", None),
    ],
)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


def test_extract_rejects_non_string():
    with pytest.raises(TypeError, match="expects a str"):
        extract_final_answer(None)


def test_gsm8k_gold():
    assert gsm8k_gold("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 1,234") == "1234"
    assert gsm8k_gold("#### 18") == "18"
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("no marker")


EQUAL = [
    ("0.75", r"\frac{3}{4}"),
    (r"\frac{3}{4}", "0.75"),
    (r"\sqrt{8}", r"2\sqrt{2}"),
    ("1,000", "1000"),
    ("1000", "1,000"),
    ("1,000,000", "1000000"),
    ("x = 5", "5"),
    ("$x=5$", "5"),
    ("5", "5.0"),
    ("5.", "5"),
    (r"\dfrac{1}{2}", "1/2"),
    (r"\frac12", "0.5"),
    ("(x+1)^2", "x^2+2x+1"),
    (r"\{2,1\}", r"\{1,2\}"),
    ("[0, 1)", "[0,1)"),
    (r"\boxed{7}", "7"),
    (r"12 \text{ cm}", "12"),
    ("-3", "- 3"),
    ("Paris", "paris"),
    (r"\text{Paris}", "Paris"),
    ("(B)", "B"),
    ("서울", "서울"),
    ("18 dollars", "18"),  # unit words after a number
    ("1,200 won", "1200"),
    ("1/2 cup", "0.5"),
]

NOT_EQUAL = [
    ("3", "4"),
    ("0.75", r"\frac{2}{3}"),
    (r"\sqrt{8}", "3"),
    ("1,001", "1000"),
    ("Pairs", "Paris"),  # SymPy would read both as the same product of symbols
    ("5", "Paris"),
    ("", "5"),
    (None, "5"),
    ("[0, 1]", "[0,1)"),
    ("서울", "부산"),
    ("18 eggs", "19"),
    ("3 hours and 20 minutes", "3"),  # more numbers after the first: not a unit
]


@pytest.mark.parametrize("pred, gold", EQUAL)
def test_answers_equal(pred, gold):
    assert answers_equal(pred, gold)


@pytest.mark.parametrize("pred, gold", NOT_EQUAL)
def test_answers_not_equal(pred, gold):
    assert not answers_equal(pred, gold)


def test_answers_equal_rejects_non_string():
    with pytest.raises(TypeError, match="str answers"):
        answers_equal(5, "5")


def test_answers_equal_from_worker_threads():
    # math-verify's SIGALRM timeouts only work on the main thread; off it the comparison runs in a helper process.
    cases = EQUAL[:6] + NOT_EQUAL[:4]
    expected = [True] * 6 + [False] * 4
    with ThreadPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(lambda pg: answers_equal(*pg), cases))
    assert got == expected


def test_extract_then_compare_roundtrip():
    reply = r"We get $\frac{6}{8}$, which simplifies. The answer is $\boxed{\frac{3}{4}}$."
    assert answers_equal(extract_final_answer(reply), "0.75")


def test_helper_process_overrun_counts_as_unknown_and_recovers():
    from kexaone.rl.verifiers import math as vmath

    helper = vmath._HelperProcess()
    try:
        # No time to even start: the call gives up (None -> the caller falls back), and the process is replaced.
        assert helper.compare("1", "1", 5, wait_s=0.0) is None
        assert helper._proc is None
        assert helper.compare(r"\frac{1}{2}", "0.5", 5, wait_s=60.0) is True
    finally:
        helper._stop()
