"""Published models by name: ``tripled_tf.load("monodepth2:mono_640x192")``.

On first use the published archive is fetched from its original address (``keras.utils.get_file``),
checked against its checksum (Monodepth2 publishes MD5 sums for the nine KITTI Eigen models; for the
others the SHA-256 of the first download is recorded and every later use is checked against it),
converted (``tripled_tf.convert``) and cached; later uses load the cached run folder.

Cache: ``$TRIPLED_TF_CACHE`` (default ``~/.cache/tripled_tf``): ``downloads/<archive>`` and
``converted/<name>/`` (a normal run folder). ``TRIPLED_TF_OFFLINE=1`` forbids downloads: a preset not
in the cache then fails with one line naming the URL, the file and where to place it, as does a
download that fails (no network).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from typing import Dict, Optional

OFFLINE_ENV = "TRIPLED_TF_OFFLINE"
CACHE_ENV = "TRIPLED_TF_CACHE"
_MD2 = "https://storage.googleapis.com/niantic-lon-static/research/monodepth2/"


class PresetError(ValueError):
    """A preset that cannot be fetched or verified (the message says what to do)."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """A published model: its archive's address, the converter, and its published checksum."""
    url: str
    source: str  # a tripled_tf.convert source ("monodepth2")
    md5: Optional[str] = None

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1].replace("%2B", "+")


# Monodepth2's published models (README and utils.download_model_if_doesnt_exist, with its MD5s).
PRESETS: Dict[str, Preset] = {
    "monodepth2:mono_640x192": Preset(_MD2 + "mono_640x192.zip", "monodepth2",
                                      "a964b8356e08a02d009609d9e3928f7c"),
    "monodepth2:stereo_640x192": Preset(_MD2 + "stereo_640x192.zip", "monodepth2",
                                        "3dfb76bcff0786e4ec07ac00f658dd07"),
    "monodepth2:mono+stereo_640x192": Preset(_MD2 + "mono%2Bstereo_640x192.zip", "monodepth2",
                                             "c024d69012485ed05d7eaa9617a96b81"),
    "monodepth2:mono_no_pt_640x192": Preset(_MD2 + "mono_no_pt_640x192.zip", "monodepth2",
                                            "9c2f071e35027c895a4728358ffc913a"),
    "monodepth2:stereo_no_pt_640x192": Preset(_MD2 + "stereo_no_pt_640x192.zip", "monodepth2",
                                              "41ec2de112905f85541ac33a854742d1"),
    "monodepth2:mono+stereo_no_pt_640x192": Preset(_MD2 + "mono%2Bstereo_no_pt_640x192.zip",
                                                   "monodepth2", "46c3b824f541d143a45c37df65fbab0a"),
    "monodepth2:mono_1024x320": Preset(_MD2 + "mono_1024x320.zip", "monodepth2",
                                       "0ab0766efdfeea89a0d9ea8ba90e1e63"),
    "monodepth2:stereo_1024x320": Preset(_MD2 + "stereo_1024x320.zip", "monodepth2",
                                         "afc2f2126d70cf3fdf26b550898b501a"),
    "monodepth2:mono+stereo_1024x320": Preset(_MD2 + "mono%2Bstereo_1024x320.zip", "monodepth2",
                                              "cdc5fc9b23513c07d5b19235d9ef08f7"),
    "monodepth2:mono_odom_640x192": Preset(_MD2 + "mono_odom_640x192.zip", "monodepth2"),
    "monodepth2:mono+stereo_odom_640x192": Preset(_MD2 + "mono%2Bstereo_odom_640x192.zip",
                                                  "monodepth2"),
    "monodepth2:mono_resnet50_640x192": Preset(_MD2 + "mono_resnet50_640x192.zip", "monodepth2"),
    "monodepth2:mono_resnet50_no_pt_640x192": Preset(_MD2 + "mono_resnet50_no_pt_640x192.zip",
                                                     "monodepth2"),
}


def is_preset_name(path) -> bool:
    """Whether ``path`` names a preset ("<publisher>:<model>") rather than a file."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
    return isinstance(text, str) and text in PRESETS and not os.path.exists(text)


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "tripled_tf")


def _digest(path: pathlib.Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(name: str, preset: Preset, archive: pathlib.Path) -> None:
    """The published MD5, or the SHA-256 recorded at the first download (recorded now if absent)."""
    if preset.md5:
        if _digest(archive, "md5") != preset.md5:
            raise PresetError(f"{archive}: MD5 differs from the published {preset.md5} for {name} "
                              f"(a corrupt or partial download); delete it to download again")
        return
    record = archive.with_name(archive.name + ".sha256")
    actual = _digest(archive, "sha256")
    if not record.exists():
        record.write_text(actual + "\n")
    elif record.read_text().strip() != actual:
        raise PresetError(f"{archive}: SHA-256 differs from the one recorded at its first download "
                          f"({record}); delete both to download again")


def _download(name: str, preset: Preset, archive: pathlib.Path) -> None:
    where = (f"download {preset.url} and place it at {archive}")
    if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
        raise PresetError(f"{name}: not in the cache and downloads are off ({OFFLINE_ENV} is set); "
                          f"{where}")
    import keras

    archive.parent.mkdir(parents=True, exist_ok=True)
    try:
        keras.utils.get_file(archive.name, preset.url, cache_dir=str(archive.parent.parent),
                             cache_subdir=archive.parent.name, file_hash=preset.md5,
                             hash_algorithm="md5" if preset.md5 else "auto")
    except Exception as error:  # URLError, HTTPError, OSError, a hash mismatch: all one line
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PresetError(f"{name}: download failed ({message}); on a machine without network, "
                          f"{where}") from None


def fetch(name: str) -> pathlib.Path:
    """The converted run folder of preset ``name``, downloading and converting it on first use."""
    if name not in PRESETS:
        raise PresetError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    preset = PRESETS[name]
    root = cache_dir()
    converted = root / "converted" / name.replace(":", "_")
    if (converted / "config.json").is_file():
        return converted
    archive = root / "downloads" / preset.file_name
    if not archive.is_file():
        _download(name, preset, archive)
    _verify(name, preset, archive)
    from tripled_tf import convert

    convert.convert(preset.source, archive, converted, overwrite=True)
    return converted
