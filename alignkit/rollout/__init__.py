"""The rollout layer PPO and GRPO share, and the policy evaluator the recipes and the demo share.

core.py      the ``Rollout`` dataclass; prompts -> sampled, scored, gathered ``Rollout`` (``collect``)
engines.py   generation engines behind one interface: ``hf`` (transformers) and ``vllm`` (colocated)
evaluate.py  one policy evaluator: greedy (or sampled) answers scored by reward sources
"""
