"""Retrieval-dense synthetic forms (kexaone.data.synthetic.recall): token and text forms, their answer spans."""

from __future__ import annotations

import random
import re

import pytest

from kexaone.data.synthetic.recall import (
    answer_token_mask,
    dense_recall_documents,
    mqar_tokens,
    passkey_document,
    recall_document,
    repeat_document,
    repeat_tokens,
)


def test_mqar_tokens_answers_are_the_values_paired_with_the_queried_keys():
    rng = random.Random(0)
    for n_pairs, nq in ((8, None), (16, 5), (1, 1)):
        ids, mask = mqar_tokens(rng, n_pairs, (10, 60), (100, 130), n_queries=nq)
        ctx = ids[:2 * n_pairs]
        pairs = dict(zip(ctx[0::2], ctx[1::2]))
        assert len(pairs) == n_pairs  # distinct keys
        assert all(10 <= k < 60 for k in pairs) and all(100 <= v < 130 for v in pairs.values())
        q = ids[2 * n_pairs:]
        assert len(q) == 2 * (nq or n_pairs) and len(mask) == len(ids)
        assert not any(mask[:2 * n_pairs])
        for i in range(2 * n_pairs, len(ids), 2):
            assert not mask[i] and mask[i + 1]
            assert ids[i + 1] == pairs[ids[i]]
        assert len({ids[i] for i in range(2 * n_pairs, len(ids), 2)}) == (nq or n_pairs)  # each asked once


def test_mqar_tokens_rejects_bad_ranges():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="must not overlap"):
        mqar_tokens(rng, 4, (0, 50), (40, 80))
    with pytest.raises(ValueError, match="holds 3 ids"):
        mqar_tokens(rng, 4, (0, 3), (10, 20))
    with pytest.raises(ValueError, match="n_queries"):
        mqar_tokens(rng, 4, (0, 10), (10, 20), n_queries=5)


def test_repeat_tokens_second_copy_matches_first_at_varying_offsets():
    rng = random.Random(1)
    offsets = set()
    for _ in range(30):
        ids, mask = repeat_tokens(rng, 12, (5, 500), filler=(0, 10), prefix=(0, 4))
        assert sum(mask) == 11 and len(mask) == len(ids)
        first = mask.index(True) - 1  # start of the second copy
        x = ids[first:first + 12]
        assert len(set(x)) == 12
        # The span occurs exactly twice and its tokens nowhere else.
        assert ids[:first].count(x[0]) == 1
        start = ids.index(x[0])
        assert ids[start:start + 12] == x
        assert not set(ids[:start] + ids[start + 12:first]) & set(x)
        offsets.add(first - start)
    assert len(offsets) > 5  # the distance between copies varies
    with pytest.raises(ValueError, match="span must be >= 2"):
        repeat_tokens(rng, 1, (0, 10))


def test_recall_document_answers_are_values_of_the_keys_they_follow():
    rng = random.Random(2)
    doc = recall_document(rng, 10, n_queries=6)
    head, _, recall = doc.text.partition("\nRecall:")
    pairs = dict(re.findall(r"(\d{4}) (\w+)", head))
    assert len(pairs) == 10
    answers = doc.answer_texts()
    assert len(answers) == 6 and all(a.startswith(" ") for a in answers)
    for (a, b), ans in zip(doc.answers, answers):
        key = re.findall(r"(\d{4})$", doc.text[:a])[0]
        assert pairs[key] == ans.strip()
        assert a > len(head)


def test_repeat_and_passkey_documents():
    rng = random.Random(3)
    doc = repeat_document(rng, 8)
    words = doc.text.split("\n")[0].removeprefix("Sequence: ").rstrip(".").split(" ")
    assert [a.strip() for a in doc.answer_texts()] == words[1:]
    assert doc.text.split("\n")[-1] == "Again: " + " ".join(words) + "."
    doc = passkey_document(rng, digits=6)
    key = re.findall(r"The pass key is (\d{6})\. Remember it", doc.text)[0]
    assert doc.answer_texts() == [" " + key] and doc.text.endswith(f"is {key}.")


def test_dense_recall_documents_are_deterministic_and_mix_forms():
    a = [d.text for _, d in zip(range(40), dense_recall_documents(seed=5))]
    b = [d.text for _, d in zip(range(40), dense_recall_documents(seed=5))]
    assert a == b and a != [d.text for _, d in zip(range(40), dense_recall_documents(seed=6))]
    kinds = {t.split(" ")[0].split("\n")[0] for t in a}
    assert {"Recall", "Sequence:"} <= kinds
    only = [d.text for _, d in zip(range(10), dense_recall_documents(forms={"passkey": 1.0}))]
    assert all("pass key" in t for t in only)
    with pytest.raises(ValueError, match="forms must map"):
        next(dense_recall_documents(forms={"bogus": 1.0}))


def test_answer_token_mask_marks_exactly_the_answer_tokens():
    from kexaone.tokenizer.superbpe import train_superbpe

    docs = [d.text for _, d in zip(range(300), dense_recall_documents(seed=0))]
    tok = train_superbpe(iter(docs), 400, workers=1, show_progress=False)
    for _, doc in zip(range(20), dense_recall_documents(seed=9)):
        ids, mask = answer_token_mask(tok, doc)
        assert ids == tok.encode(doc.text) and len(mask) == len(ids)
        # The answer tokens decode to the answers (with whatever a merged neighbour added), the rest to the
        # text around them: together, in order, they are the whole document.
        picked = tok.decode([i for i, m in zip(ids, mask) if m])
        for ans in doc.answer_texts():
            assert ans.strip() in picked
        assert sum(mask) >= len(doc.answers)
        rest = tok.decode([i for i, m in zip(ids, mask) if not m])
        assert len(picked) + len(rest) == len(doc.text)
        assert doc.text.startswith(tok.decode(ids[:mask.index(True)]))


def test_recall_keys_avoid_the_evaluation_keys():
    from kexaone.data.synthetic.retrieval import is_reserved_key

    rng = random.Random(4)
    keys = [int(k) for _ in range(200) for k in re.findall(r"(\d{4}) ", recall_document(rng, 20).text)]
    assert len(keys) > 3000 and not any(is_reserved_key(k) for k in keys)
    with pytest.raises(ValueError, match="more than 1 digit"):
        recall_document(rng, 6, key_digits=1)


def test_corpus_retrieval_domain_mixes_in_dense_forms():
    import dataclasses

    from kexaone.data.synthetic.corpus import CORPUS_SIZES, domain_documents
    from kexaone.data.synthetic.retrieval import retrieval_documents

    plain = dataclasses.replace(CORPUS_SIZES["tiny"], retrieval_dense_fraction=0.0)
    docs = list(domain_documents("retrieval", plain))
    ref = retrieval_documents(0, plain.retrieval_long_fraction)
    assert [d.text for d in docs] == [next(ref).text for _ in docs]  # fraction 0: the record documents unchanged
    mixed = list(domain_documents("retrieval", dataclasses.replace(plain, retrieval_dense_fraction=0.5)))
    dense = [d for d in mixed if d.text.startswith(("Recall list.", "Sequence:")) or "pass key" in d.text]
    assert 0.3 < len(dense) / len(mixed) < 0.7 and all(d.tag == "retrieval/en" for d in mixed)
    assert sum(len(d.text) for d in mixed) >= plain.chars["retrieval"]  # the domain's character budget holds
    assert all(d.answers for d in mixed)  # record documents carry their answer spans too


def test_write_corpus_stores_answer_spans(tmp_path, monkeypatch):
    import dataclasses
    import json

    from kexaone.data.sources import iter_tagged_documents
    from kexaone.data.synthetic import corpus

    small = dataclasses.replace(corpus.CORPUS_SIZES["tiny"], retrieval_dense_fraction=0.5,
                                chars={**corpus.CORPUS_SIZES["tiny"].chars, "knowledge": 2000, "code": 2000})
    paths = corpus.write_corpus(tmp_path, small)
    recs = [json.loads(ln) for ln in paths["retrieval"].read_text(encoding="utf-8").splitlines()]
    assert all("answers" in r for r in recs)
    for r in recs:
        for a, b in r["answers"]:
            assert r["text"][a] == " " and r["text"][a + 1:b].strip() == r["text"][a + 1:b]
    # the data pipeline still reads the file as plain tagged documents
    docs = list(iter_tagged_documents(str(paths["retrieval"])))
    assert [d.text for d in docs] == [r["text"] for r in recs] and {d.tag for d in docs} == {"retrieval/en"}


def test_record_documents_answer_spans_are_the_restated_records():
    from kexaone.data.synthetic.retrieval import make_document, make_span_document

    for long in (False, True):
        doc = make_span_document(random.Random(7), long)
        assert doc.text == make_document(random.Random(7), long)  # the same text with or without spans
        answers = doc.answer_texts()
        assert len(answers) == doc.text.count("\nAnswer:") >= 3
        for (a, _), ans in zip(doc.answers, answers):
            assert doc.text[:a].endswith("Answer:")
            assert ans.strip() in doc.text[:a]  # the restated record was stated earlier in the document
