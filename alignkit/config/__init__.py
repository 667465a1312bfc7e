"""YAML -> typed, frozen, validated config objects.

Every recipe has one config class built from shared sections (``model``, ``data``, ``train``, ``run``). Each field
carries a one-line description (it is what ``alignkit <recipe> --help`` prints) and a default that works on the
demo. Errors name the file, the line when it can be found, the dotted key, the value and what was expected; an
unknown key suggests the closest valid one.

The package: ``base`` (the shared sections, RecipeConfig, refusals), ``loading`` (files, overrides, errors, the
path walk), ``preference`` (DPO, KTO, RM), ``prm`` (the process reward model), ``rl`` (PPO, GRPO, online DPO, reward sources, sampling), ``distill`` (knowledge distillation), ``evaluation`` (eval,
generate), ``cai`` (Constitutional AI data). Everything is importable from ``alignkit.config``.
"""

from .base import *  # noqa: F401,F403
from .cai import *  # noqa: F401,F403
from .distill import *  # noqa: F401,F403
from .evaluation import *  # noqa: F401,F403
from .loading import *  # noqa: F401,F403
from .preference import *  # noqa: F401,F403
from .prm import *  # noqa: F401,F403
from .rl import *  # noqa: F401,F403
from .rrhf import *  # noqa: F401,F403
