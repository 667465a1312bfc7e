"""Models of real architectures (Llama, Qwen2, Mistral, Gemma, Mixtral, Qwen2-MoE), built from their configs with
random weights by ``alignkit init`` into local folders, load and train through alignkit like any checkpoint."""

from __future__ import annotations

import json

import pytest

from alignkit.cli import main
from alignkit.scratch import ARCHITECTURES, init_model

pytestmark = pytest.mark.usefixtures("one_thread")
LINES = [f"what is {a} plus {b}? it is {a + b}." for a in range(2, 9) for b in range(3, 7)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "corpus.txt").write_text("\n\n".join(LINES))
    (folder / "sft.jsonl").write_text("".join(json.dumps({"prompt": f"what is {a} plus {b}?", "response": f"it is {a + b}."})
                                              + "\n" for a in range(2, 9) for b in range(3, 7)))
    return folder


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architecture_from_a_local_folder_learns_and_round_trips(arch, corpus, tmp_path):
    """Loaded through alignkit's own loaders, a few SFT steps on one batch halve its loss; saved by alignkit and
    loaded again, the model gives the same logits."""
    import torch

    from alignkit.config import DataConfig, ModelConfig
    from alignkit.data.collate import pad_batch
    from alignkit.data.loading import load_examples
    from alignkit.data.prepare import tokenize_sft
    from alignkit.models import load_causal_lm, load_tokenizer, save_model
    from alignkit.recipes.sft import sft_step_loss

    folder = init_model(str(corpus / "corpus.txt"), tmp_path / arch, arch, vocab_size=300, hidden=32, layers=2,
                        heads=4, kv_heads=2, max_positions=64)
    assert json.loads((folder / "config.json").read_text())["model_type"] == arch
    cfg = ModelConfig(name_or_path=str(folder), device="cpu")
    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg, tokenizer)
    rows, _ = tokenize_sft(load_examples(str(corpus / "sft.jsonl"), "sft")[:8], tokenizer, DataConfig(max_length=48), "x")
    batch = pad_batch(rows, tokenizer.pad_token_id)
    denominator = batch.loss_mask[:, 1:].sum()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss, _ = sft_step_loss(model, batch, denominator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    save_model(model, tokenizer, tmp_path / "saved")
    again = load_causal_lm(ModelConfig(name_or_path=str(tmp_path / "saved"), device="cpu"), tokenizer).eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=batch.input_ids).logits, again(input_ids=batch.input_ids).logits)


def test_init_then_sft_from_the_command_line(corpus, tmp_path, capsys):
    """``alignkit init`` builds a model folder from a corpus; ``alignkit sft`` trains it (its loss falls); a second
    init into the same folder is refused."""
    assert main(["init", str(corpus / "corpus.txt"), "--out", str(tmp_path / "m"), "--arch", "qwen2",
                 "--vocab-size", "300", "--hidden", "32", "--layers", "2", "--heads", "2"]) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["hidden_size"] == 32
    assert main(["sft", f"model.name_or_path={tmp_path / 'm'}", "model.device=cpu", f"data.train={corpus / 'sft.jsonl'}",
                 "data.eval_fraction=0.25", "data.cache_tokenized=false", "train.max_steps=8", "train.batch_size=8",
                 "train.lr=1e-2", "train.warmup_steps=0", f"run.output_dir={tmp_path / 'run'}", "run.progress=false",
                 "run.num_samples=1", "run.sample_max_new_tokens=4"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "training_metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/train"] for r in rows if "loss/train" in r]
    assert losses[-1] < 0.75 * losses[0], losses  # measured: 5.58 -> 3.92
    assert main(["init", str(corpus / "corpus.txt"), "--out", str(tmp_path / "m")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
