"""alignkit side by side with TRL on identical work: SFT, reward model, DPO, GRPO and PPO steps per second on a CPU.

    make bench                                   # = .venv/bin/python bench/vs_trl.py
    .venv/bin/python bench/vs_trl.py --rounds 4 --workloads grpo,dpo

What is compared. Both frameworks train the same model (a 10.8M-parameter Llama built here from its config with
random weights and the demo's tokenizer, fp32, CPU) on the same records of the demo world, with the same batch,
lengths, learning rate and number of optimizer steps, each run a separate process with the same thread count.
TRL (the newest release) is installed by this script into its own scratch venv (bench/.venv-trl, with the same
torch pin; PPO runs against TRL 1.12, the last release with a PPO trainer, in bench/.venv-trl112); alignkit
never imports it. Each framework's own fastest CPU setting on this work is used: TRL's DPO
precomputes its reference log-probs (``precompute_ref_log_probs``), as alignkit caches them; TRL's GRPO generates
with ``generate`` (vLLM needs a GPU), as alignkit's hf engine does. PPO: 16 rollouts per step, 4 epochs of
mini-batches of 8, a separate critic and a reward model (the same Llama with a scalar head, random weights),
k1 KL in the reward, on both sides. For SFT, the reward model and DPO a third
side, "packed", is alignkit with ``data.packing`` (the same examples per step in rows of 256 tokens, no padding
between them); TRL's own padding-free mode needs flash-attention kernels that CPUs lack.

How. The figure is steady-state time per step (an optimizer step; for PPO a rollout step): the wall time between the end of step ``--warmup`` and
the end of the last step, over those steps (model loading, tokenisation, reference caching and start-up are
outside it, for both). alignkit's rows carry ``time/wall_s``; TRL's runner records each step's end with a
callback. Runs alternate A B B A over the rounds, and each round gives a paired ratio alignkit/TRL of
throughputs; the table prints both medians and the ratio's median, min and max (this machine drifts about 15%
between minutes, so only paired ratios mean much). ``MFU`` is the model FLOPs per second each side reaches
(6 N per trained token, 2 N per generated token, N = the parameters a token's forward multiplies by) over this
CPU's measured fp32 matmul rate with the same threads. The evidence of equal work is printed beside each row.
It never passes or fails: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRL_VENV = HERE / ".venv-trl"
TRL_PPO_VENV = HERE / ".venv-trl112"  # TRL 1.12: the last release with PPO (trl.experimental.ppo)
THREADS = 2

TRL_RUNNER = r'''
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[4]))
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
import trl

kind, spec_file, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
spec = json.load(open(spec_file))
rows = [json.loads(line) for line in open(spec["data"])]
user = lambda text: [{"role": "user", "content": text}]
assistant = lambda text: [{"role": "assistant", "content": text}]
common = dict(output_dir=out_dir, max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="constant",
              logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0,
              bf16=False, warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0)
tokenizer = AutoTokenizer.from_pretrained(spec["model"])
ends = []

class Clock(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        ends.append(time.time())

if kind == "sft":
    data = Dataset.from_list([{"prompt": user(r["prompt"]), "completion": assistant(r["response"])} for r in rows])
    args = trl.SFTConfig(**common, per_device_train_batch_size=spec["batch"], max_length=spec["max_length"],
                         completion_only_loss=True)
    trainer = trl.SFTTrainer(model=AutoModelForCausalLM.from_pretrained(spec["model"]), args=args, train_dataset=data,
                             processing_class=tokenizer, callbacks=[Clock()])
elif kind == "dpo":
    data = Dataset.from_list([{"prompt": user(r["prompt"]), "chosen": assistant(r["chosen"]),
                               "rejected": assistant(r["rejected"])} for r in rows])
    args = trl.DPOConfig(**common, per_device_train_batch_size=spec["batch"], max_length=spec["max_length"],
                         beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=True)
    trainer = trl.DPOTrainer(model=AutoModelForCausalLM.from_pretrained(spec["model"]), args=args, train_dataset=data,
                             processing_class=tokenizer, callbacks=[Clock()])
elif kind == "rm":
    data = Dataset.from_list([{"prompt": user(r["prompt"]), "chosen": assistant(r["chosen"]),
                               "rejected": assistant(r["rejected"])} for r in rows])
    model = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = trl.RewardConfig(**common, per_device_train_batch_size=spec["batch"], max_length=spec["max_length"])
    trainer = trl.RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[Clock()])
elif kind == "grpo":
    sys.path.insert(0, spec["bench_dir"])
    from rewards import letters
    data = Dataset.from_list([{"prompt": user(r["prompt"])} for r in rows])
    args = trl.GRPOConfig(**common, per_device_train_batch_size=spec["batch"] * spec["group"],
                          num_generations=spec["group"], max_completion_length=spec["new_tokens"],
                          temperature=1.0, top_p=1.0, beta=0.0, num_iterations=1, loss_type="dapo",
                          gradient_accumulation_steps=1, log_completions=False)
    trainer = trl.GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(spec["model"]), reward_funcs=letters,
                              args=args, train_dataset=data, processing_class=tokenizer, callbacks=[Clock()])
elif kind == "ppo":
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    tokenizer.padding_side = "left"
    ids = [tokenizer.apply_chat_template(user(r["prompt"]), add_generation_prompt=True, tokenize=True) for r in rows]
    ids = [list(x["input_ids"]) if hasattr(x, "keys") else list(x) for x in ids]
    data = Dataset.from_list([{"input_ids": x} for x in ids])
    batch, mini = spec["batch"], spec["mini_batch"]
    # TRL 1.12: rollout batch = per_device x grad_accum, split into num_mini_batches optimizer steps, each in
    # micro-batches of at most per_device: per_device = batch with grad_accum 1 gives one step per mini-batch
    args = PPOConfig(**{k: v for k, v in common.items() if k != "max_steps"}, per_device_train_batch_size=batch,
                     gradient_accumulation_steps=1, num_mini_batches=batch // mini, num_ppo_epochs=spec["epochs"],
                     total_episodes=spec["steps"] * batch, response_length=spec["new_tokens"], temperature=1.0,
                     stop_token="eos", kl_coef=0.05, kl_estimator="k1", cliprange=0.2, cliprange_value=0.2,
                     local_rollout_forward_batch_size=batch, num_sample_generations=0, whiten_rewards=False)
    load = lambda cls, **kw: cls.from_pretrained(spec[kw.pop("which")], **kw)
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=load(AutoModelForCausalLM, which="model"),
                         ref_model=load(AutoModelForCausalLM, which="model"),
                         reward_model=load(AutoModelForSequenceClassification, which="reward_model", num_labels=1),
                         value_model=load(AutoModelForSequenceClassification, which="reward_model", num_labels=1),
                         train_dataset=data, callbacks=[Clock()])
lengths = []
out = trainer.train()
eos = []
for row in trainer.state.log_history:
    if "completions/mean_length" in row:
        lengths.append(row["completions/mean_length"])
    if "val/num_eos_tokens" in row:  # PPO: how many rollouts of a batch stopped before response_length
        eos.append(row["val/num_eos_tokens"])
model = getattr(trainer, "policy_model", None) or trainer.model
print("BENCH " + json.dumps({"ends": ends, "trl": trl.__version__, "completion_tokens": lengths, "eos": eos,
                             "parameters": sum(p.numel() for p in model.parameters())}))
'''

REWARDS = '''"""The benchmark's GRPO reward, the same function for both frameworks: cheap, so the step time is the trainer's."""


def letters(prompts, completions, **fields):
    """Share of the letter e in each completion (any text varies, so groups have spread)."""
    out = []
    for completion in completions:
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        out.append(text.count("e") / max(len(text), 1))
    return out
'''


def ensure_trl(venv: Path = TRL_VENV, requirement: str = "trl") -> Path:
    """A scratch venv with TRL (and our torch pin), made once; returns its python."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"installing {requirement} into {venv} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", requirement], check=True)
    return python


def build_model(folder: Path) -> int:
    """A 10.8M-parameter Llama with the demo tokenizer, random weights (so GRPO's completions run to the token
    budget on both sides: equal work). Returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from alignkit.demo.assets import demo_model
    from alignkit.models import load_tokenizer

    tokenizer = load_tokenizer(__import__("alignkit.config", fromlist=["ModelConfig"]).ModelConfig(
        name_or_path=str(demo_model("base"))))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                         num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # PPO's reward model and critic start: the same backbone shape with a scalar head
    labels = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
    reward = LlamaForSequenceClassification(LlamaConfig(**labels, num_labels=1))
    reward.save_pretrained(folder.parent / "reward_model")
    tokenizer.save_pretrained(folder.parent / "reward_model")
    return sum(p.numel() for p in model.parameters())


def matmul_gflops(threads: int) -> float:
    """This CPU's fp32 matmul rate (GFLOP/s) at ``threads`` threads: the best of a few 1024^3 products."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = 0.0
    for _ in range(8):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * 1024**3 / (time.perf_counter() - start) / 1e9)
    return best


PACK_LENGTH = 256  # tokens per packed row: a few examples each, attention still cheap next to the matmuls


def alignkit_config(kind: str, spec: dict, out: Path, packed: bool = False) -> dict:
    """The alignkit config of the same work (a YAML file is written from it); ``packed``: the same examples per
    step, laid out in packed rows instead of padded ones."""
    base = {"model": {"name_or_path": spec["model"], "device": "cpu"},
            "data": {"train": spec["data"], "eval": None, "eval_fraction": 0.0, "max_length": spec["max_length"],
                     "duplicates": "keep", **({"packing": True, "pack_length": PACK_LENGTH} if packed else {})},
            "train": {"lr": spec["lr"], "max_steps": spec["steps"], "batch_size": spec["batch"], "warmup_ratio": 0.0,
                      "schedule": "constant", "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": 0},
            "run": {"output_dir": str(out), "log_every": 1, "eval_every": 0, "save_every": 0, "progress": False,
                    "threads": THREADS, "num_samples": 0}}
    if kind == "rm":
        del base["run"]["num_samples"]  # a reward model generates nothing
    if kind == "dpo":
        base["dpo"] = {"beta": 0.1, "loss": "sigmoid", "reference": "cached"}
    if kind == "grpo":
        base["data"] = {"train": spec["data"], "eval": None, "eval_fraction": 0.0, "max_length": spec["max_length"]}
        base["run"] = {k: v for k, v in base["run"].items() if k != "num_samples"} | {"sample_every": 0}
        base["sampling"] = {"max_new_tokens": spec["new_tokens"], "temperature": 1.0}
        base["grpo"] = {"group_size": spec["group"], "micro_batch_size": spec["batch"] * spec["group"]}
        base["rewards"] = [{"fn": f"{spec['bench_dir']}/rewards.py:letters"}]
    if kind == "ppo":
        base["data"] = {"train": spec["data"], "eval": None, "eval_fraction": 0.0, "max_length": spec["max_length"]}
        base["run"] = {k: v for k, v in base["run"].items() if k != "num_samples"} | {"sample_every": 0}
        base["sampling"] = {"max_new_tokens": spec["new_tokens"], "temperature": 1.0}
        base["ppo"] = {"ppo_epochs": spec["epochs"], "mini_batch_size": spec["mini_batch"],
                       "micro_batch_size": spec["mini_batch"], "kl_coef": 0.05, "critic_lr": spec["lr"]}
        base["rewards"] = [{"reward_model": spec["reward_model"], "normalize": False}]
    return base


def step_ends_alignkit(out: Path) -> tuple[list[float], dict]:
    rows = [json.loads(line) for line in (out / "training_metrics.jsonl").read_text().splitlines()]
    ends: dict[int, float] = {}
    lengths = []
    for row in rows:
        if row["step"] > 0 and row["step"] not in ends and any(k.startswith(("loss/", "reward/")) for k in row):
            ends[row["step"]] = row["time/wall_s"]
            if "length/mean" in row:
                lengths.append(row["length/mean"])
    summary = json.loads((out / "summary.json").read_text())
    params = summary.get("parameters", {})
    return [ends[s] for s in sorted(ends)], {"completion_tokens": lengths,
                                             "parameters": params.get("total") or params.get("actor_total")}


def run_once(side: str, kind: str, spec: dict, work: Path, trl_python: Path, index: int) -> tuple[float, dict]:
    """Seconds per steady-state step of one whole run, and its evidence."""
    import yaml

    out = work / f"{side}-{kind}-{index}"
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    if side.startswith("alignkit"):
        config = work / f"{side}-{kind}.yaml"
        config.write_text(yaml.safe_dump(alignkit_config(kind, spec, out, packed=side == "alignkit-packed")))
        result = subprocess.run([str(Path(sys.executable).parent / "alignkit"), kind, str(config)], env=env,
                                capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"alignkit {kind} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        ends, evidence = step_ends_alignkit(out)
    else:
        spec_file = work / f"{kind}.json"
        spec_file.write_text(json.dumps(spec))
        result = subprocess.run([str(trl_python), "-c", TRL_RUNNER, kind, str(spec_file), str(out), str(THREADS)],
                                env=env, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"TRL {kind} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        line = next(x for x in result.stdout.splitlines() if x.startswith("BENCH "))
        evidence = json.loads(line[6:])
        ends = evidence.pop("ends")
    warm = spec["warmup"]
    if len(ends) != spec["steps"]:
        raise RuntimeError(f"{side} {kind}: {len(ends)} step ends for {spec['steps']} steps")
    return (ends[-1] - ends[warm - 1]) / (len(ends) - warm), {**evidence, "steps": len(ends)}


def model_flops_per_step(kind: str, spec: dict, n: int, tokens: dict) -> float:
    """6 N per trained token (forward + backward), 2 N per generated token; DPO trains chosen and rejected."""
    if kind == "grpo":
        completions = spec["batch"] * spec["group"]
        generated = completions * tokens["completion"]
        return 2 * n * generated + 6 * n * completions * (tokens["prompt"] + tokens["completion"])
    if kind == "ppo":  # generation; old / reference / value / reward forwards; epochs of actor + critic updates
        length = tokens["prompt"] + tokens["completion"]
        return n * spec["batch"] * (2 * tokens["completion"] + 8 * length + spec["epochs"] * 12 * length)
    sequences = spec["batch"] * (2 if kind in ("dpo", "rm") else 1)
    return 6 * n * sequences * tokens["sequence"]


def mean_tokens(kind: str, spec: dict) -> dict:
    """Mean token counts of the workload's records under the shared tokenizer and chat template."""
    from alignkit.config import ModelConfig
    from alignkit.data.formats import Message
    from alignkit.data.templates import tokenize_prompt
    from alignkit.models import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(name_or_path=spec["model"]))
    rows = [json.loads(line) for line in open(spec["data"])][:200]
    prompt = statistics.fmean(len(tokenize_prompt(tokenizer, (Message("user", r["prompt"]),))) for r in rows)
    if kind in ("grpo", "ppo"):
        return {"prompt": prompt, "completion": spec["new_tokens"]}
    answers = [r[k] for r in rows for k in (("chosen", "rejected") if kind in ("dpo", "rm") else ("response",))]
    answer = statistics.fmean(len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 2 for a in answers)
    return {"sequence": prompt + answer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="A B B A rounds (each round runs both sides once)")
    parser.add_argument("--workloads", default="sft,rm,dpo,grpo,ppo")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the steady-state window")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="alignkit-bench-"))
    os.environ.update({"ALIGNKIT_DEMO_DIR": str(work / "demo"), "OMP_NUM_THREADS": str(THREADS),
                       "TOKENIZERS_PARALLELISM": "false"})
    from alignkit.demo.assets import demo_data

    trl_main_python = ensure_trl()
    trl_ppo_python = ensure_trl(TRL_PPO_VENV, "trl==1.12.0") if "ppo" in args.workloads else None
    model_dir = work / "model"
    n_params = build_model(model_dir)
    (work / "rewards.py").write_text(REWARDS)
    peak = matmul_gflops(THREADS)
    # the first 800 records of each demo set: enough for the steps run, and both sides' start-up (DPO's
    # reference pass over the whole set) stays short
    sets = {}
    for name in ("sft", "prefs", "prompts"):
        sets[name] = work / f"{name}.jsonl"
        sets[name].write_text("".join(demo_data(name).read_text().splitlines(keepends=True)[:800]))
    specs = {
        "sft": {"data": str(sets["sft"]), "batch": 32, "steps": 20, "lr": 1e-4, "max_length": 128},
        "rm": {"data": str(sets["prefs"]), "batch": 32, "steps": 20, "lr": 1e-5, "max_length": 128},
        "dpo": {"data": str(sets["prefs"]), "batch": 32, "steps": 20, "lr": 1e-6, "max_length": 128},
        "grpo": {"data": str(sets["prompts"]), "batch": 4, "group": 8, "new_tokens": 32, "steps": 12,
                 "lr": 1e-6, "max_length": 128},
        "ppo": {"data": str(sets["prompts"]), "batch": 16, "mini_batch": 8, "epochs": 4, "new_tokens": 32,
                "steps": 8, "lr": 1e-6, "max_length": 128, "reward_model": str(work / "reward_model")},
    }
    versions = subprocess.run([str(trl_main_python), "-c", "import trl, transformers, torch; print(trl.__version__, "
                               "transformers.__version__, torch.__version__)"], capture_output=True, text=True).stdout.split()
    print(f"TRL {versions[0]} (transformers {versions[1]}, torch {versions[2]}) vs alignkit; model {n_params / 1e6:.1f}M "
          f"parameters, fp32, CPU, {THREADS} threads; fp32 matmul limit {peak:.0f} GFLOP/s"
          + ("; PPO against TRL 1.12 (the last release with PPO)" if trl_ppo_python else ""), flush=True)
    rows = []
    for kind in args.workloads.split(","):
        spec = {**specs[kind], "model": str(model_dir), "bench_dir": str(work), "warmup": args.warmup}
        tokens = mean_tokens(kind, spec)
        sides = ["alignkit", "trl"] + (["alignkit-packed"] if kind in ("sft", "rm", "dpo") else [])
        trl_python = trl_ppo_python if kind == "ppo" else trl_main_python
        times: dict[str, list[float]] = {side: [] for side in sides}
        evidence: dict[str, dict] = {}
        for r in range(args.rounds):
            for side in (sides if r % 2 == 0 else sides[::-1]):  # A B (C) C B A ...
                seconds, evidence[side] = run_once(side, kind, spec, work, trl_python, r)
                times[side].append(seconds)
            print(f"  {kind} round {r + 1}/{args.rounds}: " + ", ".join(f"{side} {times[side][-1]:.3f} s/step"
                                                                         for side in sides), flush=True)
        ratios = {side: [t / a for a, t in zip(times[side], times["trl"])] for side in sides if side != "trl"}
        if kind == "grpo":
            tokens = {**tokens, "completion": statistics.fmean(evidence["alignkit"]["completion_tokens"])}
        flops = model_flops_per_step(kind, spec, n_params, tokens)
        rows.append((kind, spec, times, ratios, flops, evidence))

    unit = {"sft": "examples/s", "rm": "pairs/s", "dpo": "pairs/s", "grpo": "steps/s", "ppo": "steps/s"}
    per_step = {"sft": lambda s: s["batch"], "rm": lambda s: s["batch"], "dpo": lambda s: s["batch"],
                "grpo": lambda s: 1, "ppo": lambda s: 1}
    print(f"\n{'workload':<18}{'unit':<12}{'alignkit':>10}{'TRL':>10}{'ratio median [min, max]':>27}"
          f"{'MFU':>8}{'MFU TRL':>9}")
    for kind, spec, times, ratios, flops, _ in rows:
        t = statistics.median(times["trl"])
        for side, side_ratios in ratios.items():
            a = statistics.median(times[side])
            name = kind + (" (packed)" if side == "alignkit-packed" else "")
            print(f"{name:<18}{unit[kind]:<12}{per_step[kind](spec) / a:>10.2f}{per_step[kind](spec) / t:>10.2f}"
                  f"{statistics.median(side_ratios):>12.2f} [{min(side_ratios):.2f}, {max(side_ratios):.2f}]"
                  f"{flops / a / 1e9 / peak:>10.1%}{flops / t / 1e9 / peak:>9.1%}")
        if kind == "grpo":
            gen = spec["batch"] * spec["group"] * spec["new_tokens"]
            a = statistics.median(times["alignkit"])
            print(f"{'':<18}{'gen tok/s':<12}{gen / a:>10.0f}{gen / t:>10.0f}")
    print("\nevidence of equal work (last round):")
    for kind, spec, _, _, _, evidence in rows:
        for side in evidence:
            e = evidence[side]
            lengths = e.get("completion_tokens") or []
            extra = f", mean completion tokens {statistics.fmean(lengths):.1f}" if lengths else ""
            if e.get("eos"):
                extra += f", rollouts stopped by EOS per step {statistics.fmean(e['eos']):.1f} of {spec['batch']}"
            unit = "rollout steps" if kind in ("grpo", "ppo") else "optimizer steps"
            print(f"  {kind:<5} {side:<16} {unit} {e['steps']}, parameters {e['parameters']:,}, batch "
                  f"{spec['batch']}{' prompts x ' + str(spec['group']) + ' completions' if kind == 'grpo' else ''}"
                  f"{' rollouts, ' + str(spec['epochs']) + ' epochs of mini-batches of ' + str(spec['mini_batch']) if kind == 'ppo' else ''}{extra}")


if __name__ == "__main__":
    main()
