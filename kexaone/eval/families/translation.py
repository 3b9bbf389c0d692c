"""Translation: `{"source", "reference", "src_lang", "tgt_lang"}`, scored with sacrebleu's chrF (the task score) and
BLEU, both at corpus level over all samples of the task; each sample also carries its sentence chrF.

BLEU tokenisation follows the target language: sacrebleu's "char" tokenizer for Japanese, Korean and Chinese
(their words are not space-separated; the mecab tokenizers would need extra packages), "13a" otherwise. The
built-in FLORES pairs are read from the evaluation corpora (kexaone.eval.families.builtins).
"""

from __future__ import annotations

from kexaone.eval.families.base import Family, load_items, reply_text

LANG_NAMES = {"ko": "Korean", "en": "English", "es": "Spanish", "de": "German", "ja": "Japanese",
              "vi": "Vietnamese", "zh": "Chinese", "fr": "French"}
CHAR_TOKENIZED = ("ja", "ko", "zh")


def translation_prompt(source: str, src: str, tgt: str) -> str:
    s, t = LANG_NAMES.get(src, src), LANG_NAMES.get(tgt, tgt)
    return (f"Translate the following {s} text into {t}. Reply with the {t} translation only, without notes.\n\n"
            f"{source}")


def clean_translation(text: str) -> str:
    """The translation in a reply: surrounding quotes and a leading "Translation:" label removed."""
    t = text.strip()
    for label in ("Translation:", "translation:", "번역:"):
        if t.startswith(label):
            t = t[len(label):].strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'":
        t = t[1:-1].strip()
    return t


class Translation(Family):
    name = "translation"
    fields = '{"source", "reference", "src_lang", "tgt_lang"}'
    default_max_tokens = 256
    metric = "chrF"

    def load(self, rows, source):
        keys = ("source", "reference", "src_lang", "tgt_lang")
        return load_items(rows, source, self.name, keys, lambda row, where: {k: str(row[k]) for k in keys})

    def run(self, items, ctx):
        import sacrebleu

        prompts = [translation_prompt(it["source"], it["src_lang"], it["tgt_lang"]) for it in items]
        replies = ctx.backend.chat_batch([[{"role": "user", "content": p}] for p in prompts],
                                         **ctx.gen_kwargs(self.default_max_tokens))
        out = []
        for it, p, rep in zip(items, prompts, replies):
            hyp = clean_translation(reply_text(rep))
            chrf = sacrebleu.sentence_chrf(hyp, [it["reference"]]).score
            out.append({"prompt": p, "response": reply_text(rep), "extracted": hyp, "reference": it["reference"],
                        "tgt_lang": it["tgt_lang"], "score": chrf})
        return out

    def summarize(self, records, ctx):
        import sacrebleu

        by_item: dict[str, dict] = {}
        for r in records:  # corpus scores use the first repeat of each item
            by_item.setdefault(r["id"], r)
        recs = list(by_item.values())
        hyps = [r["extracted"] for r in recs]
        refs = [r["reference"] for r in recs]
        langs = {r["tgt_lang"] for r in recs}
        tok = "char" if langs and langs <= set(CHAR_TOKENIZED) else "13a"
        chrf = sacrebleu.corpus_chrf(hyps, [refs]).score
        bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tok).score
        sent = [float(r["score"]) for r in recs]
        from kexaone.eval.results import mean_stderr

        _, se = mean_stderr(sent)
        return {"score": chrf, "metric": "chrF (corpus, sacrebleu)", "n": len(recs), "stderr": se,
                "bleu": bleu, "bleu_tokenize": tok}
