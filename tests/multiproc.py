"""Run recipes in child processes: N processes on gloo (equivalence tests) and runs killed by SIGKILL (crash tests).

Children come from a forkserver that has torch, transformers and alignkit imported but has never run a torch op:
forking it is safe (no OpenMP pool to inherit) and costs no import time, which keeps dozens of runs affordable.
A child gets its config as a plain dict and writes everything to its run folder; the parent reads the artifacts.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import time
from pathlib import Path

_CTX = mp.get_context("forkserver")
_CTX.set_forkserver_preload(["torch", "transformers", "accelerate", "peft", "alignkit.cli", "multiproc",
                             *(f"alignkit.recipes.{r}" for r in ("sft", "rm", "dpo", "kto", "grpo", "ppo"))])

RECIPES = ("sft", "rm", "dpo", "kto", "grpo", "ppo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(recipe: str, cfg: dict, resume: str | None, env: dict, kill_at: tuple | None) -> None:
    """Entry point of a child process: environment, optional kill point, then the recipe."""
    os.environ.update(env)
    import torch

    torch.set_num_threads(1)
    if kill_at is not None:
        arm_kill(*kill_at)
    from alignkit.cli import RECIPES as CLI_RECIPES
    from alignkit.config import validate

    spec = CLI_RECIPES[recipe]
    try:
        spec.train(validate(spec.config, cfg), resume)
    except Exception as exc:  # for the parent to read; the exit code says only that it failed
        if os.environ.get("ALIGNKIT_CHILD_ERRORS"):
            error_file = Path(os.environ["ALIGNKIT_CHILD_ERRORS"]) / f"rank-{os.environ.get('RANK', '0')}.txt"
            error_file.write_text(f"{type(exc).__name__}: {exc}")
        raise


def arm_kill(where: str, step: int) -> None:
    """SIGKILL this process at a chosen point, with no cleanup of any kind (as the OOM killer or a lost node would):

    - ``state``: inside the checkpoint write for ``step``, after the weights and optimizer are on disk but before
      the trainer state that marks the checkpoint complete;
    - ``promote``: between the two renames that swap a finished checkpoint folder into place;
    - ``metrics``: while the metrics file is first rewritten with ``step``'s row in it (the metrics are rewritten at
      every logging step, so this is after step ``step - 1``'s checkpoint and before ``step``'s);
    - ``after``: right after the checkpoint at ``step`` is complete.
    """
    from alignkit import checkpoint, tracking

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def current_step(path) -> int | None:
        name = Path(path).name.lstrip(".")
        return int(name.split("-")[1].split(".")[0]) if name.startswith("step-") else None

    real_json, real_promote, real_text = checkpoint.atomic_write_json, checkpoint.promote, tracking.atomic_write_text
    real_save = checkpoint.save_checkpoint
    if where == "state":
        def write_json(path, obj):
            if Path(path).name == checkpoint.STATE_FILE and obj.get("step") == step:
                die()
            real_json(path, obj)

        checkpoint.atomic_write_json = write_json
    elif where == "promote":
        def promote(tmp, path):
            if current_step(path) == step:
                os.replace(tmp, tmp.with_name(tmp.name + ".moved"))  # the first rename happened, the second not
                die()
            real_promote(tmp, path)

        checkpoint.promote = promote
    elif where == "metrics":
        def write_text(path, text):
            if Path(path).name == tracking.METRICS_JSONL and text and json.loads(text.splitlines()[-1])["step"] == step:
                Path(path).with_name(f".{Path(path).name}.killed.tmp").write_text(text[: len(text) // 2])
                die()  # inside the rewrite: the new file half on disk, the old one in place
            real_text(path, text)

        tracking.atomic_write_text = write_text
    elif where == "after":
        def save(accelerator, run_dir, at, state, keep):
            out = real_save(accelerator, run_dir, at, state, keep)
            if at == step:
                die()
            return out

        checkpoint.save_checkpoint = save
        from alignkit import runtime

        runtime.save_checkpoint = save
    else:
        raise ValueError(where)


def run_child(recipe: str, cfg: dict, resume: str | None = None, kill_at: tuple | None = None,
              kill_after_s: float | None = None, demo_dir: str | None = None) -> int:
    """One single-process run in a child; returns its exit code (-9 when killed). ``kill_after_s`` kills it from
    outside after that many seconds (a random point in time)."""
    env = {"ALIGNKIT_DEMO_DIR": demo_dir or os.environ["ALIGNKIT_DEMO_DIR"], "ACCELERATE_USE_CPU": "true"}
    proc = _CTX.Process(target=_child, args=(recipe, cfg, resume, env, kill_at))
    proc.start()
    if kill_after_s is not None:
        proc.join(kill_after_s)
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
    proc.join(600)
    return proc.exitcode


def run_processes(recipe: str, cfg: dict, world: int, timeout: float = 600, errors: Path | None = None) -> list[int]:
    """The same run on ``world`` CPU processes (gloo over loopback); returns their exit codes. With ``errors`` (a
    folder) a failing process writes its exception there, as rank-N.txt."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {"ALIGNKIT_DEMO_DIR": os.environ["ALIGNKIT_DEMO_DIR"], "ACCELERATE_USE_CPU": "true",
               "ALIGNKIT_CHILD_ERRORS": str(errors or ""),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)}
        proc = _CTX.Process(target=_child, args=(recipe, cfg, None, env, None))
        proc.start()
        procs.append(proc)
    deadline = time.time() + timeout
    for proc in procs:
        proc.join(max(1.0, deadline - time.time()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
    return [p.exitcode for p in procs]


# recipe -> (train set, eval set) of the demo world, and how many distinct records of each the small runs use
SMALL_SETS = {"sft": ("sft", None), "rm": ("prefs", "prefs_eval"), "dpo": ("prefs", None), "kto": ("kto", None),
              "grpo": ("prompts", "prompts_eval"), "ppo": ("prompts", "prompts_eval"), "distill": ("sft", None),
              "online_dpo": ("prompts", "prompts_eval"), "rrhf": ("ranked", None), "prm": ("prm_steps", "prm_eval")}


def small_data(recipe: str, folder: Path, n_train: int = 48, n_eval: int = 8) -> dict:
    """``data`` overrides pointing at small slices of the demo world's files (distinct records only): each child
    run then spends its time training, not tokenizing thousands of rows or caching their reference log-probs."""
    from alignkit.demo.assets import demo_data

    folder.mkdir(parents=True, exist_ok=True)
    train_set, eval_set = SMALL_SETS[recipe]

    def head(name: str, n: int, skip: int = 0) -> str:
        lines = list(dict.fromkeys(demo_data(name).read_text().splitlines()))[skip : skip + n]
        out = folder / f"{recipe}-{name}-{skip}.jsonl"
        out.write_text("\n".join(lines) + "\n")
        return str(out)

    train = head(train_set, n_train)
    evaluation = head(eval_set, n_eval) if eval_set else head(train_set, n_eval, skip=n_train)
    return {"train": train, "eval": evaluation}


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "training_metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "final" / "model.safetensors"))
