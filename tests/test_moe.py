"""Mixture-of-experts knobs on tiny Mixtral- and Qwen2-MoE-shaped models: the router load-balancing loss is
transformers' (checked by hand), it is added to SFT's and DPO's objective, dense models and other recipes refuse
its coefficient, and model.freeze keeps routers and chosen experts bitwise fixed while the rest trains."""

import json
import shutil

import pytest
import torch
from multiproc import metric_rows, small_data
from torch.testing import assert_close
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from alignkit.config import ConfigError, ModelConfig
from alignkit.data.collate import pad_batch
from alignkit.data.loading import load_examples
from alignkit.data.templates import tokenize_conversation
from alignkit.demo.assets import demo_data
from alignkit.losses import step_denominator
from alignkit.models import load_causal_lm
from alignkit.moe import router_aux_coef
from alignkit.ops import forward_token_logps_aux
from alignkit.recipes import dpo as dpo_recipe
from alignkit.recipes.sft import moe_step_loss, sft_step_loss
from alignkit.runtime import make_optimizer

SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256, num_experts_per_tok=2, initializer_range=0.2)


def save_tiny(folder, config, tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)



pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def mixtral(tmp_path_factory, demo_tokenizer):
    from transformers import MixtralConfig

    config = MixtralConfig(vocab_size=len(demo_tokenizer), intermediate_size=48, num_local_experts=4, **SHAPE,
                           pad_token_id=demo_tokenizer.pad_token_id, eos_token_id=demo_tokenizer.eos_token_id)
    return save_tiny(tmp_path_factory.mktemp("mixtral"), config, demo_tokenizer)


@pytest.fixture(scope="module")
def qwen_moe(tmp_path_factory, demo_tokenizer):
    from transformers import Qwen2MoeConfig

    config = Qwen2MoeConfig(vocab_size=len(demo_tokenizer), intermediate_size=48, moe_intermediate_size=24,
                            shared_expert_intermediate_size=48, num_experts=4, **SHAPE,
                            pad_token_id=demo_tokenizer.pad_token_id, eos_token_id=demo_tokenizer.eos_token_id)
    return save_tiny(tmp_path_factory.mktemp("qwen2_moe"), config, demo_tokenizer)


@pytest.fixture(scope="module")
def batch(demo_tokenizer):
    examples = load_examples(str(demo_data("sft")), "sft")[:4]
    return pad_batch([tokenize_conversation(demo_tokenizer, e.messages) for e in examples], demo_tokenizer.pad_token_id)


def test_load_balancing_loss_by_hand():
    """Switch Transformer eq. 4 as transformers computes it: E * sum_k sum_e f_ke * P_e, f_ke the fraction of
    tokens whose k-th choice is e, P_e the mean router probability. Two tokens, four experts, top-2.
    Both prefer experts 0 then 1 (probabilities .5 .25 .125 .125): f = [1,0,0,0] and [0,1,0,0], P = the same
    probabilities, so 4 * (.5 + .25) = 3. Opposite preferences balance: P = [.3125, .1875, .1875, .3125],
    f = [.5,0,0,.5] and [0,.5,.5,0]: 4 * (.3125 + .1875) = 2 (= top-k, the balanced value)."""
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
    alike = probs.log().expand(2, 4)
    opposite = torch.stack([probs.log(), probs.flip(0).log()])
    assert load_balancing_loss_func((alike,), num_experts=4, top_k=2).item() == pytest.approx(3.0)
    assert load_balancing_loss_func((opposite,), num_experts=4, top_k=2).item() == pytest.approx(2.0)


@pytest.mark.parametrize("arch", ["mixtral", "qwen_moe"])
def test_aux_loss_is_transformers_and_is_added_to_the_sft_objective(arch, request, batch, demo_tokenizer):
    path = request.getfixturevalue(arch)
    model = load_causal_lm(ModelConfig(name_or_path=path, device="cpu", router_aux_loss_coef=0.02), demo_tokenizer,
                           router_aux=True)
    assert router_aux_coef(model) == 0.02
    assert not model.config.output_router_logits  # asked for per training forward: generation cannot compute it
    logps, aux = forward_token_logps_aux(model, batch.input_ids, batch.attention_mask, batch.position_ids)
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    output_router_logits=True)
    expected = load_balancing_loss_func(out.router_logits, 4, 2, batch.attention_mask)
    assert_close(aux, expected)
    assert 2.0 <= aux.item() < 8.0  # >= top-k * layers / layers: the balanced value per layer is 2
    denominator = step_denominator([batch.loss_mask[:, 1:]])
    with torch.no_grad():
        plain, nll = sft_step_loss(model, batch, denominator)
        total, nll_moe, aux_again = moe_step_loss(model, batch, denominator, 0.5)
    assert_close(total, plain + 0.5 * aux_again)
    assert_close(nll_moe, nll)
    assert_close(aux_again, expected)


def test_dpo_adds_the_router_loss_of_the_policy_forward(mixtral, demo_tokenizer):
    from alignkit.config import DPOConfig
    from alignkit.data.prepare import PairRow

    model = load_causal_lm(ModelConfig(name_or_path=mixtral, device="cpu", router_aux_loss_coef=0.02),
                           demo_tokenizer, router_aux=True)
    examples = load_examples(str(demo_data("sft")), "sft")[:4]
    seqs = [tokenize_conversation(demo_tokenizer, e.messages) for e in examples]
    rows = [PairRow(chosen=seqs[0], rejected=seqs[1]), PairRow(chosen=seqs[2], rejected=seqs[3])]
    pairs = dpo_recipe.pair_batch(rows, [0, 1], demo_tokenizer.pad_token_id)
    cfg = DPOConfig(dpo={"loss": "simpo"})
    with torch.no_grad():
        loss, stats = dpo_recipe.pair_loss(cfg, model, pairs, None)
        loss_moe, stats_moe, aux = dpo_recipe.moe_pair_loss(cfg, model, pairs, None)
        out = model(input_ids=pairs.input_ids, attention_mask=pairs.attention_mask, position_ids=pairs.position_ids,
                    output_router_logits=True)
    assert_close(loss_moe, loss)
    assert_close(aux, load_balancing_loss_func(out.router_logits, 4, 2, pairs.attention_mask))


def test_coefficient_resolution_and_refusals(mixtral, demo_base, demo_tokenizer, tmp_path):
    def coef(value, path=mixtral, **kw):
        return router_aux_coef(load_causal_lm(ModelConfig(name_or_path=path, device="cpu",
                                                          router_aux_loss_coef=value), demo_tokenizer, **kw))

    assert coef(None, router_aux=True) == 0.0  # Mixtral's config does not ask for router logits: off
    assert coef(0.0, router_aux=True) == 0.0
    assert coef(0.05, router_aux=True) == 0.05
    asks = tmp_path / "asks"  # a checkpoint whose config asks for router logits: None takes its coefficient
    shutil.copytree(mixtral, asks)
    config = json.loads((asks / "config.json").read_text())
    (asks / "config.json").write_text(json.dumps({**config, "output_router_logits": True, "router_aux_loss_coef": 0.005}))
    assert coef(None, path=str(asks), router_aux=True) == 0.005
    with pytest.raises(ConfigError, match=r"router_aux_loss_coef = 0.01 has no effect here: .* is not a mixture-of-experts"):
        load_causal_lm(ModelConfig(name_or_path=str(demo_base), device="cpu", router_aux_loss_coef=0.01),
                       demo_tokenizer, router_aux=True)
    with pytest.raises(ConfigError, match="this recipe's objective has no router load-balancing term"):
        coef(0.01)  # a recipe that does not add the term (kto, grpo, ...)
    with pytest.raises(ConfigError, match="this model is not trained"):
        coef(0.01, trainable=False, router_aux=True)
    with pytest.raises(ConfigError, match="model.freeze = \\['router'\\] has no effect here: this model is not trained"):
        load_causal_lm(ModelConfig(name_or_path=mixtral, device="cpu", freeze=["router"]), demo_tokenizer,
                       trainable=False)


def test_frozen_router_and_expert_stay_bitwise_fixed_while_the_rest_trains(mixtral, batch, demo_tokenizer):
    cfg = ModelConfig(name_or_path=mixtral, device="cpu", router_aux_loss_coef=0.1,
                      freeze=["router", "experts.1", "model.layers.0.self_attn.q_proj.*"])
    model = load_causal_lm(cfg, demo_tokenizer, router_aux=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    from alignkit.config import TrainConfig

    optimizer = make_optimizer(model.parameters(), TrainConfig(lr=1e-2))
    denominator = step_denominator([batch.loss_mask[:, 1:]])
    for _ in range(2):
        loss, _, _ = moe_step_loss(model, batch, denominator, 0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dict(model.named_parameters())
    for layer in (0, 1):
        prefix = f"model.layers.{layer}.mlp."
        assert torch.equal(after[prefix + "gate.weight"], before[prefix + "gate.weight"])
        for fused in ("experts.gate_up_proj", "experts.down_proj"):
            assert torch.equal(after[prefix + fused][1], before[prefix + fused][1])  # expert 1: untouched
            assert not torch.equal(after[prefix + fused][0], before[prefix + fused][0])  # expert 0: trained
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(after[q], before[q])
    assert not torch.equal(after["model.layers.0.self_attn.k_proj.weight"], before["model.layers.0.self_attn.k_proj.weight"])


def test_an_unfrozen_router_trains(mixtral, batch, demo_tokenizer):
    """The freeze test can fail: without model.freeze the same steps move the router."""
    model = load_causal_lm(ModelConfig(name_or_path=mixtral, device="cpu", router_aux_loss_coef=0.1), demo_tokenizer,
                           router_aux=True)
    gate = "model.layers.0.mlp.gate.weight"
    before = dict(model.named_parameters())[gate].detach().clone()
    loss, _, _ = moe_step_loss(model, batch, step_denominator([batch.loss_mask[:, 1:]]), 0.1)
    loss.backward()
    torch.optim.AdamW(model.parameters(), lr=1e-2).step()
    assert not torch.equal(dict(model.named_parameters())[gate], before)


@pytest.mark.parametrize("entry, message", [
    ("experts.7", "has 4 experts per block"),
    ("model.nothing.*", "matches no parameter name"),
])
def test_freeze_entries_that_fix_nothing_are_errors(entry, message, mixtral, demo_base, demo_tokenizer):
    with pytest.raises(ConfigError, match=message):
        load_causal_lm(ModelConfig(name_or_path=mixtral, device="cpu", freeze=[entry]), demo_tokenizer)
    with pytest.raises(ConfigError, match="names a mixture-of-experts part, but .* has no MoE blocks"):
        load_causal_lm(ModelConfig(name_or_path=str(demo_base), device="cpu", freeze=["router"]), demo_tokenizer)


def test_sft_run_logs_the_router_loss(mixtral, tmp_path):
    from alignkit.config import SFTConfig, validate
    from alignkit.recipes.sft import train

    cfg = validate(SFTConfig, {
        "model": {"name_or_path": mixtral, "device": "cpu", "router_aux_loss_coef": 0.02, "freeze": ["router"]},
        "data": small_data("sft", tmp_path / "data", n_train=8, n_eval=2),
        "train": {"max_steps": 2, "batch_size": 4, "weight_decay": 0.0},
        "run": {"output_dir": str(tmp_path / "run"), "progress": False, "num_samples": 1, "sample_max_new_tokens": 3,
                "threads": 1}})  # one sample: generation runs on the trained MoE model too
    train(cfg)
    rows = [r for r in metric_rows(tmp_path / "run") if "moe/aux_loss" in r]
    assert len(rows) == 2 and all(2.0 <= r["moe/aux_loss"] < 8.0 for r in rows)
