"""RL plumbing: rollout layout, temperature-correct log-probs, reward assembly, the KL controller, the LoRA
reference; and the integration tests: GRPO / GSPO / RLOO / PPO raise the demo's gold score, PPO resumes exactly."""


import pytest
import torch
from torch.testing import assert_close

from alignkit.advantages import adaptive_kl_coef, kl_shaped_rewards
from alignkit.config import ModelConfig
from alignkit.models import load_causal_lm, load_reference
from alignkit.ops import response_logps, token_logps
from alignkit.sampling import Generation, rollout_batch


def test_kl_shaped_rewards_on_a_padded_batch():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards = kl_shaped_rewards(torch.tensor([2.0, -1.0]), kl, mask, kl_coef=0.5)
    # row 0: -0.05, -0.1, -0.15 + 2; row 1: -0.25 - 1 at its only token, nothing on padding
    assert_close(rewards, torch.tensor([[-0.05, -0.1, 1.85], [-1.25, 0.0, 0.0]]))


def test_adaptive_kl_controller_by_hand():
    # KL 9 vs target 6: error clipped to 0.2; 64 sequences over a horizon of 10000 -> x (1 + 0.2 * 0.0064)
    assert adaptive_kl_coef(0.1, 9.0, 6.0, 10000, 64) == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))
    # KL 5.4 vs 6: error -0.1
    assert adaptive_kl_coef(0.1, 5.4, 6.0, 1000, 100) == pytest.approx(0.1 * (1 - 0.1 * 0.1))


def generations():
    return [Generation((5, 6, 7), (8, 9, 1), "", True), Generation((5,), (10,), "", True),
            Generation((6, 7), (11, 12, 13, 14), "", False)]


def test_rollout_batch_layout():
    batch = rollout_batch(generations(), pad_id=0)
    assert batch.prompt_width == 3
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 1, 0], [0, 0, 5, 10, 0, 0, 0], [0, 6, 7, 11, 12, 13, 14]]
    assert batch.response_mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert batch.position_ids[1].tolist()[2:4] == [0, 1] and batch.position_ids[2].tolist()[1:] == [0, 1, 2, 3, 4, 5]
    assert batch.finished.tolist() == [True, True, False]


def test_response_logps_ignore_padding_and_use_the_temperature(demo_sft, demo_tokenizer):
    model = load_causal_lm(ModelConfig(name_or_path=str(demo_sft), device="cpu"), demo_tokenizer)
    gens = generations()
    batch = rollout_batch(gens, demo_tokenizer.pad_token_id)
    with torch.no_grad():
        batched, _ = response_logps(model, batch, temperature=0.7)
        for i, g in enumerate(gens):
            ids = torch.tensor([list(g.prompt_ids) + list(g.response_ids)])
            logits = model(input_ids=ids).logits[:, len(g.prompt_ids) - 1 : -1] / 0.7
            alone = token_logps(logits, torch.tensor([list(g.response_ids)]))[0]
            assert_close(batched[i, : len(g.response_ids)], alone, rtol=1e-4, atol=1e-5)


def test_lora_reference_response_logps_equal_the_base(demo_sft, demo_tokenizer):
    base = load_causal_lm(ModelConfig(name_or_path=str(demo_sft), device="cpu"), demo_tokenizer)
    cfg = ModelConfig(name_or_path=str(demo_sft), device="cpu", adapter="lora", lora_r=4)
    policy = load_causal_lm(cfg, demo_tokenizer)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    reference = load_reference(cfg, None, policy, demo_tokenizer, torch.device("cpu"))
    batch = rollout_batch(generations(), demo_tokenizer.pad_token_id)
    with torch.no_grad():
        expected = response_logps(base, batch)[0]
    assert_close(reference.response_logps(batch), expected)
    assert policy.training  # the reference pass restored the policy's mode


# ------------------------------------------------------------------------------------------- integration
def rl_config(recipe, tmp_path, name, **sections):
    from alignkit.demo.run import stage_config

    return stage_config(recipe, tmp_path / name, fast=True, **sections)


def gold(summary):
    return summary["initial"]["reward_eval/demo_gold"], summary["final"]["reward_eval/demo_gold"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", [{}, {"ratio": "sequence"}], ids=["grpo", "gspo"])  # RLOO: the same loop; its advantage is hand-tested
def test_group_relative_rl_raises_gold(variant, tmp_path):
    from alignkit.recipes.grpo import train

    summary = train(rl_config("grpo", tmp_path, "run", grpo=variant))
    before, after = gold(summary)
    assert after >= before + 0.3, (before, after)


# PPO against the reward model: tests/test_doctor.py::test_ppo_raises_gold_then_the_doctor_sees_reward_hacking
# (one run shows both: gold rises over SFT, then falls while the RM score holds, and the doctor says so).


def test_shared_value_head_adds_only_a_head_and_trains_the_backbone(demo_sft, demo_tokenizer):
    from alignkit.models import SharedValueHead, token_values

    actor = load_causal_lm(ModelConfig(name_or_path=str(demo_sft), device="cpu"), demo_tokenizer)
    critic = SharedValueHead(actor)
    assert [n for n, _ in critic.named_parameters()] == ["score.weight"]  # no second backbone
    batch = rollout_batch(generations(), demo_tokenizer.pad_token_id)
    values = token_values(critic, batch.input_ids, batch.attention_mask, batch.position_ids)
    assert values.shape == batch.input_ids.shape
    values.sum().backward()
    assert critic.score.weight.grad is not None
    assert actor.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0  # the value loss reaches the backbone


def test_generation_stops_at_the_templates_end_of_turn_token(demo_tokenizer):
    import copy

    from alignkit.sampling import cut_at_eos, stop_token_ids

    tok = copy.deepcopy(demo_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                         "'<|im_end|>\\n' }}{% endfor %}")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    stops = stop_token_ids(tok)
    assert {tok.eos_token_id, im_end} <= stops  # EOS stays a stop even when the template ends turns otherwise
    assert cut_at_eos([5, 6, im_end, 7], stops) == ([5, 6, im_end], True)
    assert cut_at_eos([5, 6, 7], stops) == ([5, 6, 7], False)


def test_alignkit_eval_policy_is_the_evaluator_the_demo_uses(demo_sft, tmp_path):
    """`alignkit eval` in policy mode and the demo's scoreboard go through one evaluator: the same greedy answers
    to the same 80 prompts get the same gold and format scores, overall and on the held-out side."""
    import json
    from pathlib import Path

    from alignkit.cli import main
    from alignkit.demo.assets import demo_data
    from alignkit.demo.run import score_model

    prompts = tmp_path / "prompts.jsonl"  # the demo's first 80 eval prompts, as score_model(n_prompts=80) reads them
    prompts.write_text("".join(demo_data("prompts_eval").read_text().splitlines(keepends=True)[:80]))
    example = Path(__file__).resolve().parent.parent / "examples" / "eval_policy.yaml"
    assert main(["eval", str(example), f"models={{sft: {demo_sft}, untrained: demo:base}}", f"data.train={prompts}",
                 "eval.max_prompts=0", "eval.temperature=0", "eval.samples=1", "eval.human_sheet=0",
                 f"run.output_dir={tmp_path / 'eval'}"]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    demo = score_model(str(demo_sft), n_prompts=80)
    sft = summary["models"]["sft"]
    assert summary["prompts"] == 80
    assert sft["gold"]["mean"] == pytest.approx(demo["gold"]) and sft["well_formed"]["mean"] == pytest.approx(demo["format"])
    assert sft["gold"]["mean[held_out=true]"] == pytest.approx(demo["gold[held_out=true]"])
    assert len((tmp_path / "eval" / "samples.jsonl").read_text().splitlines()) == 160
