"""Options are defined once: the trainer's flags are generated from the config dataclasses, the
variant flagfiles resolve to their main config plus their stated differences, config.json round-trips,
and the console stays quiet (TensorFlow's own logs hidden, progress lines off a terminal)."""
import dataclasses
import json
import pathlib

import pytest
from absl import flags

from tripled_tf import cli, config_flags
from tripled_tf import train as train_cli
from tripled_tf.models.depth_model import DepthModelConfig
from tripled_tf.models.tripled_net import TripleDConfig
from tripled_tf.train_callbacks import ProgressLines, progress_callbacks
from tripled_tf.train_config import TrainConfig

FLAGS = flags.FLAGS
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
# Fields whose flags the entry point defines by hand: {field: its flags}.
MAPPED_FIELDS = {"intrinsics": ("fx", "fy", "cx", "cy"), "log_dir": ("log_dir",),
                 "pose_input_size": ("pose_height", "pose_width")}
# Each variant flagfile = its main config + exactly these differences (TrainConfig and model-config
# fields, log_dir left out).
VARIANTS = {
    "kitti_640x192.cfg": ("kitti.cfg", {"height": 192, "width": 640}),
    "kitti_baseline.cfg": ("kitti.cfg", {"model": "baseline"}),
    "kitti_d2g.cfg": ("kitti.cfg", {"pretext_task": "d2g"}),
    "kitti_dg2c.cfg": ("kitti.cfg", {"pretext_task": "dg2c"}),
    "kitti_md2c.cfg": ("kitti.cfg", {"pretext_task": "d2c", "head_mask": True}),
    "kitti_mdg2c.cfg": ("kitti.cfg", {"pretext_task": "dg2c", "head_mask": True}),
    "kitti_moco.cfg": ("kitti.cfg", {"encoder_weights": "moco"}),
    "kitti_simclr.cfg": ("kitti.cfg", {"encoder_weights": "simclr"}),
    "kitti_supervised_init.cfg": ("kitti.cfg", {"encoder_weights": "supervised",
                                                "pose_encoder_weights": ""}),
    "kitti_reference.cfg": ("kitti.cfg", {"sampling": "torch_default",
                                          "flip_keeps_intrinsics": True}),
    "kitti_md2.cfg": ("kitti.cfg", {
        "model": "baseline", "depth_decoder": "monodepth2", "height": 192, "width": 640,
        "decay_epochs": (15,), "decay_factor": 0.1, "warmup_steps": 0, "grad_clip_norm": 0.0,
        "jitter_per_frame": False, "depth_layers": 18, "encoder_weights": "supervised",
        "pose_encoder_weights": "", "dropout": 0.0}),
    "demo_baseline.cfg": ("demo.cfg", {"model": "baseline", "summary_every": 50,
                                       "image_summary_every": 500}),
}


def _resolved(*args) -> dict:
    """Every TrainConfig and model-config field the trainer builds from ``args`` (log_dir aside)."""
    FLAGS.unparse_flags()
    FLAGS(["tripled_tf.train", *args])
    train_config, model_config = train_cli.configs_from_flags()
    values = {**dataclasses.asdict(train_config), **dataclasses.asdict(model_config)}
    values.pop("log_dir")
    return values


@pytest.mark.parametrize("config_class", [TrainConfig, TripleDConfig])
def test_every_field_has_a_flag_whose_default_is_the_field_default(config_class):
    trainer_flags = {f.name for f in FLAGS.get_flags_for_module(train_cli)} | {"log_dir"}
    for field in dataclasses.fields(config_class):
        if field.name in MAPPED_FIELDS:
            assert set(MAPPED_FIELDS[field.name]) <= trainer_flags, field.name
            assert not field.metadata["flag"], field.name
            continue
        assert field.name in trainer_flags, f"{config_class.__name__}.{field.name} has no flag"
        assert FLAGS[field.name].help.endswith(field.metadata["help"]), field.name  # enums: "<a|b>: "
        assert config_flags.flag_default_as_field(config_class, field) == field.default, field.name


def test_flags_without_arguments_build_the_default_configs(restore_flags):
    FLAGS.unparse_flags()
    FLAGS(["tripled_tf.train"])
    train_config, model_config = train_cli.configs_from_flags()
    assert train_config == TrainConfig()
    assert model_config == TripleDConfig()  # also pose_input_size from --pose_height --pose_width
    FLAGS(["tripled_tf.train", "--model=baseline"])
    _, baseline = train_cli.configs_from_flags()
    # The flags' defaults are the main model's: ResNet-50 (DepthModelConfig's own default is 18).
    assert baseline == DepthModelConfig(depth_layers=50)


def test_generated_flags_validate_and_convert(restore_flags):
    with pytest.raises(flags.IllegalFlagValueError):
        FLAGS(["tripled_tf.train", "--depth_layers=20"])  # choices from the field
    with pytest.raises(flags.IllegalFlagValueError):
        FLAGS(["tripled_tf.train", "--accumulate_steps=0"])  # lower_bound from the field
    FLAGS.unparse_flags()
    FLAGS(["tripled_tf.train", "--depth_layers=34", "--disentangle_levels=1,0,0,0,1",
           "--decay_steps=10,20", "--dropout=0.25"])
    train_config, model_config = train_cli.configs_from_flags()
    assert model_config.depth_layers == 34 and model_config.dropout == 0.25
    assert model_config.disentangle_levels == (True, False, False, False, True)
    assert train_config.decay_steps == (10, 20)
    FLAGS(["tripled_tf.train", "--decay_steps=10,x"])
    with pytest.raises(ValueError, match="--decay_steps"):
        train_cli.configs_from_flags()


def test_config_json_round_trips(restore_flags, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    FLAGS.unparse_flags()
    FLAGS(["tripled_tf.train", "--flagfile=configs/kitti_md2c.cfg"])
    train_config, model_config = train_cli.configs_from_flags()
    saved = json.loads(json.dumps({"train": dataclasses.asdict(train_config),
                                   "model": model_config.to_dict()}))
    assert TrainConfig(**saved["train"]) == train_config
    assert TripleDConfig.from_dict(saved["model"]) == model_config


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_is_its_main_config_plus_its_differences(variant, restore_flags, repo_root,
                                                         monkeypatch):
    monkeypatch.chdir(repo_root)  # flagfile paths are relative to where the trainer runs
    main, differences = VARIANTS[variant]
    assert (CONFIG_DIR / variant).read_text().count(f"--flagfile=configs/{main}\n") == 1
    base = _resolved(f"--flagfile=configs/{main}")
    resolved = _resolved(f"--flagfile=configs/{variant}")
    changed = {k: v for k, v in resolved.items() if base.get(k) != v}
    if differences.get("model") == "baseline":  # TripleDNet's own fields are gone, not changed
        changed = {k: v for k, v in changed.items() if k in resolved}
    assert changed == differences


def test_variant_flagfiles_work_from_any_folder(restore_flags, tmp_path, monkeypatch, repo_root):
    monkeypatch.chdir(repo_root)
    expected = _resolved("--flagfile=configs/kitti_d2g.cfg")
    monkeypatch.chdir(tmp_path)  # absl alone would look for tmp_path/configs/kitti.cfg
    argv = cli.expand_flagfiles(["prog", f"--flagfile={CONFIG_DIR / 'kitti_d2g.cfg'}", "--seed=3"])
    assert not any(arg.startswith("--flagfile") for arg in argv), argv
    assert argv[-1] == "--seed=3"  # the command line still overrides the files
    assert _resolved(*argv[1:-1]) == expected
    missing = cli.expand_flagfiles(["prog", "--flagfile=no_such.cfg"])
    assert missing == ["prog", "--flagfile=no_such.cfg"]  # left for absl's own error


def test_verbose_level_is_read_before_the_flags_exist(tmp_path):
    flagfile = tmp_path / "x.cfg"
    flagfile.write_text("--verbose=2\n--some_other_flag=1\n")
    assert cli._verbose_level(["prog"]) == 1
    assert cli._verbose_level(["prog", "--verbose=0"]) == 0
    assert cli._verbose_level(["prog", f"--flagfile={flagfile}"]) == 2
    assert cli._verbose_level(["prog", f"--flagfile={flagfile}", "--verbose=1"]) == 1
    assert cli._verbose_level(["prog", "--verbose=x"]) == 1  # the real parse reports it


def test_progress_lines_when_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: False, raising=False)
    verbose, callbacks = progress_callbacks(TrainConfig(summary_every=2), 5, 0, is_chief=True)
    assert verbose == 0 and isinstance(callbacks[0], ProgressLines)
    assert progress_callbacks(TrainConfig(verbose=0), 5, 0, is_chief=True) == (0, [])
    assert progress_callbacks(TrainConfig(), 5, 0, is_chief=False) == (0, [])
    lines = callbacks[0]
    lines.on_train_begin()
    for batch in range(5):
        lines.on_train_batch_end(batch, {"loss": 0.5})
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out] == ["2/5", "4/5", "5/5"], out
    assert all("\x1b" not in line and "\r" not in line for line in out)
