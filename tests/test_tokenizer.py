"""SuperBPE trainer and KExaoneTokenizer: round trips, stage-2 constraints, merge replay, HF compatibility,
determinism, language budgets and errors. Trains on a small generated corpus (a few hundred KB) once per module."""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import pytest

from kexaone.tokenizer import KExaoneTokenizer, SPECIAL_TOKENS
from kexaone.tokenizer import pretokenize
from kexaone.tokenizer.superbpe import resolve_transition, train_superbpe

VOCAB = 1500

WORDS = {
    "en": "the quick brown fox jumps over lazy dog and a of to in is that it was for on are with as his they at be "
          "this from have or by one had not but what all were when we there can an your which their said if do will"
          .split(),
    "ko": "나는 학교에 갑니다 오늘 날씨가 좋습니다 우리는 함께 공부를 하고 있습니다 그리고 한국어 문장을 만들었다 사람들이 많이 "
          "모였다 시간이 지나면 알게 될 것이다".split(),
    "ja": "私は 学校に 行きます 今日は 天気が いいです 日本語の 文章を 書きました".split(),
    "de": "der die das und ist nicht ein eine zu den mit sich auf dem über schön Straße grün Mädchen".split(),
    "es": "el la los las que y de en un una por con para se señor niño está año mañana".split(),
    "vi": "tôi là người Việt Nam chúng ta đang học tiếng hôm nay trời đẹp quá những điều".split(),
}
CODE = 'def add(a, b):\n    """Add two numbers."""\n    return a + b\n\nfor i in range(10):\n    print(add(i, 2))\n'
LATEX = r"Let $f(x) = \frac{x^2 + 1}{\sqrt{x}}$; then $\int_0^1 f(x)\,dx \le \sum_{n=1}^{\infty} 2^{-n}$."


def make_corpus(seed: int = 0, lines_per_lang: int = 600) -> list[tuple[str, str | None]]:
    rng = random.Random(seed)
    out: list[tuple[str, str | None]] = []
    for lang, words in WORDS.items():
        for _ in range(lines_per_lang):
            n = rng.randint(4, 14)
            sent = " ".join(rng.choice(words) for _ in range(n))
            # Fixed multi-word phrases: strong superword candidates (and longer than 4 words, to test the limit).
            if rng.random() < 0.5:
                sent += ", " + " ".join(words[:6])
            if rng.random() < 0.3:
                sent += ". Answer: " + rng.choice("ABCD")
            out.append((sent + ".\n", None))
    for _ in range(60):
        out.append((CODE, "code"))
        out.append((LATEX + "\n", "stem"))
    return out


@pytest.fixture(scope="module")
def corpus():
    return make_corpus()


@pytest.fixture(scope="module")
def tok(corpus, tmp_path_factory) -> KExaoneTokenizer:
    out = tmp_path_factory.mktemp("superbpe")
    return train_superbpe(corpus, VOCAB, out_dir=out, superword_fraction=0.3, workers=1, show_progress=False)


@pytest.fixture(scope="module")
def tok_dir(tok, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("saved")
    tok.save(out)
    return out


SAMPLES = {
    "en": "The quick brown fox jumps over the lazy dog.",
    "ko": "안녕하세요, 반갑습니다! 오늘 날씨가 좋습니다.",
    "ja": "私は学校に行きます。今日は天気がいいです。",
    "de": "Über die Straße läuft ein schönes Mädchen.",
    "es": "¿Qué tal, señor? El niño está aquí mañana.",
    "vi": "Tôi là người Việt Nam, chúng ta đang học tiếng Việt.",
    "code": CODE + "\tx = {'k': [1, 2]}  # comment\r\n",
    "latex": LATEX + " α² + β₂ ≥ ½ ∀x∈ℝ",
    "emoji": "Family: 👨‍👩‍👧‍👦 flags 🇰🇷🇩🇪 skin 👍🏽 !!",
    "control": "a\x00b\x01c\x1b[31m\x7f\u200b\ufeff\u2028end\t\n\r\n",
    "nfd": "e\u0301 a\u0308 \u1100\u1161\u11a8",  # decomposed é, ä and the Hangul syllable 각
    "spaces": "  leading   and trailing  \n\n\n  ",
    "specials": "<|user|>\nhi<|endofturn|>\n<|assistant|>\n<think>\n\n</think>\n\nok<|endofturn|>",
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_is_nfc(tok, name):
    text = SAMPLES[name]
    assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFC", text)


def test_surrogate_rule(tok):
    # Lone surrogates become U+FFFD; a high+low pair becomes the character it encodes.
    assert tok.decode(tok.encode("a\ud800b")) == "a\ufffdb"
    assert tok.decode(tok.encode("x\udfffy")) == "x\ufffdy"
    assert tok.decode(tok.encode("\ud83d\ude00!")) == "\U0001F600!"
    assert tok.encode("\ud83d\ude00") == tok.encode("\U0001F600")
    assert pretokenize.fix_surrogates("plain") == "plain"


def test_special_tokens_and_ids(tok):
    assert tok.pad_id == 0
    assert tok.special_ids == {s: i for i, s in enumerate(SPECIAL_TOKENS)}
    assert tok.eot_id == tok.token_to_id("<|endoftext|>")
    assert tok.eos_id == tok.token_to_id("<|endofturn|>")
    assert tok.vocab_size == VOCAB
    ids = tok.encode("<|user|>\nhi<|endofturn|>")
    assert ids[0] == tok.special_ids["<|user|>"] and ids[-1] == tok.eos_id
    assert tok.decode(ids, skip_special_tokens=True) == "\nhi"
    assert tok.id_to_token(0) == "<|pad|>"
    with pytest.raises(ValueError):
        tok.decode([VOCAB])


def test_stage2_constraints_hold(tok):
    stats = tok.train_stats
    assert stats.stage2_merges >= VOCAB - stats.transition > 0
    assert stats.stage2_refused_pairs > 0  # the corpus tempts it with 6-word phrases and "Answer: X"
    n_special = len(SPECIAL_TOKENS)
    superwords = 0
    for i in range(n_special, tok.vocab_size):
        data = tok.token_bytes(i)
        assert b": " not in data, (i, data)
        assert len(data.split()) <= 4, (i, data)
        superwords += b" " in data.strip()
    assert superwords > 20


def test_stage1_tokens_never_cross_words(tok):
    # Stage-1 tokens never contain a non-space followed by a space (what makes word-by-word replay exact).
    n_special = len(SPECIAL_TOKENS)
    for i in range(n_special + 256, tok.train_stats.transition):
        data = tok.token_bytes(i)
        assert b" " not in data.lstrip(b" ") or not data.strip(), data


def _replay(pieces: list[bytes], merges: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Reference: apply every merge in training order, left to right, to one pre-token."""
    for a, b in merges:
        out, j = [], 0
        while j < len(pieces):
            if j + 1 < len(pieces) and pieces[j] == a and pieces[j + 1] == b:
                out.append(a + b)
                j += 2
            else:
                out.append(pieces[j])
                j += 1
        pieces = out
    return pieces


def test_rank_order_encoding_reproduces_training_segmentation(tok, corpus, tok_dir):
    # The standard BPE encoder (merge ranks) must give what replaying the merges in training order gives.
    data = json.loads((tok_dir / "tokenizer.json").read_text())
    merges = [tuple(pretokenize.token_to_bytes(x) for x in (m if isinstance(m, list) else m.split(" ")))
              for m in data["model"]["merges"]]
    text = "".join(t for t, _ in corpus[::37])
    pieces = pretokenize.STAGE2_RE.findall(unicodedata.normalize("NFC", text))
    checked = 0
    for piece in sorted(set(pieces))[:400]:
        want = _replay([bytes([b]) for b in piece.encode()], merges)
        got = [tok.token_bytes(i) for i in tok.encode(piece)]
        assert got == want, piece
        checked += 1
    assert checked > 100


def test_saved_dir_loads_in_tokenizers_and_transformers(tok, tok_dir):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    files = {p.name for p in tok_dir.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= files
    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    again = KExaoneTokenizer.from_dir(tok_dir)
    assert again.vocab_size == tok.vocab_size == len(hf)
    for text in SAMPLES.values():
        ids = tok.encode(text)
        assert raw.encode(text, add_special_tokens=False).ids == ids
        assert hf.encode(text, add_special_tokens=False) == ids
        assert again.encode(text) == ids
        assert hf.decode(ids) == tok.decode(ids)
    assert hf.pad_token_id == 0 and hf.eos_token == "<|endofturn|>"
    assert tok.encode_batch(list(SAMPLES.values())) == [tok.encode(t) for t in SAMPLES.values()]


def test_training_is_deterministic(corpus, tmp_path):
    small = corpus[::3]
    a = train_superbpe(small, 900, superword_fraction=0.3, workers=1, show_progress=False)
    b = train_superbpe(small, 900, superword_fraction=0.3, workers=2, show_progress=False)
    assert a.tokenizer.to_str() == b.tokenizer.to_str()


def test_language_allocation_and_detection(tok):
    assert pretokenize.detect_language(SAMPLES["ko"]) == "ko"
    assert pretokenize.detect_language(SAMPLES["ja"]) == "ja"
    assert pretokenize.detect_language(SAMPLES["de"]) == "de"
    assert pretokenize.detect_language(SAMPLES["es"]) == "es"
    assert pretokenize.detect_language(SAMPLES["vi"]) == "vi"
    assert pretokenize.detect_language(SAMPLES["en"]) == "en"
    assert pretokenize.detect_language("1234 + 5 = ?") == "other"
    # Short lines (as in the synthetic corpus) still resolve by their few telling letters and words.
    assert pretokenize.detect_language("Hu Naigar sinh năm 1899.") == "vi"
    assert pretokenize.detect_language("Debel Rikrous wurde in Brouzotir geboren.") == "de"
    assert pretokenize.detect_language("Wi Treibak trabaja para Vashox.") == "es"
    per = tok.train_stats.stage2_merges_per_group
    total = sum(per.values())
    assert total == tok.train_stats.stage2_merges
    # en:ko:other = 2:3:1 (rounding: within one merge of the exact share)
    assert abs(per["en"] - total * 2 / 6) <= 1 and abs(per["ko"] - total * 3 / 6) <= 1
    assert set(tok.train_stats.bytes_per_language) >= {"en", "ko", "ja", "de", "es", "vi", "code", "stem"}


def test_plain_bpe_when_transition_equals_vocab(corpus):
    base = train_superbpe(corpus[::4], 700, transition=700, workers=1, show_progress=False)
    assert base.train_stats.stage2_merges == 0
    pre = json.loads(base.tokenizer.to_str())["pre_tokenizer"]["pretokenizers"][0]
    assert pre["pattern"]["Regex"] == pretokenize.STAGE1_PATTERN
    for i in range(len(SPECIAL_TOKENS), base.vocab_size):
        assert b" " not in base.token_bytes(i).lstrip(b" ") or not base.token_bytes(i).strip()


def test_superbpe_compresses_better_than_bpe(corpus):
    sub = corpus[::2]
    sup = train_superbpe(sub, 1200, superword_fraction=0.25, workers=1, show_progress=False)
    bpe = train_superbpe(sub, 1200, transition=1200, workers=1, show_progress=False)
    text = "".join(t for t, _ in corpus[1::2])
    assert len(sup.encode(text)) < 0.95 * len(bpe.encode(text))


def test_file_inputs_with_language_tags(tmp_path):
    (tmp_path / "a.txt").write_text("hello world again\nhello world again and again\n" * 50, encoding="utf-8")
    (tmp_path / "b.txt").write_text("안녕 세상 다시\n" * 50, encoding="utf-8")
    tok = train_superbpe([str(tmp_path / "a.txt") + ":en", tmp_path / "b.txt"], 400, workers=1,
                         show_progress=False)
    assert tok.train_stats.bytes_per_language.keys() == {"en", "ko"}
    tok2 = train_superbpe([str(tmp_path / "*.txt")], 400, workers=1, show_progress=False)
    assert tok2.tokenizer.to_str() == tok.tokenizer.to_str()


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        resolve_transition(100, 16, None, None)
    with pytest.raises(ValueError, match="either"):
        resolve_transition(1000, 16, 900, 0.2)
    with pytest.raises(ValueError, match="transition"):
        resolve_transition(1000, 16, 1001, None)
    assert resolve_transition(1000, 16, None, None) == 800
    with pytest.raises(FileNotFoundError):
        train_superbpe([tmp_path / "missing.txt"], 500, show_progress=False)
    with pytest.raises(ValueError, match="allocation"):
        train_superbpe(["some text"], 500, allocation={"xx": 1.0}, show_progress=False)
    with pytest.raises(FileNotFoundError):
        KExaoneTokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        KExaoneTokenizer.from_dir(tmp_path)


def test_loads_foreign_hf_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE(unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.train_from_iterator(["hello world"] * 20, trainers.BpeTrainer(vocab_size=60, special_tokens=["[UNK]", "[PAD]"],
                                                                     show_progress=False))
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]", "eos_token": "[UNK]"}))
    tok = KExaoneTokenizer.from_dir(tmp_path)
    assert tok.pad_id == hf.token_to_id("[PAD]")
    assert tok.eos_id == hf.token_to_id("[UNK]")
    assert tok.encode("hello world") == hf.encode("hello world").ids


def test_stage1_is_a_prefix_and_parts_equal_whole(corpus):
    from kexaone.tokenizer.superbpe import build_superbpe, count_pretokens, learn_stage1

    sub = corpus[::3]
    short = learn_stage1(sub, 300, show_progress=False)
    long = learn_stage1(sub, 500, show_progress=False)
    assert long[: len(short)] == short  # one long stage-1 run serves every transition
    counts, _ = count_pretokens(sub, workers=1, show_progress=False)
    parts = build_superbpe(long, counts, 900, superword_fraction=0.3, show_progress=False)
    whole = train_superbpe(sub, 900, superword_fraction=0.3, workers=1, show_progress=False)
    assert parts.tokenizer.to_str() == whole.tokenizer.to_str()


def test_mixed_language_documents_are_split_by_line():
    from kexaone.tokenizer.superbpe import _count_batch

    doc = "the cat sat on the mat\n고양이가 매트 위에 앉았다\nthe dog sat\n"
    counts, lang_bytes = _count_batch(([(doc, None)], ("en", "ko", "other"), True))
    assert lang_bytes == {"en": len(b"the cat sat on the mat\n") + len(b"the dog sat\n"),
                          "ko": len("고양이가 매트 위에 앉았다\n".encode())}
    assert counts[("the cat sat on the mat", "en")] == 1 and counts[("고양이가 매트 위에 앉았다", "ko")] == 1
    # Pre-tokens are those of the whole document (what the encoder sees), not of separate lines.
    assert sum(counts.values()) == len(pretokenize.STAGE2_RE.findall(doc))


def test_pickles_for_worker_processes(tok):
    import pickle

    again = pickle.loads(pickle.dumps(tok))
    assert again.encode(SAMPLES["ko"]) == tok.encode(SAMPLES["ko"])
    assert again.special_ids == tok.special_ids and again.chat_template == tok.chat_template
