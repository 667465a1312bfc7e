"""Every knob works or refuses: each field of each recipe's config is read by the run, or listed in the recipe's
REFUSED map (set to anything but its default, it is an error naming the reason). A field that nothing reads is a
knob that does nothing, and this test names it.

How: every config field read is recorded (``Section.__getattribute__``) while the recipe runs a step or two in
variants that switch on each branch (LoRA, packing, an on-the-fly reference, PPO's adaptive KL and shared critic,
GRPO's KL term...). A field read in none of them fails the test.
"""

import pytest
from field_reads import recording_reads
from multiproc import small_data

from alignkit.cli import RECIPES
from alignkit.config import ConfigError, RewardSource, Section, load_config

LORA = {"model": {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                  "lora_target_modules": ["q_proj", "v_proj"], "gradient_checkpointing": True},
        "run": {"merge_adapter": True}}
EPOCHS = {"train": {"max_steps": 0, "epochs": 0.2}}
SPLIT = {"data": {"eval": None, "eval_fraction": 0.2}}
JUDGE = {"judge": "demo:sft", "args": {"max_new_tokens": 2}, "revision": None, "dtype": "float32"}
PACKED = {"packing": True, "pack_length": 300, "cache_tokenized": False}
TOOLS = {"environment": {"tools": ["alignkit.demo.tools_world:calculator"], "max_turns": 2, "max_tokens": 12,
                         "tool_timeout": 2.0, "tool_format": "pythonic"}}
NAMED_ENV = {"environment": {"name": "envs:Echo", "args": {"rounds": 1}}}  # tests/envs.py
SMALL_SFT = "<small sft slice>"  # config() swaps in a small slice of the demo's SFT data (tokenized in no time)
REPLAY = {"replay": {"data": SMALL_SFT, "ratio": 0.5, "coef": 0.5}}
VARIANTS = {
    "sft": [{"data": PACKED}, LORA, {**EPOCHS, **SPLIT, "replay": {"data": SMALL_SFT, "ratio": 0.5}}],
    "rm": [{**LORA, "data": PACKED}, {**EPOCHS, **SPLIT}],
    "prm": [{**LORA, "data": PACKED}, {**EPOCHS, **SPLIT}],
    "dpo": [{"dpo": {"reference": "on_the_fly", "reference_update": "soft", "reference_alpha": 0.5}, "data": PACKED},
            LORA, {**EPOCHS, **SPLIT, **REPLAY, "dpo": {"reference": "on_the_fly", "reference_update": "hard", "reference_every": 1}}],
    "kto": [{"kto": {"reference": "on_the_fly"}, "data": PACKED}, LORA, {**EPOCHS, **SPLIT}],
    "grpo": [{"grpo": {"beta": 0.1, "dynamic_sampling": True, "mask_truncated": True, "entropy_coef": 0.01,
                       "ratio": "sapo"}, "sampling": {"correction": "tis", "correction_level": "sequence",
                                                      "eval_temperature": 0.7, "eval_samples": 2}},
             {**SPLIT, "rewards": [JUDGE, {"reward_model": "demo:rm", "normalize": False, "name": "rm"}]},
             {**LORA, **EPOCHS, **REPLAY}, TOOLS, NAMED_ENV],
    "ppo": [{"ppo": {"adaptive_kl": True, "reward_norm": "running", "critic": "shared"},
             "sampling": {"correction": "mis", "eval_temperature": 1.0, "eval_samples": 2}},
            {**SPLIT, "ppo": {"kl_in_loss": True, "kl_estimator": "k3"},
             "rewards": [{"builtin": "demo_gold"}, JUDGE]},
            {**LORA, **EPOCHS, **REPLAY}, TOOLS, NAMED_ENV],
    "distill": [{"distill": {"loss": "jsd", "jsd_beta": 0.4, "on_policy_fraction": 0.5, "hard_weight": 0.1,
                             "temperature": 2.0},
                 "sampling": {"temperature": 0.9, "top_p": 0.95, "top_k": 5, "eval_temperature": 0.7, "eval_samples": 2}},
                {"distill": {"loss": "forward_kl", "on_policy_fraction": 0.0, "teacher_topk": 8},
                 "sampling": {"max_new_tokens": 64}, **SPLIT},
                {**LORA, **EPOCHS}],
    "online_dpo": [{"dpo": {"loss": "simpo", "simpo_gamma": 0.3, "nll_weight": 0.1, "label_smoothing": 0.1},
                    "online": {"micro_batch_size": 2}, **LORA, **EPOCHS,
                    "sampling": {"temperature": 0.9, "top_p": 0.9, "top_k": 5, "eval_temperature": 0.7, "eval_samples": 2}},
                   {"dpo": {"reference_model": "demo:sft"}, "online": {"iterations": 2}, **SPLIT,
                    "rewards": [{"judge": "self", "args": {"max_new_tokens": 2}}]},
                   {"dpo": {"reference_update": "hard", "reference_every": 1}},
                   {"dpo": {"reference_update": "soft", "reference_alpha": 0.5}, "online": {"samples_per_prompt": 3}}],
    "rrhf": [{**LORA, "data": PACKED, "rrhf": {"sft_weight": 0.5}},
             {**EPOCHS, **SPLIT, "rrhf": {"source": "online", "samples_per_prompt": 2},
              "sampling": {"temperature": 0.9, "top_p": 0.9, "top_k": 5, "eval_temperature": 0.7, "eval_samples": 2},
              "rewards": [JUDGE, {"reward_model": "demo:rm", "normalize": False, "name": "rm"}],
              "eval_rewards": [{"builtin": "demo_gold"}]}],
}
# read only by the vllm engine, which needs vLLM and CUDA: tests/test_engines.py runs it where both are present
VLLM_ONLY = {("SamplingSection", k) for k in ("vllm_gpu_memory_utilization", "vllm_tensor_parallel_size", "vllm_sleep",
                                               "vllm_max_model_len")}
QUICK = {"train": {"max_steps": 2, "batch_size": 4},
         "run": {"eval_every": 1, "save_every": 1, "sample_every": 1, "num_samples": 1, "log_every": 1,
                 "threads": 1, "progress": False}}
RL_QUICK = {"sampling": {"max_new_tokens": 4}}


def merged(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for section, values in part.items():
            out[section] = {**out.get(section, {}), **values} if isinstance(values, dict) else values
    return out


def config(recipe: str, tmp_path, variant: dict):
    from alignkit.demo.run import stage_config

    online_rrhf = recipe == "rrhf" and variant.get("rrhf", {}).get("source") == "online"  # prompts, not ranked lists
    data = {"data": small_data("grpo" if online_rrhf else recipe, tmp_path / "data", n_train=16, n_eval=4)}
    extra = [RL_QUICK, {"grpo": {"group_size": 2, "micro_batch_size": 4}}] if recipe == "grpo" else \
            [RL_QUICK, {"ppo": {"mini_batch_size": 2, "micro_batch_size": 2, "ppo_epochs": 1}}] if recipe == "ppo" else \
            [RL_QUICK, {"online": {"samples_per_prompt": 2}}] if recipe == "online_dpo" else \
            [RL_QUICK] if online_rrhf else \
            [{"distill": {"teacher": "demo:sft"}}] if recipe == "distill" else []  # the demo teacher takes a minute
    quick = QUICK if recipe not in ("rm", "prm") else {**QUICK, "run": {k: v for k, v in QUICK["run"].items()
                                                                      if k not in ("sample_every", "num_samples")}}
    if variant.get("replay", {}).get("data") == SMALL_SFT:
        variant = {**variant, "replay": {**variant["replay"],
                                         "data": small_data("sft", tmp_path / "replay", n_train=16, n_eval=4)["train"]}}
    sections = merged(data, quick, *extra, variant)
    if recipe == "rrhf":  # no demo stage of its own: the recipe's defaults (the demo SFT model) under these sections
        from alignkit.config import validate
        from alignkit.demo.assets import demo_resolved

        run = {"model": {"device": "cpu"}, "run": {"output_dir": str(tmp_path / "run")}}
        return demo_resolved(validate(RECIPES[recipe].config, merged(run, sections)))
    return stage_config(recipe, tmp_path / "run", fast=True, **sections)


def leaf_fields(cfg: Section) -> set[tuple[str, str]]:
    """(section class, field) of every leaf field of a config, reward sources included."""
    out = set()
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, Section):
                out |= {(type(item).__name__, f) for f in type(item).model_fields}
    return out


def run_recording(cfg: Section, recipe: str) -> set[tuple[str, str]]:
    """Run ``recipe`` on ``cfg``; the (section class, field) pairs it read."""
    with recording_reads() as reads:
        RECIPES[recipe].train(cfg, None)
    return reads


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(VARIANTS))
def test_every_field_is_read_or_refused(recipe, tmp_path, demo_sft, demo_rm):
    fields, reads = set(), set()
    for i, variant in enumerate([{}, *VARIANTS[recipe]]):
        cfg = config(recipe, tmp_path / f"v{i}", variant)
        fields |= leaf_fields(cfg)
        reads |= run_recording(cfg, recipe)
    spec = RECIPES[recipe].config
    refused = {(type(getattr(cfg, key.split(".")[0])).__name__, key.split(".")[1]) for key in spec.REFUSED}
    unread = sorted(fields - reads - refused - VLLM_ONLY)
    assert not unread, f"{recipe}: fields nothing reads (read them, or add them to REFUSED with the reason): {unread}"


def test_eval_config_fields_are_read_or_refused(tmp_path, demo_rm):
    import json

    from alignkit.config import EvalConfig
    from alignkit.pipeline import resolve

    cfg = resolve(load_config(EvalConfig, None, [f"run.output_dir={tmp_path / 'eval'}", "run.threads=1"]))
    reads = run_recording(cfg, "eval")
    (tmp_path / "key.json").write_text(json.dumps({"item-0001": {"a": "tuned", "b": "base"}}))
    (tmp_path / "rated.csv").write_text("item,prompt,response_a,response_b,helpfulness,harmlessness,honesty,rater,comment\n"
                                        "item-0001,p,x,y,a,tie,b,ann,\n")
    policy = load_config(EvalConfig, None, [
        f"run.output_dir={tmp_path / 'policy'}", "run.threads=1", "eval.mode=policy",
        "models={tuned: demo:sft, base: demo:base}", "data.train=demo:prompts_eval", "eval.max_prompts=12",
        "eval.temperature=0.7", "eval.samples=2", "eval.group_by=held_out", "eval.max_new_tokens=4",
        "eval.baseline=base", "eval.judge=rm", "eval.pass_threshold=1.0", "eval.reference=demo:sft",
        "eval.perplexity_data=demo:sft_eval", "eval.bootstrap=100", "eval.human_sheet=3",
        f"eval.ratings=[{tmp_path / 'rated.csv'}]", f"eval.ratings_key={tmp_path / 'key.json'}",
        'rewards=[{builtin: demo_gold}, {reward_model: "demo:rm", normalize: false, '
        'name: rm}, {judge: "demo:sft", args: {max_new_tokens: 2}, dtype: float32}]'])
    reads |= run_recording(resolve(policy), "eval")
    for environment in ('{tools: ["alignkit.demo.tools_world:calculator"], max_turns: 2, max_tokens: 12, '
                        'tool_timeout: 2.0, tool_format: pythonic}', '{name: "envs:Echo", args: {rounds: 1}}'):
        episodes = load_config(EvalConfig, None, [
            f"run.output_dir={tmp_path / 'episodes'}", "run.threads=1", "eval.mode=policy", "models={sft: demo:sft}",
            "data.train=demo:tools_prompts_eval", "eval.max_prompts=4", "eval.max_new_tokens=4",
            "rewards=[{builtin: demo_gold}]", f"environment={environment}"])
        reads |= run_recording(resolve(episodes), "eval")
    refused = {(type(getattr(cfg, key.split(".")[0])).__name__, key.split(".")[1]) for key in EvalConfig.REFUSED}
    assert not sorted((leaf_fields(cfg) | leaf_fields(policy)) - reads - refused)


@pytest.mark.parametrize("recipe, key, value, reason", [
    ("grpo", "data.packing", "true", "rollouts are laid out by the sampler"),
    ("grpo", "train.grad_accum", "4", "micro_batch_size"),
    ("ppo", "run.sample_max_new_tokens", "9", "RL samples are the rollouts"),
    ("rm", "run.sample_every", "5", "does not generate"),
    ("eval", "model.adapter", "lora", "trains nothing"),
])
def test_a_refused_field_set_is_an_error_naming_the_reason(recipe, key, value, reason):
    with pytest.raises(ConfigError) as err:
        load_config(RECIPES[recipe].config, None, [f"{key}={value}"])
    assert f"{key} = " in str(err.value) and "is not used by this recipe" in str(err.value) and reason in str(err.value)


@pytest.mark.parametrize("recipe, key, value, needs", [
    ("sft", "model.lora_r", "8", "model.adapter = lora or qlora"),
    ("sft", "train.epochs", "3", "train.max_steps > 0"),
    ("dpo", "train.warmup_ratio", "0.2", "warmup_steps > 0 overrides it"),
    ("grpo", "data.eval_fraction", "0.1", "data.eval is given"),
    ("grpo", "grpo.kl_estimator", "k2", "grpo.beta = 0"),
    ("ppo", "ppo.vf_coef", "0.5", "shared critic"),
    ("ppo", "ppo.kl_horizon", "500", "ppo.adaptive_kl"),
    ("dpo", "dpo.simpo_gamma", "1.0", "dpo.loss = simpo"),
])
def test_a_field_that_does_nothing_under_the_rest_of_the_config_is_refused(recipe, key, value, needs):
    extra = {"train.warmup_ratio": ["train.max_steps=10", "train.warmup_steps=3"],
             "train.epochs": ["train.max_steps=10"]}.get(key, [])
    with pytest.raises(ConfigError) as err:
        load_config(RECIPES[recipe].config, None, [*extra, f"{key}={value}"])
    assert f"{key} = " in str(err.value) and "has no effect here" in str(err.value) and needs in str(err.value)
    # and where it acts, it is accepted
    acting = {"model.lora_r": ["model.adapter=lora"], "train.epochs": ["train.max_steps=0"],
              "train.warmup_ratio": ["train.warmup_steps=0"], "data.eval_fraction": ["data.eval=null"],
              "grpo.kl_estimator": ["grpo.beta=0.1"], "ppo.vf_coef": ["ppo.critic=shared"],
              "ppo.kl_horizon": ["ppo.adaptive_kl=true"], "dpo.simpo_gamma": ["dpo.loss=simpo"]}[key]
    load_config(RECIPES[recipe].config, None, [*acting, f"{key}={value}"])


def test_a_section_given_as_an_object_keeps_the_recipes_other_defaults():
    from alignkit.config import GRPOConfig, TrainConfig

    cfg = GRPOConfig(train=TrainConfig(max_steps=5))
    assert cfg.train.max_steps == 5 and cfg.train.lr == 1e-6  # GRPO's lr, not TrainConfig's 2e-5


def test_k1_is_refused_as_a_kl_loss_term_with_the_reason():
    with pytest.raises(ConfigError, match="grpo.kl_estimator = k1 cannot be a KL loss term: E\\[grad log pi\\] = 0"):
        load_config(RECIPES["grpo"].config, None, ["grpo.kl_estimator=k1"])
    with pytest.raises(ConfigError, match="ppo.kl_estimator = k1 cannot be a KL loss term"):
        load_config(RECIPES["ppo"].config, None, ["ppo.kl_in_loss=true"])
    assert load_config(RECIPES["ppo"].config).ppo.kl_estimator == "k1"  # in the reward it is the classic choice


def test_renamed_key_says_its_new_name():
    with pytest.raises(ConfigError, match='key "grpo.overlong_penalty" was renamed to "grpo.missing_eos_penalty"'):
        load_config(RECIPES["grpo"].config, None, ["grpo.overlong_penalty=1.0"])


def test_mixed_precision_no_is_read_as_no_in_files_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  mixed_precision: no\n")
    assert load_config(RECIPES["sft"].config, path).train.mixed_precision == "no"
    assert load_config(RECIPES["sft"].config, None, ["train.mixed_precision=no"]).train.mixed_precision == "no"


@pytest.mark.parametrize("source, message", [
    ({"fn": "m:f", "revision": "v1"}, "revision does not apply to a fn source"),
    ({"builtin": "length", "dtype": "bfloat16"}, "dtype does not apply to a builtin source"),
    ({"reward_model": "x", "args": {"a": 1}}, "args does not apply to a reward_model source"),
    ({"fn": "m:f", "normalize": False}, "normalize does not apply to a fn source"),
])
def test_reward_source_fields_that_do_not_apply_are_refused(source, message):
    with pytest.raises(ValueError, match=message):
        RewardSource(**source)


def test_the_shared_sections_are_declared_once():
    from alignkit.config import RecipeConfig

    for name, recipe in RECIPES.items():
        if name in ("eval", "generate", "cai"):  # they train nothing: no train section
            continue
        assert issubclass(recipe.config, RecipeConfig)
        own = set(recipe.config.model_fields) - set(RecipeConfig.model_fields)
        assert not own & {"model", "data", "train", "run"}
        for section in ("model", "data", "train", "run"):  # inherited, not re-declared
            assert section not in recipe.config.__annotations__
