import pytest
from pydantic import ValidationError

from alignkit.cli import build_parser, main
from alignkit.config import ConfigError, SFTConfig, describe_fields, load_config, parse_overrides


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_validate():
    cfg = load_config(SFTConfig)
    assert cfg.train.lr == 2e-5 and cfg.data.train == "demo:sft"


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = write(tmp_path, "model:\n  name_or_path: x\ntrain:\n  batch_size: 4\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, path)
    assert str(err.value) == f'{path} line 5: unknown key "train.lrr" (did you mean "train.lr"?)'


def test_unknown_section_suggests(tmp_path):
    path = write(tmp_path, "trian:\n  lr: 1\n")
    with pytest.raises(ConfigError, match='unknown key "trian" \\(did you mean "train"\\?\\)'):
        load_config(SFTConfig, path)


def test_wrong_type_and_range_name_key_value_and_expectation(tmp_path):
    path = write(tmp_path, "train:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r'line 2: key "train.lr" = -1 is invalid: Input should be greater than 0'):
        load_config(SFTConfig, path)
    with pytest.raises(ConfigError, match=r'key "train.batch_size" = \'many\' is invalid: Input should be a valid integer'):
        load_config(SFTConfig, None, ["train.batch_size=many"])
    with pytest.raises(ConfigError, match=r'key "model.adapter" = \'lorra\' is invalid: Input should be .none., .lora., .qlora., .dora., .rslora., .ia3., .prefix. or .p_tuning_v2.'):
        load_config(SFTConfig, None, ["model.adapter=lorra"])


def test_overrides_parse_yaml_values_and_win(tmp_path):
    assert parse_overrides(["train.lr=1e-4", "data.packing=true", "run.report_to=[tensorboard]"]) == {
        "train": {"lr": 1e-4}, "data": {"packing": True}, "run": {"report_to": ["tensorboard"]}}
    path = write(tmp_path, "train:\n  lr: 0.5\n  batch_size: 3\n")
    cfg = load_config(SFTConfig, path, ["train.lr=0.25"])
    assert cfg.train.lr == 0.25 and cfg.train.batch_size == 3
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_overrides(["train.lr"])


def test_config_is_frozen():
    cfg = load_config(SFTConfig)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_cross_field_rule():
    with pytest.raises(ConfigError, match="run.merge_adapter needs model.adapter"):
        load_config(SFTConfig, None, ["run.merge_adapter=true"])


@pytest.mark.parametrize("recipe", ["sft", "rm", "dpo", "kto", "grpo", "ppo", "eval"])
def test_help_lists_every_field_with_description_and_default(recipe, capsys):
    from alignkit.cli import RECIPES

    with pytest.raises(SystemExit):
        build_parser().parse_args([recipe, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for key, default, description in describe_fields(RECIPES[recipe].config):
        assert len(description) > 5, f"{key} has no description"
        assert f"{key} {description.split(';')[0][:30]}" in out and f"[default: {default}]" in out, key
    if recipe == "sft":
        assert "train.lr" in out and "[default: 2e-05]" in out


def test_cli_reports_config_typo_as_one_line(tmp_path, capsys):
    path = write(tmp_path, "train:\n  learning_rate: 0.1\n")
    assert main(["sft", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alignkit: error: ") and 'unknown key "train.learning_rate"' in err and "\n" not in err


def test_partial_section_keeps_the_recipe_defaults():
    from alignkit.config import DPOConfig, KTOConfig

    cfg = load_config(KTOConfig, None, ["data.max_length=96"])
    assert cfg.data.train == "demo:kto" and cfg.data.max_length == 96
    assert load_config(DPOConfig, None, ["train.batch_size=4"]).train.lr == 5e-7
