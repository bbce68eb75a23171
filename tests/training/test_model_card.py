"""The model card make_default writes: every evaluated method per set, the peer, the PROMPT metrics."""

from __future__ import annotations

from mambaserve.training.make_default import write_model_card


def test_model_card_lists_methods_peer_and_prompt_metrics(tmp_path):
    block = {"wer": 0.2, "cer": 0.05}
    report = {
        "date": "2026-12-08",
        "machine": "x86_64, 2 threads",
        "commit": "abc1234",
        "timings": {"training": 3900.0},
        "data": {"splits": {"train": {"items": 30000, "hours": 23.3}}},
        "parameters": {"total": 1.5e6, "encoder": 1.0e6, "decoder": 0.5e6},
        "results": {
            "test_espeak": {"n": 100, "ctc_lm": block, "ctc_greedy": {"wer": 0.4, "cer": 0.1}},
            "test_hotwords": {
                "n": 100,
                "ctc_lm": {
                    **block,
                    "name_recall": 0.9,
                    "name_recall_without_prompt": 0.02,
                    "distractor_insertion_rate": 0.03,
                },
            },
        },
        "pocketsphinx": {"test_espeak": {"n": 100, "wer": 0.95, "cer": 0.65}},
        "config": {
            "model": {"decoding": {"method": "ctc_lm", "beam_size": 4, "ctc_weight": 0.5, "lm_weight": 2.0}}
        },
    }
    text = write_model_card(tmp_path, report).read_text()
    assert "| test_espeak (100) | mambaserve ctc_lm | 20.0 % | 5.0 % |" in text
    assert "| test_espeak (100) | mambaserve ctc_greedy | 40.0 % | 10.0 % |" in text
    assert "| test_espeak (100) | pocketsphinx en-us | 95.0 % | 65.0 % |" in text
    assert "name recall 90.0 % with the prompt" in text and "2.0 % without" in text
    assert "The served default (`config.json` → `decoding`) is `ctc_lm`" in text
