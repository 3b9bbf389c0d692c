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
