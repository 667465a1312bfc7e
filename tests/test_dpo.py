"""DPO / KTO: the one-forward trick, reference handling, and that each recipe improves the demo's gold score."""

import json

import pytest
import torch
from torch.testing import assert_close

from alignkit.config import ConfigError, DPOConfig, KTOConfig, ModelConfig, validate
from alignkit.data.collate import pad_sequences
from alignkit.data.loading import load_examples
from alignkit.data.prepare import tokenize_pairs
from alignkit.demo.assets import demo_data
from alignkit.models import load_causal_lm, load_reference, reference_logps
from alignkit.ops import sequence_logps
from alignkit.recipes import dpo as dpo_recipe
from alignkit.recipes.kto import mismatched


@pytest.fixture(scope="module")
def pairs(demo_tokenizer):
    examples = load_examples(str(demo_data("prefs")), "preference")[:6]
    rows, _ = tokenize_pairs(examples, demo_tokenizer, DPOConfig().data, "test")
    return rows


def scores(model, rows, pad_id):
    batch = pad_sequences(rows, range(len(rows)), pad_id)
    return sequence_logps(model, batch.input_ids, batch.attention_mask, batch.position_ids, batch.loss_mask)


def test_concatenated_forward_equals_two_forwards(demo_sft, demo_tokenizer, pairs):
    model = load_causal_lm(ModelConfig(name_or_path=str(demo_sft), device="cpu"), demo_tokenizer)
    pad = demo_tokenizer.pad_token_id
    batch = dpo_recipe.pair_batch(pairs, list(range(len(pairs))), pad)
    with torch.no_grad():
        both, lengths = sequence_logps(model, batch.input_ids, batch.attention_mask, batch.position_ids,
                                       batch.loss_mask)
        chosen, chosen_len = scores(model, [p.chosen for p in pairs], pad)
        rejected, _ = scores(model, [p.rejected for p in pairs], pad)
    assert_close(dpo_recipe.split_pairs(both)[0], chosen)
    assert_close(dpo_recipe.split_pairs(both)[1], rejected)
    assert_close(dpo_recipe.split_pairs(lengths)[0], chosen_len)
    # the response mask counts exactly the chosen response's tokens (+ end marker)
    assert chosen_len[0].item() == sum(pairs[0].chosen.loss_mask)


def test_cached_and_on_the_fly_reference_are_identical(demo_sft, demo_tokenizer, pairs):
    cfg = ModelConfig(name_or_path=str(demo_sft), device="cpu")
    policy = load_causal_lm(cfg, demo_tokenizer)
    reference = load_reference(cfg, None, policy, demo_tokenizer, torch.device("cpu"))
    pad = demo_tokenizer.pad_token_id
    cached = reference_logps(reference, [p.chosen for p in pairs], pad, batch_size=4, device=torch.device("cpu"))
    batch = dpo_recipe.pair_batch(pairs, [2, 0, 5], pad)
    on_the_fly = dpo_recipe.reference_for(None, "train", reference, batch)
    from_cache = dpo_recipe.reference_for({"train_chosen": cached, "train_rejected": cached}, "train", None, batch)
    assert_close(on_the_fly[0], from_cache[0])


def test_lora_reference_is_the_base_model(demo_sft, demo_tokenizer, pairs):
    base = load_causal_lm(ModelConfig(name_or_path=str(demo_sft), device="cpu"), demo_tokenizer)
    lora_cfg = ModelConfig(name_or_path=str(demo_sft), device="cpu", adapter="lora", lora_r=4)
    policy = load_causal_lm(lora_cfg, demo_tokenizer)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # the adapter now changes the outputs
    reference = load_reference(lora_cfg, None, policy, demo_tokenizer, torch.device("cpu"))
    assert reference.model is None  # no second copy of the weights
    pad = demo_tokenizer.pad_token_id
    batch = dpo_recipe.pair_batch(pairs, list(range(len(pairs))), pad)
    with torch.no_grad():
        expected = sequence_logps(base, batch.input_ids, batch.attention_mask, batch.position_ids, batch.loss_mask)[0]
        adapted = sequence_logps(policy, batch.input_ids, batch.attention_mask, batch.position_ids, batch.loss_mask)[0]
    policy.train()  # as in the training loop: the reference pass must hand the policy back in this mode
    assert_close(reference.sequence_logps(batch)[0], expected)
    assert (adapted - expected).abs().max() > 1e-3
    # the reference pass disabled the adapter only inside it: the policy is back in training mode and adapted
    assert policy.training
    policy.eval()
    with torch.no_grad():
        after = sequence_logps(policy, batch.input_ids, batch.attention_mask, batch.position_ids, batch.loss_mask)[0]
    assert_close(after, adapted)


def test_packed_pairs_give_the_padded_loss_and_log_probs(demo_sft, demo_tokenizer, pairs):
    """DPO on packed rows (no padding between sequences, positions restarting) equals DPO on padded rows: the
    summed log-probs per sequence, hence the loss and its gradient."""
    model = load_causal_lm(ModelConfig(name_or_path=str(demo_sft), device="cpu"), demo_tokenizer)
    cfg, pad, idx = DPOConfig(), demo_tokenizer.pad_token_id, list(range(len(pairs)))
    padded = dpo_recipe.pair_batch(pairs, idx, pad)
    packed = dpo_recipe.pair_batch(pairs, idx, pad, row_length=128)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]  # something was actually packed
    assert packed.attention_mask is None and packed.segments.max().item() == 2 * len(pairs) - 1
    ref = (torch.full((len(pairs),), -20.0), torch.full((len(pairs),), -25.0))
    losses, grads = [], []
    for batch in (padded, packed):
        model.zero_grad()
        loss, stats = dpo_recipe.pair_loss(cfg, model, batch, ref)
        loss.sum().backward()
        losses.append((loss.detach(), stats["logps_chosen"], stats["logps_rejected"]))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    for a, b in zip(*losses):
        assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_packed_sequences_for_kto_and_reward_models(demo_sft, demo_rm, demo_tokenizer, pairs):
    """KTO's summed log-probs and a reward model's scores (read at each sequence's last token) are the same
    packed as padded."""
    from alignkit.data.collate import pad_rankings
    from alignkit.data.prepare import RankRow, tokenize_unpaired
    from alignkit.models import load_reward_model
    from alignkit.recipes import kto as kto_recipe
    from alignkit.recipes import rm as rm_recipe

    pad = demo_tokenizer.pad_token_id
    model = load_causal_lm(ModelConfig(name_or_path=str(demo_sft), device="cpu"), demo_tokenizer)
    examples = load_examples(str(demo_data("kto")), "unpaired")[:6]
    rows, _ = tokenize_unpaired(examples, demo_tokenizer, KTOConfig().data, "t")
    sequences = [r.sequence for r in rows]
    with torch.no_grad():
        padded = kto_recipe.policy_logps(model, pad_sequences(sequences, range(6), pad))
        packed = kto_recipe.policy_logps(model, pad_sequences(sequences, range(6), pad, pack_length=100))
    assert_close(packed, padded, rtol=1e-5, atol=1e-5)

    rm = load_reward_model(ModelConfig(name_or_path=str(demo_rm), device="cpu"), demo_tokenizer)
    lists = [RankRow(responses=(p.chosen, p.rejected), margin=None) for p in pairs]
    with torch.no_grad():
        padded_r, valid = rm_recipe.list_rewards(rm, pad_rankings(lists, range(len(lists)), pad))
        packed_batch = pad_rankings(lists, range(len(lists)), pad, pack_length=128)
        packed_r, packed_valid = rm_recipe.list_rewards(rm, packed_batch)
    assert packed_batch.input_ids.shape[0] < 2 * len(lists)
    assert_close(packed_r, padded_r, rtol=1e-5, atol=1e-5)
    assert torch.equal(valid, packed_valid)


def test_kto_mismatched_pairs_take_the_next_completion(demo_tokenizer):
    from alignkit.data.prepare import tokenize_unpaired

    examples = load_examples(str(demo_data("kto")), "unpaired")[:3]
    rows, _ = tokenize_unpaired(examples, demo_tokenizer, KTOConfig().data, "t")
    kl = mismatched(rows, 512)
    text = demo_tokenizer.decode(kl[0].input_ids)
    assert examples[0].prompt[-1].content in text and examples[1].completion[-1].content in text
    masked = demo_tokenizer.decode([i for i, m in zip(kl[0].input_ids, kl[0].loss_mask) if m])
    assert masked.startswith(examples[1].completion[-1].content)


def gold_after(summary_dir):
    from alignkit.demo.run import score_model

    return score_model(str(summary_dir / "final"), n_prompts=100)


@pytest.fixture(scope="module")
def sft_gold(demo_sft):
    from alignkit.demo.run import score_model

    return score_model(str(demo_sft), n_prompts=100)["gold"]


def demo_run(recipe, tmp_path, name, **sections):
    from alignkit.demo.run import DEMO_STAGES, stage_config

    cfg = stage_config(recipe, tmp_path / name, fast=True, **sections)
    DEMO_STAGES[recipe].train(cfg)
    return json.loads((tmp_path / name / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("recipe,sections", [  # SimPO: the same loop; its loss is hand-tested, the demo runs it
    ("dpo", {}),
    ("kto", {}),
])
def test_preference_recipe_raises_gold_over_sft(recipe, sections, tmp_path, sft_gold):
    summary = demo_run(recipe, tmp_path, "run", **sections)
    after = gold_after(tmp_path / "run")
    assert after["format"] >= 0.9
    assert after["gold"] >= sft_gold + 0.2, (summary["final"], after, sft_gold)


def test_dpo_config_validates_loss_names():
    with pytest.raises(ConfigError, match="dpo.loss"):
        validate(DPOConfig, {"dpo": {"loss": "dpoo"}})
