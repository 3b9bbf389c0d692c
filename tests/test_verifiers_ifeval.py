"""IFEval instruction checkers (kexaone.rl.verifiers.ifeval): one passing and one failing reply per instruction id."""

import pytest

from kexaone.rl.verifiers.ifeval import INSTRUCTION_IDS, check_instructions, count_words, split_sentences

# (instruction id, kwargs, a reply that follows it, a reply that does not)
CASES = [
    ("keywords:existence", {"keywords": ["apple", "pie"]}, "I baked an Apple pie.", "I baked an apple tart."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"},
     "cat Cat CAT", "cat cat"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "one cat", "cat cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["bad", "evil"]}, "A badge is fine.", "That is Evil."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"},
     "Zoo pizza", "Zoo"),
    ("language:response_language", {"language": "ko"},
     "오늘은 날씨가 아주 좋아서 공원에 산책을 나갔습니다.",
     "Today the weather is nice so I went for a walk in the park."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith arrived at 3.30 p.m. today. He left.", "One. Two. Three. Four."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "One! Two? Three.", "One, e.g. two. Three"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "a\n***\nb\n***\nc", "a\n***\n\n***\nc"),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"},
     "one two three four five", "one two three"),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "one two", "a b c d e f"),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
     "Intro text.\n\n\"However, it works.", "Intro text.\n\nBut it fails."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Dear [name], at [address].", "Dear [name]."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\n\nP.S. see you", "Hi. PS see you"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.P.S more", "Hi.\nP.S. more"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* a\n* b\n- c", "* a\n* b"),
    ("detectable_format:constrained_response", {}, "Thinking... My answer is yes.", "Yes, definitely."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "*first* and **second**", "*first* and ** **"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nfoo\nSection 2\nbar", "Section 1\nfoo"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{'a': 1}"),
    ("detectable_format:title", {}, "<<My Poem>>\nRoses", "<< >>\nRoses"),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", "Same.\n******\nSame."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", "Hi! Say hi."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     '"Done. Any other questions?"', "Any other questions? Done."),
    ("startend:quotation", {}, '"wrapped"', 'not "wrapped"'),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THIS is VERY good", "This is Very good"),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     "ONE capital word", "TWO CAPS here"),
    ("change_case:english_capital", {}, "THIS REPLY IS WRITTEN ENTIRELY IN CAPITAL LETTERS.",
     "This reply is not in capitals."),
    ("change_case:english_lowercase", {}, "this reply is written entirely in lowercase letters.",
     "This reply has a Capital."),
    ("punctuation:no_comma", {}, "No commas here.", "Well, a comma."),
]


def test_every_instruction_id_is_covered():
    assert len(INSTRUCTION_IDS) == 25
    assert {c[0] for c in CASES} == set(INSTRUCTION_IDS)


@pytest.mark.parametrize("instruction_id, kwargs, good, bad", CASES, ids=[c[0] for c in CASES])
def test_checker_strict(instruction_id, kwargs, good, bad):
    assert check_instructions(good, [instruction_id], [kwargs]).strict == [True]
    assert check_instructions(bad, [instruction_id], [kwargs]).strict == [False]


def test_empty_reply_fails_even_where_the_check_would_pass():
    result = check_instructions("   ", ["punctuation:no_comma"], [{}])
    assert result.strict == [False] and result.loose == [False]


def test_loose_variants():
    # A preamble line breaks "quotation" strictly; dropping the first line (a loose variant) fixes it.
    reply = 'Sure, here it is:\n"quoted text"'
    assert check_instructions(reply, ["startend:quotation"], [{}]).strict == [False]
    assert check_instructions(reply, ["startend:quotation"], [{}]).loose == [True]
    # Markdown stars break JSON; removing every `*` is another loose variant.
    reply = '**{"a": 1}**'
    result = check_instructions(reply, ["detectable_format:json_format"], [{}])
    assert result.strict == [False] and result.loose == [True]
    # A trailing sign-off line breaks the end phrase; dropping the last line fixes it.
    reply = "Body text. Is there anything else?\nBest wishes"
    result = check_instructions(reply, ["startend:end_checker"], [{"end_phrase": "Is there anything else?"}])
    assert result.strict == [False] and result.loose == [True]


def test_several_instructions_and_prompt_level():
    ids = ["punctuation:no_comma", "change_case:english_lowercase", "keywords:existence"]
    kwargs = [{}, {}, {"keywords": ["river"], "num_words": None}]  # None entries (IFEval data) are ignored
    result = check_instructions("the river runs to the sea and we follow it", ids, kwargs)
    assert result.strict == [True, True, True] and result.prompt_strict
    result = check_instructions("The river, it runs.", ids, kwargs)
    assert result.strict == [False, False, True] and not result.prompt_strict


def test_repeat_prompt_falls_back_to_the_prompt():
    result = check_instructions("Tell me a joke. Why did...", ["combination:repeat_prompt"], [{}],
                                prompt="Tell me a joke.")
    assert result.strict == [True]


def test_errors():
    with pytest.raises(ValueError, match="unknown IFEval instruction id 'keywords:nope'.*keywords:existence"):
        check_instructions("x", ["keywords:nope"], [{}])
    with pytest.raises(ValueError, match=r"unknown \['keyword'\].*missing \['keywords'\]"):
        check_instructions("x", ["keywords:existence"], [{"keyword": "a"}])
    with pytest.raises(ValueError, match="relation must be one of"):
        check_instructions("x", ["length_constraints:number_words"], [{"num_words": 3, "relation": "about"}])
    with pytest.raises(ValueError, match="2 ids but kwargs_list has 1"):
        check_instructions("x", ["punctuation:no_comma", "startend:quotation"], [{}])


def test_sentence_splitter_and_word_count():
    text = 'Mr. Smith paid $3.50 at 5 p.m. on Monday. "Really?" she asked! Yes. 좋아요。 Fine'
    assert split_sentences(text) == [
        "Mr. Smith paid $3.50 at 5 p.m. on Monday.", '"Really?"', "she asked!", "Yes.", "좋아요。", "Fine",
    ]
    assert split_sentences("") == []
    assert count_words("It's 3.5 km -- fine!") == 6  # It, s, 3, 5, km, fine: as nltk RegexpTokenizer(r"\w+")


def test_capital_words_count_hyphenated_words_once():
    # As nltk's word_tokenize: "STATE-OF-THE-ART" is one capital word, so this reply has 2, not 5.
    ids = ["change_case:capital_word_frequency"]
    assert check_instructions("THE STATE-OF-THE-ART model", ids,
                              [{"capital_frequency": 2, "capital_relation": "at least"}]).strict == [True]
    assert check_instructions("THE STATE-OF-THE-ART model", ids,
                              [{"capital_frequency": 3, "capital_relation": "at least"}]).strict == [False]
