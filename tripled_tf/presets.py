"""Published weights by name: whole models (``tripled_tf.load("monodepth2:mono_640x192")``) and encoder
initialisations (``--encoder_weights=swav|supervised|moco``).

Models: on first use the published archive is fetched from its original address, checked against its
checksum (Monodepth2 publishes MD5 sums for the nine KITTI Eigen models; for the others the SHA-256 of
the first download is recorded and every later use is checked against it), converted
(``tripled_tf.convert``) and cached; later uses load the cached run folder.

Encoders (:func:`fetch_encoder`, called by ``train_sources.resolve_weights`` when
``<weights_dir>/<init>_resnet<layers>.npz`` is missing): the publisher's checkpoint is fetched from its
original address (torchvision: the SHA-256 prefix in its file name; MoCo: the MD5 prefix of its README;
SwAV publishes none, so the first download's SHA-256 is recorded), converted as
``python -m tools.convert_resnet_weights`` does and cached as ``encoders/<init>_resnet<layers>.npz``.
SimCLR has no stable official address of a torchvision-layout checkpoint (Google's are TensorFlow
checkpoints), and SwAV and MoCo published ResNet-50s only: those stay files to convert by hand.

Cache: ``$TRIPLED_TF_CACHE`` (default ``~/.cache/tripled_tf``): ``downloads/<file>`` (the published
files, as published), ``converted/<name>/`` (a normal run folder) and ``encoders/<init>_resnet<layers>.npz``.
``TRIPLED_TF_OFFLINE=1`` forbids downloads: what is not in the cache then fails with one line naming the
URL, the file and where to place it, as does a download that fails (no network). Downloading, resuming
and checking: :mod:`tripled_tf.downloads`.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Dict, Optional, Tuple

from tripled_tf import downloads
from tripled_tf.downloads import CACHE_ENV, OFFLINE_ENV, cache_dir  # noqa: F401 (public names)

_MD2 = "https://storage.googleapis.com/niantic-lon-static/research/monodepth2/"
_TORCHVISION = "https://download.pytorch.org/models/"


class PresetError(downloads.DownloadError):
    """A preset that cannot be fetched or verified (one line: what to do); a ValueError."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """A published model: its archive's address, the converter, and its published checksum."""
    url: str
    source: str  # a tripled_tf.convert source ("monodepth2")
    md5: Optional[str] = None

    @property
    def file_name(self) -> str:
        return downloads.file_name(self.url)


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


def fetch(name: str) -> pathlib.Path:
    """The converted run folder of preset ``name``, downloading and converting it on first use."""
    if name not in PRESETS:
        raise PresetError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    preset = PRESETS[name]
    root = cache_dir()
    converted = root / "converted" / name.replace(":", "_")
    if (converted / "config.json").is_file():
        return converted
    try:
        archive = downloads.fetch(preset.url, root / "downloads" / preset.file_name,
                                  md5=preset.md5 or "")
    except downloads.DownloadError as error:
        raise PresetError(f"{name}: {error}") from None
    from tripled_tf import convert

    with downloads.file_lock(converted):  # one conversion at a time into the same folder
        if not (converted / "config.json").is_file():
            convert.convert(preset.source, archive, converted, overwrite=True)
    return converted


# --------------------------------------------------------------------------------------------------
# Encoder initialisations (--encoder_weights, --pose_encoder_weights, --extractor_weights)


@dataclasses.dataclass(frozen=True)
class EncoderCheckpoint:
    """A published ResNet checkpoint: its address, its layout (``pretrained.SOURCES``) and its
    published checksum or checksum prefix ("" where none is published)."""
    url: str
    source: str
    md5: str = ""
    sha256: str = ""

    @property
    def file_name(self) -> str:
        return downloads.file_name(self.url)


# (init name, ResNet depth) -> the checkpoint the references start from. torchvision's IMAGENET1K_V1
# files (the same weights the references' torchvision loaded; these are the current zip-format copies)
# carry the first 8 hex digits of their SHA-256 in the file name. MoCo's README publishes the first 8
# of the MD5; SwAV's none. SwAV and MoCo published ResNet-50s only.
ENCODER_CHECKPOINTS: Dict[Tuple[str, int], EncoderCheckpoint] = {
    ("supervised", 18): EncoderCheckpoint(_TORCHVISION + "resnet18-f37072fd.pth", "torchvision",
                                          sha256="f37072fd"),
    ("supervised", 34): EncoderCheckpoint(_TORCHVISION + "resnet34-b627a593.pth", "torchvision",
                                          sha256="b627a593"),
    ("supervised", 50): EncoderCheckpoint(_TORCHVISION + "resnet50-0676ba61.pth", "torchvision",
                                          sha256="0676ba61"),
    ("supervised", 101): EncoderCheckpoint(_TORCHVISION + "resnet101-63fe2227.pth", "torchvision",
                                           sha256="63fe2227"),
    # SwAV, 800 epochs (ImageNet linear top-1 75.3); the paper does not state the length, and this
    # longest run is the default (docs/method.md).
    ("swav", 50): EncoderCheckpoint("https://dl.fbaipublicfiles.com/deepcluster/"
                                    "swav_800ep_pretrain.pth.tar", "swav"),
    # MoCo v2, 800 epochs (71.1).
    ("moco", 50): EncoderCheckpoint("https://dl.fbaipublicfiles.com/moco/moco_checkpoints/"
                                    "moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar", "moco",
                                    md5="a04e12f8"),
}

# Display names for messages.
PUBLISHERS = {"supervised": "torchvision", "swav": "SwAV", "moco": "MoCo", "simclr": "SimCLR"}


def published_depths(init: str) -> Tuple[int, ...]:
    """The ResNet depths for which ``init`` has a published checkpoint here (() for simclr)."""
    return tuple(sorted(layers for name, layers in ENCODER_CHECKPOINTS if name == init))


def encoder_cache_path(init: str, num_layers: int) -> pathlib.Path:
    """Where :func:`fetch_encoder` keeps the converted .npz."""
    return cache_dir() / "encoders" / f"{init}_resnet{num_layers}.npz"


def fetch_encoder(init: str, num_layers: int) -> pathlib.Path:
    """The converted .npz of the published ``init`` ResNet-``num_layers`` (torchvision keys, torch
    layout, as ``tools/convert_resnet_weights.py`` writes it), downloading and converting on first use.

    Raises:
      KeyError: nothing published for (init, num_layers) (see :data:`ENCODER_CHECKPOINTS`).
      PresetError: download refused (offline), failed or not matching its checksum (one line with the
        URL and where to place the file).
      CheckpointError: the downloaded file holds no fitting ResNet backbone.
    """
    converted = encoder_cache_path(init, num_layers)
    if converted.is_file():
        return converted
    checkpoint = ENCODER_CHECKPOINTS[(init, num_layers)]
    try:
        archive = downloads.fetch(checkpoint.url, cache_dir() / "downloads" / checkpoint.file_name,
                                  md5=checkpoint.md5, sha256=checkpoint.sha256)
    except downloads.DownloadError as error:
        raise PresetError(f"{PUBLISHERS[init]} ResNet-{num_layers}: {error}") from None
    from tripled_tf.models import pretrained

    with downloads.file_lock(converted):  # one conversion at a time (training workers)
        if not converted.is_file():  # another process may have converted it meanwhile
            pretrained.convert_checkpoint(archive, converted, num_layers, checkpoint.source)
    return converted
