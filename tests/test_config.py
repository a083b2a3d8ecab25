"""Config files and overrides are checked on load: one line naming the file (or override) and field."""

from __future__ import annotations

import os
import re

import pytest
import torch

from workbench.build import build_model
from workbench.config import Config, DataConfig, list_presets, load_config, resolve_config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=0", "data.batch_size must be at least 1, got 0"),
        ("log_interval=0", "log_interval must be at least 1, got 0"),
        ("checkpoint_interval=0", "checkpoint_interval must be at least 1, got 0"),
        ("grad_accum=0", "grad_accum must be at least 1, got 0"),
        ("iters=0", "iters must be at least 1, got 0"),
        ("optim.lr=-0.1", "optim.lr must be greater than 0, got -0.1"),
        ("eval.mode=sliding", "eval.mode must be one of whole, slide, got 'sliding'"),
        ("eval.scales=[]", r"eval.scales must be a non-empty list, each greater than 0, got \(\)"),
        ("data.ratio_range=[2, 1]", r"data.ratio_range must be \[low, high\], low <= high"),
        ("amp=fp8", "amp must be one of auto, fp32, bf16, fp16, none, got 'fp8'"),
        ("data.flip=1.5", r"data.flip must be in \[0.0, 1.0\], got 1.5"),
        ("iters=many", "iters: expected int, got 'many'"),
        ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
        ("optim.lrr=0.1", "unknown key 'lrr' in optim; did you mean 'lr'"),
    ],
)
def test_bad_overrides_are_one_line_naming_the_override_and_field(override, message):
    with pytest.raises(ValueError, match=f"^override '{override[:6]}.*: {message}") as error:
        load_config("tiny_setr", [override])
    assert "\n" not in str(error.value)


def test_numbers_in_exponent_form_are_read_as_numbers(tmp_path):
    """YAML 1.1 reads 5e-4 (no dot) as a string; a float field takes it as the number it is."""
    assert load_config("tiny_setr", ["optim.lr=5e-4"]).optim.lr == 5e-4
    path = tmp_path / "run.yaml"
    path.write_text("model: {name: setr_naive_vit_base}\noptim: {lr: 1e-3}\n")
    assert load_config(path).optim.lr == 1e-3


def test_a_bad_value_in_the_file_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  batch_size: 0\n")
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(path))}: data.batch_size must be at least 1, got 0$"
    ):
        load_config(path)


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("iters: 10\ndata:\n  scale: [64, 64\n  batch_size: 2\n")
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(path))}: YAML syntax error at line 4, column \d+: [^\n]+$"
    ):
        load_config(path)


def test_unknown_keys_suggest_close_names(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  batch_sise: 2\n")
    with pytest.raises(
        ValueError,
        match=rf"^{re.escape(str(path))}: unknown key 'batch_sise' in data; did you mean 'batch_size'\?$",
    ):
        load_config(path)
    path.write_text("optimiser: {lr: 0.1}\n")
    with pytest.raises(ValueError, match="unknown key 'optimiser'; did you mean 'optim'"):
        load_config(path)


def test_validation_also_guards_configs_built_or_edited_in_python():
    with pytest.raises(ValueError, match=r"data\.batch_size must be at least 1, got 0"):
        Config(data=DataConfig(batch_size=0))
    cfg = Config()
    cfg.eval.mode = "slid"  # notebooks edit attributes; validate() runs the same checks
    with pytest.raises(ValueError, match=r"eval\.mode must be one of whole, slide, got 'slid'"):
        cfg.validate()


def test_a_typo_in_model_kwargs_names_the_key_and_the_model():
    cfg = load_config("tiny_setr", ["model.kwargs.embed_dimm=32"])
    with (
        torch.device("meta"),
        pytest.raises(
            ValueError, match=r"^model.kwargs.embed_dimm: setr_naive_vit_base takes no argument 'embed_dimm'$"
        ),
    ):
        build_model(cfg)


def test_presets_resolve_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"demo_gpvit", "tiny_setr", "tiny_gpvit"} <= set(list_presets())
    for spelling in ("demo_gpvit", "demo_gpvit.yaml", "configs/demo_gpvit.yaml"):
        assert resolve_config(spelling).parent.name == "configs"
        assert resolve_config(spelling).parent.parent.name == "workbench"
    assert load_config("demo_gpvit").model.name == "gpvit_l1_segformer"
    (tmp_path / "demo_gpvit").write_text("iters: 7\n")  # a file of that name wins over the preset
    assert load_config("demo_gpvit").iters == 7
    with pytest.raises(
        ValueError, match=r"config 'demo_gpvt' does not exist as a file or a preset; presets: .*demo_gpvit"
    ):
        load_config("demo_gpvt")


def test_the_repository_configs_folder_is_the_packaged_presets():
    repo_configs = os.path.join(os.path.dirname(__file__), "..", "configs")
    assert os.path.samefile(repo_configs, resolve_config("tiny_setr").parent)
