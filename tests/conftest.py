"""Shared fixtures. The demo world, tiny model and demo SFT model are built once per test session, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def demo_dir(tmp_path_factory) -> Path:
    """Every ``demo:`` name resolves inside this session's temporary folder (never the user's cache); tokenized
    datasets are cached in the session's own folder too (shared by the session's runs, never the user's)."""
    path = Path(os.environ.get("ALIGNKIT_TEST_DEMO_DIR") or tmp_path_factory.mktemp("demo"))
    os.environ["ALIGNKIT_DEMO_DIR"] = str(path)
    os.environ["ALIGNKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(2)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``): they run as fast on one
    thread as on two, and leave the other core to the rest."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_base(demo_dir) -> Path:
    from alignkit.demo.assets import demo_model

    return demo_model("base")


@pytest.fixture(scope="session")
def demo_sft(demo_dir) -> Path:
    """The demo SFT model (trained once, about a minute on 2 cores)."""
    from alignkit.demo.assets import demo_model

    return demo_model("sft")


@pytest.fixture(scope="session")
def demo_tokenizer(demo_base):
    from alignkit.config import ModelConfig
    from alignkit.models import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path=str(demo_base)))


@pytest.fixture(scope="session")
def demo_rm(demo_sft) -> Path:
    """The demo reward model (trained once from demo:sft); PPO's default reward and critic."""
    from alignkit.demo.assets import demo_model

    return demo_model("rm")
