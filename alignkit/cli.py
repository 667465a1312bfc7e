"""``alignkit <recipe> CONFIG.yaml [key=value ...]``, ``alignkit demo``.

Each recipe's ``--help`` lists every config field with its default and one-line description.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .config import (
    ConfigError,
    DPOConfig,
    EvalConfig,
    GRPOConfig,
    KTOConfig,
    PPOConfig,
    RMConfig,
    SFTConfig,
    describe_fields,
    load_config,
)
from .data.formats import DataError


@dataclass(frozen=True)
class Recipe:
    config: type
    train: Callable  # (cfg, resume) -> summary
    summary: str


def _lazy(module: str) -> Callable:
    """The recipe's train function, imported on use (keeps `alignkit --help` fast)."""

    def run(cfg, resume):
        from importlib import import_module

        return import_module(f"alignkit.recipes.{module}").train(cfg, resume=resume)

    return run


def _run_eval(cfg, resume):
    from .eval import run_eval

    return run_eval(cfg)


RECIPES: dict[str, Recipe] = {
    "sft": Recipe(SFTConfig, _lazy("sft"), "supervised fine-tuning on prompt/response or chat data"),
    "rm": Recipe(RMConfig, _lazy("rm"), "reward model (Bradley-Terry on pairs, all-pairs / Plackett-Luce on rankings)"),
    "eval": Recipe(EvalConfig, _run_eval,
                   "evaluate a trained model on held-out data (reward-model mode: accuracy, margins, calibration)"),
    "ppo": Recipe(PPOConfig, _lazy("ppo"), "PPO with a critic (RLHF): actor, critic, frozen reference and reward"),
    "grpo": Recipe(GRPOConfig, _lazy("grpo"), "GRPO / GSPO / Dr.GRPO / RLOO / REINFORCE++ with pluggable rewards"),
    "dpo": Recipe(DPOConfig, _lazy("dpo"), "DPO and its family (cDPO, robust, IPO, hinge, SimPO, ORPO) on preference pairs"),
    "kto": Recipe(KTOConfig, _lazy("kto"), "KTO on unpaired desirable / undesirable examples"),
}


def _fields_help(config_cls: type) -> str:
    rows = describe_fields(config_cls)
    width = max(len(k) for k, _, _ in rows)
    lines = ["config fields (YAML keys, or key=value overrides):"]
    for key, default, description in rows:
        lines.append(f"  {key:<{width}}  {description} [default: {default}]")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignkit",
        description="The LLM post-training pipeline from one YAML file: SFT, reward model, PPO, DPO, KTO, GRPO, eval.",
        epilog="Run `alignkit <command> --help` for every config field of a recipe.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, recipe in RECIPES.items():
        p = sub.add_parser(name, help=recipe.summary, description=f"alignkit {name}: {recipe.summary}",
                           epilog=_fields_help(recipe.config), formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("config", nargs="?", help="YAML config file (omit to use the defaults: the demo task)")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4")
        p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                       help="continue from the latest checkpoint (of RUN_DIR, or of run.output_dir)")
    demo = sub.add_parser("demo", help="the offline showcase on the built-in arithmetic world (no downloads)")
    demo.add_argument("--out", default="runs/demo", help="folder for the demo's world, models and runs")
    demo.add_argument("--fast", action="store_true", help="fewer SFT steps (a smoke run)")
    demo.add_argument("--stages", default=None, help="comma-separated stages after SFT and the RM (default: all): dpo,simpo,kto,ppo,grpo,gspo")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "demo":
            from .demo.run import run_demo

            run_demo(args.out, fast=args.fast, stages=args.stages.split(",") if args.stages else None)
            return 0
        recipe = RECIPES[args.command]
        config, overrides = args.config, list(args.overrides)
        if config and "=" in config and not config.endswith((".yaml", ".yml")):
            config, overrides = None, [config, *overrides]  # only overrides were given
        cfg = load_config(recipe.config, config, overrides)
        recipe.train(cfg, args.resume)
        return 0
    except (ConfigError, DataError, FileNotFoundError) as exc:
        print(f"alignkit: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"alignkit: stopped: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
