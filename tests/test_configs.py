"""Every flagfile in configs/ is well formed and trains: one tiny in-process step per config.

The configs are globbed, so a new configs/*.cfg is covered without editing this file. Each one is
parsed by absl exactly as ``python -m tripled_tf.train --flagfile=...`` would parse it, with overrides
that shrink the run (synthetic data, 64x192, batch 1, 1 step, random init, eager), and the trainer's
library entry point is called in this process: a subprocess per config would cost ~10 s of start-up.
"""
import json
import math
import pathlib

import pytest
from absl import flags

from tripled_tf import train as train_cli
from tripled_tf.training import train

FLAGS = flags.FLAGS
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIG_NAMES = sorted(p.name for p in CONFIG_DIR.glob("*.cfg"))
# Configs that reproduce no paper row and say so differently in their first line.
NOT_PAPER_ROWS = {}
MODEL_CLASSES = {"tripled": "TripleDNet", "baseline": "MonoDepthModel"}
OVERRIDES = ["--dataset=synthetic", "--height=64", "--width=64", "--batch_size=1", "--num_steps=1",
             "--encoder_weights=none", "--pose_encoder_weights=none", "--extractor_weights=none",
             "--num_train_samples=2", "--num_val_samples=1",
             "--num_preview=1", "--verbose=0", "--run_eagerly", "--image_summary_every=0",
             # The pose net would otherwise see the references' 192x640 at every tiny step.
             "--pose_height=0", "--pose_width=0",
             # ResNet-50s are tested elsewhere (tests/test_resnet.py); here they would only add build
             # and eager-step time to every TripleD config.
             "--depth_layers=10", "--extractor_layers=10", "--pose_layers=10"]


def _trainer_flags():
    """Names of the flags the trainer defines (plus --log_dir, which absl.logging defines for it)."""
    return {f.name for f in FLAGS.get_flags_for_module(train_cli)} | {"log_dir"}


def _flag_lines(path: pathlib.Path):
    """The non-comment, non-blank lines of a flagfile (absl skips the others)."""
    lines = path.read_text().splitlines()
    return [line.strip() for line in lines
            if line.strip() and not line.startswith("#") and not line.startswith("//")]


def _included(line: str) -> pathlib.Path:
    """The flagfile a ``--flagfile=configs/x.cfg`` line includes (paths are relative to the
    repository root, where the trainer is run from)."""
    return CONFIG_DIR.parent / line.partition("=")[2]


def _cfg_values(path: pathlib.Path) -> dict:
    """{flag name: value string} as the file sets them, included flagfiles first (last one wins;
    --x -> "true", --nox -> "false")."""
    values = {}
    for line in _flag_lines(path):
        name, sep, value = line[2:].partition("=")
        if name == "flagfile":
            values.update(_cfg_values(_included(line)))
        elif sep:
            values[name] = value
        elif name in FLAGS:
            values[name] = "true"
        elif name.startswith("no") and name[2:] in FLAGS:
            values[name[2:]] = "false"
    return values


def _cfg_value(values: dict, name: str):
    """The parsed value the file gives flag ``name`` (the flag's default where the file is silent)."""
    if name not in values:
        return FLAGS[name].default
    return FLAGS[name].parser.parse(values[name])


def _distinct_runs():
    """The configs whose one-step runs differ: configs that differ only in what OVERRIDES replace
    (the encoders' init, the run folder; e.g. the init ablation rows) train identically here, so the
    first of each such group stands for the others (each is still parsed by the test above)."""
    replaced = {option[2:].partition("=")[0] for option in OVERRIDES} | {"log_dir"}
    seen, names = set(), []
    for name in CONFIG_NAMES:
        key = frozenset((k, v) for k, v in _cfg_values(CONFIG_DIR / name).items()
                        if k not in replaced)
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


def test_configs_are_found():
    assert {"kitti.cfg", "demo.cfg"} <= set(CONFIG_NAMES), CONFIG_NAMES


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_file_is_well_formed(name, repo_root):
    path = repo_root / "configs" / name
    first = path.read_text().splitlines()[0]
    assert first.startswith(NOT_PAPER_ROWS.get(name, "# Paper row:")), (name, first)
    known = _trainer_flags()
    lines = _flag_lines(path)
    assert lines, f"{name} sets no flag"
    for line in lines:
        assert line.startswith("--") and " " not in line.split("=", 1)[0], f"{name}: bad line {line!r}"
        name_part, sep, value = line[2:].partition("=")
        if name_part == "flagfile":
            # A variant includes its main config first, then sets what differs; one level only.
            assert lines.index(line) == 0, f"{name}: --flagfile must come first"
            included = _included(line)
            assert included.is_file() and included.parent == CONFIG_DIR, f"{name}: {line}"
            assert not any(x.startswith("--flagfile") for x in _flag_lines(included)), \
                f"{name}: {included.name} includes another flagfile"
        elif sep:
            assert name_part in known, f"{name}: --{name_part} is not a trainer flag"
            FLAGS[name_part].parser.parse(value)  # raises on a bad enum / number / list
        elif name_part in known:
            assert FLAGS[name_part].boolean, f"{name}: --{name_part} needs a value"
        else:
            assert name_part.startswith("no") and name_part[2:] in known and \
                FLAGS[name_part[2:]].boolean, f"{name}: --{name_part} is not a trainer flag"


def test_init_ablation_configs_differ_from_the_main_one_only_in_the_init():
    assert "kitti.cfg" in _distinct_runs()
    for name in ("kitti_supervised_init.cfg", "kitti_moco.cfg", "kitti_simclr.cfg"):
        assert name in CONFIG_NAMES and name not in _distinct_runs(), name


@pytest.mark.parametrize("name", _distinct_runs())
def test_config_trains_one_step(name, repo_root, tmp_path, restore_flags, monkeypatch):
    path = repo_root / "configs" / name
    monkeypatch.chdir(repo_root)  # variants include their main config by a repository-relative path
    run_dir = tmp_path / "run"
    FLAGS.unparse_flags()
    FLAGS(["tripled_tf.train", f"--flagfile={path}", *OVERRIDES, f"--log_dir={run_dir}"])
    train_config, model_config = train_cli.configs_from_flags()
    assert pathlib.Path(train_config.log_dir) == run_dir

    result = train(train_config, model_config)

    values = _cfg_values(path)
    model_name = _cfg_value(values, "model")
    assert result["steps"] == 1
    assert result["model"] == MODEL_CLASSES[model_name]
    assert result["final_losses"], result
    bad = {k: v for k, v in result["final_losses"].items() if not math.isfinite(v)}
    assert not bad, f"non-finite losses: {bad}"
    assert (run_dir / "checkpoints" / "latest.json").is_file()
    assert (run_dir / "preview.png").is_file()

    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["train"]["model"] == model_name
    if model_name == "tripled":
        # The pretext switches of the file reached the model configuration.
        assert saved["model"]["pretext_task"] == _cfg_value(values, "pretext_task")
        assert saved["model"]["head_mask"] == _cfg_value(values, "head_mask")
