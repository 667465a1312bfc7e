"""alignkit: the LLM post-training pipeline (SFT -> reward model -> PPO / DPO / KTO / GRPO -> eval) from one YAML."""

__version__ = "0.1.0"
