"""Training behaviour: learning, exact resume, DDP, checkpoints, LoRA, evaluation CLI, export of the scan."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
from mambaserve.model.checkpoint import Checkpoint, average_checkpoints, load_checkpoint, save_checkpoint
from mambaserve.model.config import MambaConfig, ModelConfig
from mambaserve.model.network import SpeechMamba
from mambaserve.model.recognizer import Recognizer
from mambaserve.model.scoring import score
from mambaserve.model.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_tokenizer
from mambaserve.training.dataset import ManifestDataset, collate_audio
from mambaserve.training.train import TRAINING_STATE, Trainer, feature_statistics

REPO = helpers.ROOT


def test_tokenizer_round_trip_and_special_ids(tiny_corpus: Path) -> None:
    items = ManifestDataset(tiny_corpus / "train.jsonl").items
    tok = train_tokenizer([it["text"] for it in items], vocab_size=64)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (PAD_ID, BOS_ID, EOS_ID) == (0, 2, 3)
    for text in [it["text"] for it in items] + ["Zyxquor, the UNSEEN word!", "it's 42"]:
        ids = tok.encode(text)
        assert UNK_ID not in ids and min(ids) > EOS_ID
        from mambaserve.model.text_norm import normalize_text

        assert tok.decode(ids) == normalize_text(text)
    path = Path(tiny_corpus) / "tok.model"
    tok.save(path)
    assert Tokenizer.load(path).encode("hello world") == tok.encode("hello world")


def test_tiny_batch_overfits(tiny_corpus: Path) -> None:
    """Two utterances, a small model, 80 steps: the loss collapses and greedy decoding reproduces the text."""
    torch.manual_seed(0)
    ds = ManifestDataset(tiny_corpus / "train.jsonl")
    tok = train_tokenizer([it["text"] for it in ds.items], vocab_size=64)
    cfg = ModelConfig(vocab_size=tok.vocab_size)
    cfg.encoder.mamba = MambaConfig(d_model=48, n_layers=2, d_state=8)
    cfg.decoder.mamba = MambaConfig(d_model=48, n_layers=2, d_state=8)
    cfg.encoder.dropout = cfg.decoder.dropout = 0.0
    model = SpeechMamba(cfg)
    model.features.set_statistics(*feature_statistics(model, ds, 24, 0))
    items = [ds[2], ds[3]]
    batch = collate_audio(items)
    feats, lengths = model.features(batch["audio"], batch["audio_lengths"])
    targets = [tok.encode(t) for t in batch["texts"]]
    opt = torch.optim.AdamW(model.parameters(), 4e-3)
    first = None
    for _ in range(80):
        out = model.compute_loss(feats, lengths, targets, [[], []], ctc_weight=0.3, label_smoothing=0.0)
        first = first if first is not None else float(out["loss"])
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
    assert float(out["loss"]) < 0.05 * first
    hyps = Recognizer(Checkpoint(model.eval(), tok, cfg, tiny_corpus)).transcribe(
        [it["audio"].numpy() for it in items]
    )
    assert score(batch["texts"], hyps).cer < 0.1, hyps


def test_resume_continues_exactly(tiny_train_config) -> None:
    """Save at step 2, take step 3; a resumed trainer's step 3 has the same loss, bit for bit.

    Batches come from DataLoader workers, which read ahead: the stream counts what was consumed."""
    config = tiny_train_config
    config.prompt_augment = 0.5  # exercise the python RNG too
    config.data_workers = 2
    first = Trainer(config)
    batches = iter(first.stream)
    for _ in range(2):
        first.train_step(next(batches))
    first.save()
    expected = first.train_step(next(batches))
    resumed = Trainer(config, resume=True)
    assert resumed.schedule.step_count == 2
    got = resumed.train_step(next(iter(resumed.stream)))
    for key in ("loss", "ctc", "ce", "lr"):
        assert got[key] == expected[key], key


class _Payload:
    """What a tampered training_state.pt could carry: unpickling it calls open(marker, "w")."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_resume_reads_plain_state_and_refuses_a_pickle_payload(tiny_train_config, tmp_path: Path) -> None:
    """--resume loads training_state.pt with weights_only=True: a checkpoint resumes, and a state file
    carrying a pickled callable is refused before anything in it runs."""
    config = tiny_train_config
    trainer = Trainer(config)
    trainer.train_step(next(iter(trainer.stream)))
    path = trainer.save()
    state_file = path / TRAINING_STATE
    state = torch.load(state_file, map_location="cpu", weights_only=True)  # tensors and plain values
    assert state["schedule"]["step_count"] == 1
    assert Trainer(config, resume=True).schedule.step_count == 1

    marker = tmp_path / "payload-ran"
    torch.save({**state, "schedule": _Payload(marker)}, state_file)
    torch.load(state_file, weights_only=False)  # the payload is live: full unpickling runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError, match="refused to load"):
        Trainer(config, resume=True)
    assert not marker.exists()


def test_fit_writes_averaged_final_checkpoint(tiny_train_config) -> None:
    config = tiny_train_config
    config.max_steps, config.save_every, config.average_last = 6, 2, 3
    trainer = Trainer(config)
    final = trainer.fit()
    run = Path(config.out_dir)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_0000002",
        "step_0000004",
        "step_0000006",
    ]
    averaged = average_checkpoints(sorted((run / "checkpoints").iterdir()))
    final_model = load_checkpoint(final).model
    for (name, a), b in zip(final_model.state_dict().items(), averaged.state_dict().values()):
        assert torch.equal(a, b), name
    metrics = json.loads((run / "final_metrics.json").read_text())
    assert set(metrics) == {"wer", "cer", "ctc_wer", "ctc_cer", "decoder_ce"}
    assert any((run / "tb").iterdir())


def test_checkpoint_round_trip_and_parts(
    tmp_path: Path, tiny_model_config: ModelConfig, tiny_corpus: Path
) -> None:
    tok = train_tokenizer(
        [it["text"] for it in ManifestDataset(tiny_corpus / "train.jsonl").items], vocab_size=40
    )
    tiny_model_config.vocab_size = tok.vocab_size
    torch.manual_seed(0)
    model = SpeechMamba(tiny_model_config).eval()
    save_checkpoint(tmp_path / "full", model, tok, tiny_model_config)
    loaded = load_checkpoint(tmp_path / "full").model
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert loaded.decoder.head.weight is loaded.decoder.embed.weight  # still tied after loading
    save_checkpoint(tmp_path / "dec", model, tok, tiny_model_config, parts=("decoder",))
    part = load_checkpoint(tmp_path / "dec").model
    assert torch.equal(part.decoder.embed.weight, model.decoder.embed.weight)
    assert list(tmp_path.glob(".*")) == []  # no temporary directories left behind
    assert (
        2 * (tmp_path / "dec" / "model.safetensors").stat().st_size
        < (tmp_path / "full" / "model.safetensors").stat().st_size
    )


DDP_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys
    import torch
    from mambaserve.training.train import Trainer, load_config
    config = load_config(sys.argv[1], sys.argv[3:])
    trainer = Trainer(config)
    before = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in trainer.model.parameters())).hexdigest()
    batch = next(iter(trainer.stream))
    trainer.train_step(batch)
    after = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in trainer.model.parameters())).hexdigest()
    rng = lambda: hashlib.sha256(torch.get_rng_state().numpy().tobytes() + repr(trainer.rng.getstate()).encode()).hexdigest()
    saved = rng()
    trainer.save()  # every rank's random state goes into the checkpoint
    trainer = Trainer(config, resume=True)
    out = {"rank": trainer.dist.rank, "world": trainer.dist.world, "ids": batch["ids"], "before": before, "after": after,
           "rng_saved": saved, "rng_resumed": rng()}
    with open(os.path.join(sys.argv[2], f"rank{trainer.dist.rank}.json"), "w") as f:
        json.dump(out, f)
    torch.distributed.destroy_process_group()
    """
)


def test_two_process_ddp_step(tiny_train_config, tmp_path: Path) -> None:
    """torchrun with 2 gloo processes: different data per rank, identical weights after the step."""
    from mambaserve.training.train import TrainConfig

    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_SCRIPT)
    config: TrainConfig = tiny_train_config
    yaml_path = tmp_path / "config.yaml"
    import yaml

    yaml_path.write_text(yaml.safe_dump(json.loads(json.dumps(config.to_dict()))))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        str(script),
        str(yaml_path),
        str(tmp_path),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**_env(), "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert (r0["world"], r1["world"]) == (2, 2)
    assert not set(r0["ids"]) & set(r1["ids"])
    assert r0["before"] == r1["before"]  # same initialisation broadcast
    assert r0["after"] == r1["after"] != r0["before"]  # gradients were averaged, weights moved together
    # --resume: each rank continues from its own random state, not rank 0's (augmentation differs per rank)
    assert r0["rng_saved"] != r1["rng_saved"]
    assert (r0["rng_resumed"], r1["rng_resumed"]) == (r0["rng_saved"], r1["rng_saved"])


def test_configs_are_checked_strictly(tiny_train_config, tmp_path: Path) -> None:
    data = ModelConfig().to_dict()
    data["features"]["n_mels"] = "80"
    with pytest.raises(ValueError, match=r'features\.n_mels.*"int".*"80"'):
        ModelConfig.from_dict(data)
    data["features"]["n_mels"] = 80
    data["decoder"]["dropout"] = 0  # an int is a fine float
    assert ModelConfig.from_dict(data).decoder.dropout == 0.0
    data["decoding"]["beam"] = 4
    with pytest.raises(ValueError, match="beam"):
        ModelConfig.from_dict(data)
    from mambaserve.training.train import load_config

    with pytest.raises(ValueError, match="max_steps"):
        load_config(None, ["max_steps='80'"])
    with pytest.raises(ValueError, match="warmup_step"):
        load_config(None, ["warmup_step=5"])
    config = load_config(None, ["lr=1e-3", "model.bridge.kind=perceiver", "betas=[0.9, 0.95]"])
    assert (config.lr, config.model.bridge.kind, config.betas) == (1e-3, "perceiver", (0.9, 0.95))


def test_lora_adapters_load_and_merge(tiny_train_config, tiny_corpus: Path, tmp_path: Path) -> None:
    from mambaserve.training.lora import LoraSettings, finetune, load_adapters

    base = Trainer(tiny_train_config)
    base_dir = base.save()
    adapter, merged = finetune(
        base_dir,
        tiny_corpus / "train.jsonl",
        tmp_path / "lora",
        steps=4,
        lr=5e-2,
        settings=LoraSettings(rank=4, alpha=8, dropout=0.0),
        progress=False,
    )
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()
    assert (adapter / "adapter_model.safetensors").stat().st_size < (
        Path(base_dir) / "model.safetensors"
    ).stat().st_size
    adapted = load_adapters(base_dir, adapter).model
    merged_model = load_checkpoint(merged).model
    plain = load_checkpoint(base_dir).model
    feats = torch.randn(2, 64, 80)
    with torch.no_grad():
        enc, _ = plain.encode(feats, torch.tensor([64, 48]))
        ids = [[5, 6, 7], [8, 9]]
        a, _ = adapted.decoder.prefill(enc.prefix, enc.prefix_lengths, ids)
        m, _ = merged_model.decoder.prefill(enc.prefix, enc.prefix_lengths, ids)
        p, _ = plain.decoder.prefill(enc.prefix, enc.prefix_lengths, ids)
    assert float((a - m).norm() / m.norm()) < 1e-5  # merging changes nothing
    assert float((a - p).norm() / p.norm()) > 1e-4  # and the adapters did change the decoder
    # The encoder is untouched by LoRA fine-tuning.
    for (name, x), y in zip(plain.encoder.state_dict().items(), merged_model.encoder.state_dict().values()):
        assert torch.equal(x, y), name


def test_evaluate_cli_prints_json_last(tiny_train_config, tiny_corpus: Path) -> None:
    path = Trainer(tiny_train_config).save()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mambaserve.training.evaluate",
            "--checkpoint",
            str(path),
            "--manifest",
            str(tiny_corpus / "test_hotwords.jsonl"),
            "--limit",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n"] == 3
    for method in ("greedy", "beam", "ctc_greedy"):
        assert result[method]["cer"] >= 0.0 and result[method]["rtfx"] > 0
    assert {"wer", "cer"} <= set(result)
    assert "rare_word_error_rate_without_prompt" in result["greedy"]


@pytest.mark.parametrize("trace_len", [23])
def test_exportable_scan_runs_at_other_lengths(tmp_path: Path, trace_len: int) -> None:
    """The scan exported once works in ONNX Runtime at lengths other than the trace length."""
    import onnxruntime as ort
    from mambaserve.kernels.scan_cpu import selective_scan_cpu

    class Scan(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.A = torch.nn.Parameter(-torch.rand(6, 5))
            self.D = torch.nn.Parameter(torch.randn(6))
            self.bias = torch.nn.Parameter(torch.randn(6))

        def forward(self, u, delta, B, C, z, h0):
            return selective_scan_cpu(u, delta, self.A, B, C, self.D, z, self.bias, True, True, h0)

    module = Scan().requires_grad_(False)

    def make(n: int, seed: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        shapes = [(2, 6, n), (2, 6, n), (2, 5, n), (2, 5, n), (2, 6, n), (2, 6, 5)]
        return tuple(torch.randn(*shape, generator=g) for shape in shapes)

    length = torch.export.Dim("length", min=2)
    names = ["u", "delta", "B", "C", "z", "h0"]
    torch.onnx.export(
        module,
        make(trace_len, 0),
        tmp_path / "scan.onnx",
        dynamo=True,
        input_names=names,
        dynamic_shapes=(*({2: length} for _ in range(5)), {}),
    )
    session = ort.InferenceSession(str(tmp_path / "scan.onnx"))
    for n in (7, 64):
        args = make(n, n)
        y, h = session.run(None, {k: v.numpy() for k, v in zip(names, args)})
        ref_y, ref_h = module(*[a.double() for a in args])
        assert y.shape[-1] == n
        assert np.abs(y - ref_y.numpy()).max() / np.abs(ref_y.numpy()).max() < 1e-5
        assert np.abs(h - ref_h.numpy()).max() / np.abs(ref_h.numpy()).max() < 1e-5


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONWARNINGS": "ignore"}
