"""Every example config validates, and runs for two steps on the demo (so README commands do not rot)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from alignkit.cli import RECIPES, main
from alignkit.config import load_config

HAS_VLLM = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
EXAMPLES = sorted(p for p in Path(__file__).resolve().parent.parent.glob("examples/*.yaml") if "pipeline" not in p.stem)
RECIPE_OF = {"sft": "sft", "rm": "rm", "prm": "prm", "eval": "eval", "dpo": "dpo", "simpo": "dpo", "orpo": "dpo", "kto": "kto",
             "ppo": "ppo", "grpo": "grpo", "gspo": "grpo", "rloo": "grpo", "rrhf": "rrhf",
             "generate": "generate", "cai": "cai", "distill": "distill", "online": "online_dpo"}


def recipe_for(path: Path) -> str:
    return RECIPE_OF[path.stem.split("_")[0]]


def test_there_are_examples_for_every_recipe():
    assert {recipe_for(p) for p in EXAMPLES} == set(RECIPES)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_validates(path):
    load_config(RECIPES[recipe_for(path)].config, path)


SHORT = {"sft": ["train.max_steps=2"], "rm": ["train.max_steps=2"], "dpo": ["train.max_steps=2"],
         "prm": ["train.max_steps=2"], "kto": ["train.max_steps=2"], "ppo": ["train.max_steps=1", "train.batch_size=8", "ppo.ppo_epochs=1"],
         "rrhf": ["train.max_steps=2", "train.batch_size=4", "data.eval_fraction=0.01"],
         "grpo": ["train.max_steps=1", "train.batch_size=2"], "eval": ["model.name_or_path=demo:rm"],
         "eval_policy": ["eval.max_prompts=6", "eval.samples=2", "eval.human_sheet=2", "eval.bootstrap=100"],
         "generate": ["generate.max_prompts=4", "generate.max_new_tokens=8"],
         "cai": ["cai.max_prompts=4", "cai.max_new_tokens=8"],
         # the demo teacher trains on first use (a minute); the demo SFT model stands in for it here
         "distill": ["train.max_steps=2", "train.batch_size=4", "sampling.max_new_tokens=8", "distill.teacher=demo:sft"],
         "distill_offline": ["train.max_steps=2", "train.batch_size=4", "distill.teacher=demo:sft"],
         "online_dpo": ["train.max_steps=1", "train.batch_size=2", "sampling.max_new_tokens=8"],
         "online_dpo_self_rewarding": ["train.max_steps=3", "train.batch_size=2", "sampling.max_new_tokens=8"],
         "grpo_tools": ["train.max_steps=1", "train.batch_size=2", "sampling.max_new_tokens=8",
                        "model.name_or_path=demo:sft"],  # demo:tools_sft trains on first use (a minute and a half)
         "sft_tools": ["train.max_steps=2"],
         "grpo_prm": ["train.max_steps=1", "train.batch_size=2", "sampling.max_new_tokens=8"],  # demo:prm: first use
         "eval_best_of_n": ["eval.max_prompts=4", "eval.max_new_tokens=8", "eval.bootstrap=100"],
         # DoRA re-normalises every adapted weight on each forward: small batches and samples keep it to seconds
         "sft_dora": ["train.max_steps=2", "train.batch_size=8", "data.pack_length=256", "run.num_samples=1",
                      "run.sample_max_new_tokens=4"]}


@pytest.fixture(scope="module")
def quick_prm(tmp_path_factory, demo_sft) -> str:
    """A process reward model trained for two steps on a slice of the step world (the mechanics of the examples
    that score with one; demo:prm itself takes 20 s to train on first use)."""
    from multiproc import small_data

    folder = tmp_path_factory.mktemp("prm")
    data = small_data("prm", folder / "data", n_train=32)
    assert main(["prm", "examples/prm.yaml", *SHORT["prm"], "train.batch_size=4", "run.progress=false",
                 *(f"data.{k}={v}" for k, v in data.items()), f"run.output_dir={folder / 'run'}"]) == 0
    return str(folder / "run" / "final")


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_two_steps(path, tmp_path, demo_sft, request):
    recipe = recipe_for(path)
    extra = [] if recipe == "eval" else ["run.eval_every=0", "run.save_every=0", "run.sample_every=0",
                                         "run.progress=false"]
    from multiproc import SMALL_SETS, small_data

    data = (yaml.safe_load(path.read_text()) or {}).get("data", {})
    if recipe in ("sft", "prm", "dpo", "kto", "grpo", "ppo", "online_dpo") and data.get("train") == f"demo:{SMALL_SETS[recipe][0]}":
        # a slice of the same demo data: two steps need no reference cache of 2,850 pairs, no eval of 200 prompts
        extra += [f"data.{k}={v}" for k, v in small_data(recipe, tmp_path / "data", n_train=128).items()]
        if "eval" not in data and recipe not in ("dpo", "kto"):
            extra = [e for e in extra if not e.startswith("data.eval=")]
        if recipe in ("grpo", "ppo", "online_dpo"):
            extra.append("sampling.max_new_tokens=8")
    if path.stem == "sft_moe":  # its model folder is made by `alignkit init --arch mixtral` (README): a tiny one here
        from alignkit.scratch import init_model

        moe = init_model("examples/data/arithmetic_notes.txt", tmp_path / "moe", "mixtral", vocab_size=400, hidden=32,
                         layers=2, heads=4)
        extra.append(f"model.name_or_path={moe}")
    if path.stem == "dpo_replay":  # a slice of the replayed SFT data too
        extra.append(f"replay.data={small_data('sft', tmp_path / 'replay', n_train=32)['train']}")
    if path.stem in ("grpo_prm", "eval_best_of_n"):  # the quick PRM stands in for demo:prm (20 s on first use)
        rewards = [dict(r, process_reward_model=request.getfixturevalue("quick_prm")) if "process_reward_model" in r
                   else r for r in yaml.safe_load(path.read_text())["rewards"]]
        extra.append(f"rewards={json.dumps(rewards)}")
    if path.stem.endswith("_vllm") and not HAS_VLLM:  # the same run on the hf engine; test_engines covers vllm
        extra += ["sampling.engine=auto", "train.mixed_precision=no"]
    args = [recipe, str(path), *SHORT.get(path.stem, SHORT[recipe]), *extra, f"run.output_dir={tmp_path / 'run'}"]
    assert main(args) == 0
    assert (tmp_path / "run" / "summary.json").is_file()
