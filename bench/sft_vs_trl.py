"""SFT throughput and memory: alignkit vs TRL's SFTTrainer on the same model, data and settings.

    .venv/bin/python bench/sft_vs_trl.py [--steps 200] [--batch-size 32] [--repeats 3]

TRL is installed by this script into its own scratch venv (bench/.venv-trl, with the same torch pin) and run as a
separate process; alignkit never imports it. Both train the demo's tiny Llama from scratch on the demo SFT set with
loss on the response only, the same batch size, learning rate, schedule, max length and number of optimizer steps,
on the CPU. Each run is a whole process timed from outside; peak memory is that process's maximum resident set
(from ``wait4``, what ``/usr/bin/time -v`` reports). The script prints the median of each figure
side by side. It never passes or fails on time: it prints figures.
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

TRL_RUNNER = r'''
import json, sys, time
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

model_dir, data_file, out_dir, steps, batch, lr, max_len = sys.argv[1:8]
torch_threads = 2
import torch
torch.set_num_threads(torch_threads)
rows = [json.loads(l) for l in open(data_file)]
data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                           "completion": [{"role": "assistant", "content": r["response"]}]} for r in rows])
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
args = SFTConfig(output_dir=out_dir, max_steps=int(steps), per_device_train_batch_size=int(batch),
                 learning_rate=float(lr), lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.01,
                 max_length=int(max_len), completion_only_loss=True, logging_steps=50, save_strategy="no",
                 report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0, bf16=False)
trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
start = time.time()
out = trainer.train()
print("BENCH", json.dumps({"train_time_s": time.time() - start, "final_loss": out.training_loss}))
'''


def ensure_trl() -> Path:
    python = TRL_VENV / "bin" / "python"
    if not python.exists():
        print(f"installing TRL into {TRL_VENV} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "trl"], check=True)
    version = subprocess.run([str(python), "-c", "import trl; print(trl.__version__)"], capture_output=True, text=True)
    print(f"TRL {version.stdout.strip() or '(version unknown)'}", flush=True)
    return python


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one child process; the RSS is that child's own (``wait4``)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.time()
        child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.time() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read()
        if child.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed:\n{stdout[-2000:]}\n{err.read()[-4000:]}")
    return wall, usage.ru_maxrss / 1024, stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    demo_dir = Path(tempfile.mkdtemp(prefix="alignkit-bench-"))
    env = {**os.environ, "ALIGNKIT_DEMO_DIR": str(demo_dir), "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update(env)
    from alignkit.demo.assets import demo_data, demo_model

    model_dir, data_file = demo_model("base"), demo_data("sft")
    trl_python = ensure_trl()
    alignkit_bin = str(Path(sys.executable).parent / "alignkit")
    results: dict[str, list[dict]] = {"alignkit": [], "trl": []}
    for repeat in range(args.repeats):
        out = demo_dir / f"ak-{repeat}"
        wall, peak, _ = timed([alignkit_bin, "sft", f"model.name_or_path={model_dir}", "data.train=demo:sft",
                               "data.eval_fraction=0", f"data.max_length={args.max_length}",
                               f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}",
                               f"train.lr={args.lr}", "train.warmup_ratio=0.05", "train.weight_decay=0.01",
                               "run.num_samples=0", "run.threads=2", "run.log_every=1", "run.progress=false", f"run.output_dir={out}",
                               "model.device=cpu"], env)
        summary = json.loads((out / "summary.json").read_text())
        rows = [json.loads(x) for x in (out / "training_metrics.jsonl").read_text().splitlines()]
        losses = [r["loss/train"] for r in rows if "loss/train" in r]  # one per logged step (log_every 1)
        results["alignkit"].append({"wall_s": wall, "peak_mib": peak, "train_s": summary["train_time_s"],
                                    "final_loss": sum(losses) / len(losses)})
        wall, peak, stdout = timed([str(trl_python), "-c", TRL_RUNNER, str(model_dir), str(data_file),
                                    str(demo_dir / f"trl-{repeat}"), str(args.steps), str(args.batch_size),
                                    str(args.lr), str(args.max_length)], env)
        line = next(x for x in stdout.splitlines() if x.startswith("BENCH "))
        trl = json.loads(line[6:])
        results["trl"].append({"wall_s": wall, "peak_mib": peak, "train_s": trl["train_time_s"],
                               "final_loss": trl["final_loss"]})
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)

    examples = args.steps * args.batch_size
    print(f"\nSFT, tiny Llama (0.85M params) on the demo set, {args.steps} steps x batch {args.batch_size}, CPU, "
          f"median of {args.repeats} runs")
    print(f"{'figure':<28}{'alignkit':>12}{'TRL':>12}{'alignkit/TRL':>14}")
    for key, label in (("train_s", "train loop time (s)"), ("wall_s", "whole process wall (s)"),
                       ("peak_mib", "peak RSS (MiB)")):
        a = statistics.median(r[key] for r in results["alignkit"])
        t = statistics.median(r[key] for r in results["trl"])
        print(f"{label:<28}{a:>12.2f}{t:>12.2f}{a / t:>14.2f}")
    a = statistics.median(examples / r["train_s"] for r in results["alignkit"])
    t = statistics.median(examples / r["train_s"] for r in results["trl"])
    print(f"{'examples / s (train loop)':<28}{a:>12.1f}{t:>12.1f}{a / t:>14.2f}")
    print(f"{'train loss, mean of run':<28}{statistics.mean(r['final_loss'] for r in results['alignkit']):>12.3f}"
          f"{statistics.mean(r['final_loss'] for r in results['trl']):>12.3f}")


if __name__ == "__main__":
    main()
