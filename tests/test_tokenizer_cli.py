"""`kexaone tokenizer train/eval/encode` end to end on tiny files."""

from __future__ import annotations

import json

import pytest

from kexaone.cli import main

EN = "in the middle of the night we walked along the river and talked about the weather\n"
KO = "우리는 밤중에 강을 따라 걸으며 날씨에 대해 이야기했습니다\n"


@pytest.fixture()
def files(tmp_path):
    en, ko = tmp_path / "en.txt", tmp_path / "ko.txt"
    en.write_text(EN * 80 + "the night was long and the river was cold\n" * 40, encoding="utf-8")
    ko.write_text(KO * 80, encoding="utf-8")
    return tmp_path, en, ko


def test_train_eval_encode(files, capsys):
    tmp, en, ko = files
    assert main(["tokenizer", "train", "--input", f"{en}:en", str(ko), "--vocab-size", "420", "--out",
                 str(tmp / "sup"), "--superword-fraction", "0.3", "--workers", "1", "--quiet"]) == 0
    assert main(["tokenizer", "train", "--input", str(tmp / "*.txt"), "--vocab-size", "420", "--transition", "420",
                 "--out", str(tmp / "bpe"), "--quiet"]) == 0
    stats = json.loads((tmp / "sup" / "superbpe_training.json").read_text())
    assert stats["vocab_size"] <= 420 and stats["stage2_merges"] > 0  # a tiny corpus runs out of pairs
    assert stats["bytes_per_language"] == {"en": len(en.read_bytes()), "ko": len(ko.read_bytes())}
    capsys.readouterr()
    rc = main(["tokenizer", "eval", "--tokenizer", str(tmp / "sup"), "--baseline", str(tmp / "bpe"), "--input",
               str(en), f"korean={ko}", "--json", str(tmp / "rows.json")])
    assert rc == 0
    rows = json.loads((tmp / "rows.json").read_text())
    assert [r["name"] for r in rows] == ["en", "korean"]
    for r in rows:
        assert r["round_trip_ok"] and r["baseline_round_trip_ok"]
        assert r["ratio"] == pytest.approx(r["bytes_per_token"] / r["baseline_bytes_per_token"])
    assert rows[0]["ratio"] > 1.0  # trained on exactly this text: superwords must pay here
    assert "| en |" in capsys.readouterr().out
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp / "sup"), "the night"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "".join(out["tokens"]) == "the night"


def test_errors_are_reported(tmp_path, capsys):
    assert main(["tokenizer", "train", "--input", str(tmp_path / "missing.txt"), "--vocab-size", "400", "--out",
                 str(tmp_path / "o"), "--quiet"]) == 2
    assert "missing.txt" in capsys.readouterr().err
    assert main(["tokenizer", "eval", "--tokenizer", str(tmp_path), "--input", str(tmp_path)]) == 2
    with pytest.raises(SystemExit):
        main(["tokenizer", "train", "--input", "x", "--vocab-size", "400", "--out", "o", "--allocation", "en2"])


# ---------------------------------------------------------------------------------------------- input formats
# Every input format is read by kexaone.data.sources: the tokenizer must see each record's text, never the bytes of
# the container. The check: the bytes the trainer counted per language add up to the documents' text exactly.
DOCS = [EN.strip(), KO.strip(), "the river was cold and the night was long"] * 30


def _train(tmp_path, *inputs: str, extra: tuple[str, ...] = ()) -> int:
    return main(["tokenizer", "train", "--input", *inputs, "--vocab-size", "400", "--out", str(tmp_path / "tok"),
                 "--superword-fraction", "0.3", "--workers", "1", "--quiet", *extra])


def _counted_bytes(tmp_path) -> int:
    stats = json.loads((tmp_path / "tok" / "superbpe_training.json").read_text())
    return sum(stats["bytes_per_language"].values())


def test_train_reads_the_text_column_of_a_parquet_file(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(DOCS))), "body": DOCS}), tmp_path / "d.parquet")
    assert _train(tmp_path, str(tmp_path / "d.parquet")) == 2
    err = capsys.readouterr().err
    assert "d.parquet" in err and "no column 'text'" in err and "'body'" in err and "--text-field" in err
    assert _train(tmp_path, str(tmp_path / "d.parquet"), extra=("--text-field", "body")) == 0
    assert _counted_bytes(tmp_path) == sum(len(d.encode("utf-8")) for d in DOCS)


def test_train_names_the_jsonl_record_without_the_text_field(tmp_path, capsys):
    f = tmp_path / "d.jsonl"
    rows = [{"content": d, "meta": i} for i, d in enumerate(DOCS)]
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    assert _train(tmp_path, str(f)) == 2
    err = capsys.readouterr().err
    assert f"{f}:1: record has no 'text' field (fields: ['content', 'meta'])" in err and "--text-field" in err
    assert not (tmp_path / "tok").exists()
    assert _train(tmp_path, str(f), extra=("--text-field", "content")) == 0
    assert _counted_bytes(tmp_path) == sum(len(d.encode("utf-8")) for d in DOCS)


def test_train_reads_a_datasets_directory(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": DOCS, "n": list(range(len(DOCS)))}).save_to_disk(str(tmp_path / "hfds"))
    assert _train(tmp_path, str(tmp_path / "hfds")) == 0
    assert _counted_bytes(tmp_path) == sum(len(d.encode("utf-8")) for d in DOCS)
    assert _train(tmp_path, str(tmp_path / "hfds"), extra=("--text-field", "body")) == 2
    assert "no column 'body'" in capsys.readouterr().err


def test_eval_measures_the_documents_text_not_the_json_lines(tmp_path):
    from kexaone.tokenizer import KExaoneTokenizer
    from kexaone.tokenizer.superbpe import train_superbpe

    train_superbpe([(d, None) for d in DOCS], 400, out_dir=tmp_path / "tok", workers=1, show_progress=False)
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"text": d, "domain": "x"}, ensure_ascii=False) + "\n" for d in DOCS[:3]),
                 encoding="utf-8")
    assert main(["tokenizer", "eval", "--tokenizer", str(tmp_path / "tok"), "--input", str(f), "--json",
                 str(tmp_path / "rows.json")]) == 0
    (row,) = json.loads((tmp_path / "rows.json").read_text())
    tok = KExaoneTokenizer.from_dir(tmp_path / "tok")
    assert row["name"] == "d"
    assert row["bytes"] == sum(len(d.encode("utf-8")) for d in DOCS[:3])
    assert row["tokens"] == sum(len(tok.encode(d)) for d in DOCS[:3])
