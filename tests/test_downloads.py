"""Downloads (tripled_tf.downloads) and the encoder presets (--encoder_weights=supervised|swav|moco),
against a local HTTP server on 127.0.0.1 that serves bytes made here.

The server answers Range requests as a real one does (206 with the rest, 416 past the end) and can be
told to cut the connection after N bytes of its first answer, to ignore Range (200, the whole file),
to stall, or to answer 404. It records every request it sees with its Range header, so each test
states exactly which requests a download must make: none when offline or cached, one ``Range:
bytes=<size of the .part>-`` to resume.
"""
import hashlib
import http.server
import re
import threading
import time

import numpy as np
import pytest

from torch_files import save_torch
from tripled_tf import downloads, presets, train_sources
from tripled_tf.models.pretrained import CheckpointError

DATA = np.random.default_rng(7).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
SHA256 = hashlib.sha256(DATA).hexdigest()


class _Served:
    """What the server serves and has seen; the switches apply to every request unless said."""

    def __init__(self):
        self.files = {}  # URL path -> bytes
        self.requests = []  # (URL path, Range header or None), in arrival order
        self.cut_after = None  # bytes of the first answer's body sent before closing the connection
        self.stall_after = None  # bytes of the first answer's body sent before a 2 s pause
        self.ignore_range = False  # answer 200 with the whole file, as servers without ranges do
        self.not_found = False  # answer 404 to everything
        self.base = ""

    def url(self, path):
        return self.base + path


def _handler(served):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output quiet
            pass

        def do_GET(self):
            served.requests.append((self.path, self.headers.get("Range")))
            first_answer = len(served.requests) == 1
            data = served.files.get(self.path)
            if data is None or served.not_found:
                self.send_error(404)
                return
            asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            start = int(asked.group(1)) if asked and not served.ignore_range else 0
            if start >= len(data) > 0:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if first_answer and served.cut_after is not None:
                self.wfile.write(body[:served.cut_after])  # then HTTP/1.0 closes the connection
                return
            if first_answer and served.stall_after is not None:
                self.wfile.write(body[:served.stall_after])
                self.wfile.flush()
                time.sleep(2.0)
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def served(monkeypatch):
    """A _Served on a fresh 127.0.0.1 server (port 0), downloads allowed, 5 s timeouts."""
    monkeypatch.delenv(downloads.OFFLINE_ENV, raising=False)  # tests/conftest.py sets it
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(downloads, "TIMEOUT_S", 5.0)
    served = _Served()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    served.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield served
    server.shutdown()
    server.server_close()


def _one_line(error):
    message = str(error.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------------------------------
# Downloading, resuming, checking


def test_interrupted_download_resumes_with_a_range_request_from_the_part(served, tmp_path):
    served.files["/f.bin"] = DATA
    served.cut_after = 100_000
    target = tmp_path / "cache" / "f.bin"
    part = tmp_path / "cache" / "f.bin.part"
    with pytest.raises(downloads.DownloadError) as error:
        downloads.fetch(served.url("/f.bin"), target, sha256=SHA256, retries=0)
    message = _one_line(error)
    assert "interrupted" in message and served.url("/f.bin") in message and str(target) in message
    # The bytes so far are kept, under the .part name only.
    assert part.read_bytes() == DATA[:100_000] and not target.exists()

    assert downloads.fetch(served.url("/f.bin"), target, sha256=SHA256) == target
    assert served.requests == [("/f.bin", None), ("/f.bin", "bytes=100000-")]
    assert target.read_bytes() == DATA and not part.exists()
    # Complete and checked: a later call makes no request.
    downloads.fetch(served.url("/f.bin"), target, sha256=SHA256)
    assert len(served.requests) == 2


def test_interruption_is_resumed_within_the_call(served, tmp_path):
    served.files["/f.bin"] = DATA
    served.cut_after = 123_456
    target = downloads.fetch(served.url("/f.bin"), tmp_path / "f.bin", sha256=SHA256)
    assert served.requests == [("/f.bin", None), ("/f.bin", "bytes=123456-")]
    assert target.read_bytes() == DATA


def test_stalled_transfer_times_out_and_keeps_the_part(served, tmp_path):
    served.files["/f.bin"] = DATA
    served.stall_after = 1000
    target = tmp_path / "f.bin"
    started = time.monotonic()
    with pytest.raises(downloads.DownloadError, match="interrupted") as error:
        downloads.fetch(served.url("/f.bin"), target, retries=0, timeout=0.3)
    _one_line(error)
    assert time.monotonic() - started < 1.5  # the 0.3 s read timeout, not the server's 2 s pause
    assert (tmp_path / "f.bin.part").read_bytes() == DATA[:1000] and not target.exists()


def test_server_that_ignores_ranges_restarts_from_the_first_byte(served, tmp_path):
    served.files["/f.bin"] = DATA
    served.ignore_range = True
    target = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"x" * 50_000)  # not the file's first bytes
    downloads.fetch(served.url("/f.bin"), target, sha256=SHA256)
    # Asked for the rest, got 200 with the whole file: the .part was rewritten, not appended to.
    assert served.requests == [("/f.bin", "bytes=50000-")]
    assert target.read_bytes() == DATA


def test_416_takes_a_whole_part_and_restarts_a_longer_one(served, tmp_path):
    served.files["/f.bin"] = DATA
    whole, longer = tmp_path / "whole.bin", tmp_path / "longer.bin"
    # Stopped between the last byte and the rename: nothing left to ask, the .part is checked and kept.
    (tmp_path / "whole.bin.part").write_bytes(DATA)
    downloads.fetch(served.url("/f.bin"), whole, sha256=SHA256)
    assert served.requests == [("/f.bin", f"bytes={len(DATA)}-")]
    assert whole.read_bytes() == DATA
    # Longer than the file (the file changed): start over without a range.
    (tmp_path / "longer.bin.part").write_bytes(DATA + b"tail")
    downloads.fetch(served.url("/f.bin"), longer, sha256=SHA256)
    assert served.requests[1:] == [("/f.bin", f"bytes={len(DATA) + 4}-"), ("/f.bin", None)]
    assert longer.read_bytes() == DATA and not (tmp_path / "longer.bin.part").exists()


def test_checksum_mismatch_leaves_no_file(served, tmp_path):
    served.files["/f.bin"] = DATA
    for kind, value in (("md5", "0" * 32), ("sha256", "deadbeef")):
        target = tmp_path / f"{kind}.bin"
        with pytest.raises(downloads.DownloadError) as error:
            downloads.fetch(served.url("/f.bin"), target, **{kind: value})
        message = _one_line(error)
        assert kind.upper() in message and value in message and served.url("/f.bin") in message
        assert str(target) in message  # where to place a good copy
        assert not target.exists() and not (tmp_path / f"{kind}.bin.part").exists()
    # A published prefix that matches (torchvision's 8 hex digits in the file name) is enough.
    assert downloads.fetch(served.url("/f.bin"), tmp_path / "ok.bin", sha256=SHA256[:8]).is_file()


def test_unpublished_checksum_is_recorded_at_the_first_download(served, tmp_path):
    served.files["/f.bin"] = DATA
    target = tmp_path / "f.bin"
    record = tmp_path / "f.bin.sha256"
    downloads.fetch(served.url("/f.bin"), target)
    assert record.read_text().strip() == SHA256
    # The file changes on the server: a new download no longer matches the record.
    served.files["/f.bin"] = DATA[::-1]
    target.unlink()
    with pytest.raises(downloads.DownloadError, match="recorded at the first download") as error:
        downloads.fetch(served.url("/f.bin"), target)
    _one_line(error)
    assert not target.exists() and not (tmp_path / "f.bin.part").exists()
    # A cached file that went bad is refused and kept (it may have been placed by hand).
    target.write_bytes(DATA[:-1] + b"?")
    with pytest.raises(downloads.DownloadError, match="delete it to download again") as error:
        downloads.fetch(served.url("/f.bin"), target)
    _one_line(error)
    assert len(served.requests) == 2


def test_offline_is_one_line_naming_url_and_path_without_a_request(served, tmp_path, monkeypatch):
    served.files["/f.bin"] = DATA
    monkeypatch.setenv(downloads.OFFLINE_ENV, "1")
    target = tmp_path / "f.bin"
    with pytest.raises(downloads.DownloadError) as error:
        downloads.fetch(served.url("/f.bin"), target)
    message = _one_line(error)
    assert served.url("/f.bin") in message and str(target) in message
    assert downloads.OFFLINE_ENV in message
    assert served.requests == [] and not target.exists()


def test_http_and_network_errors_are_one_line(served, tmp_path):
    served.not_found = True
    target = tmp_path / "f.bin"
    with pytest.raises(downloads.DownloadError) as error:
        downloads.fetch(served.url("/f.bin"), target)
    message = _one_line(error)
    assert "HTTP 404" in message and served.url("/f.bin") in message and str(target) in message
    assert not target.exists() and not (tmp_path / "f.bin.part").exists()
    # Nothing listens on the port: refused at once (a machine without network fails the same way).
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/f.bin"
    with pytest.raises(downloads.DownloadError) as error:
        downloads.fetch(dead, target)
    message = _one_line(error)
    assert "failed" in message and dead in message and str(target) in message


# --------------------------------------------------------------------------------------------------
# Encoder presets: --encoder_weights=supervised downloads, converts and loads


def _torchvision_resnet18_state():
    """A ResNet-18 state dict as torchvision saves it: OIHW kernels, BN statistics and counters, the
    fc head; seeded random values."""
    from tripled_tf.models.resnet import ResNetEncoder, torchvision_key_map

    rng = np.random.default_rng(18)
    state = {}
    for key, variable in torchvision_key_map(ResNetEncoder(18, name="layout")).items():
        shape = tuple(variable.shape)
        shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape  # HWIO->OIHW
        state[key] = rng.normal(0.0, 0.1, shape).astype(np.float32)
        if key.endswith("running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = np.zeros((), np.int64)
    state["fc.weight"] = rng.normal(0.0, 0.1, (1000, 512)).astype(np.float32)
    state["fc.bias"] = np.zeros(1000, np.float32)
    return state


def test_encoder_preset_downloads_converts_caches_and_loads(served, tmp_path, monkeypatch):
    from tripled_tf.models.depth_model import DepthModelConfig
    from tripled_tf.models.resnet import torchvision_key_map
    from tripled_tf.train_config import TrainConfig

    state = _torchvision_resnet18_state()
    checkpoint = tmp_path / "resnet18.pth"
    save_torch(state, checkpoint)
    data = checkpoint.read_bytes()
    # Named as torchvision names its files: the first 8 hex digits of the SHA-256.
    short = hashlib.sha256(data).hexdigest()[:8]
    served.files[f"/models/resnet18-{short}.pth"] = data
    url = served.url(f"/models/resnet18-{short}.pth")
    monkeypatch.setitem(presets.ENCODER_CHECKPOINTS, ("supervised", 18),
                        presets.EncoderCheckpoint(url, "torchvision", sha256=short))
    cache = tmp_path / "cache"
    monkeypatch.setenv(downloads.CACHE_ENV, str(cache))
    weights_dir = tmp_path / "weights"
    placed = cache / "downloads" / f"resnet18-{short}.pth"

    # Offline: one line with the URL, the file to place and where; no request.
    monkeypatch.setenv(downloads.OFFLINE_ENV, "1")
    with pytest.raises(CheckpointError) as error:
        train_sources.resolve_weights("supervised", 18, str(weights_dir), "encoder_weights")
    message = _one_line(error)
    assert url in message and str(placed) in message
    assert str(weights_dir / "supervised_resnet18.npz") in message  # the other way: convert into it
    assert served.requests == []
    monkeypatch.delenv(downloads.OFFLINE_ENV)

    config = TrainConfig(model="baseline", height=64, width=64, encoder_weights="supervised",
                         pose_encoder_weights="supervised", weights_dir=str(weights_dir))
    model = train_sources.build_model(config, DepthModelConfig(pose_input_size=None))
    # One download for both encoders; the checkpoint kept as published, the .npz in the cache.
    assert served.requests == [(f"/models/resnet18-{short}.pth", None)]
    assert placed.read_bytes() == data
    npz = cache / "encoders" / "supervised_resnet18.npz"
    with np.load(npz) as converted:
        assert set(converted.files) == {k for k in state if not k.startswith("fc.")
                                        and not k.endswith("num_batches_tracked")}
    loaded = torchvision_key_map(model.encoder)
    # torch OIHW [64, 3, 7, 7] -> Keras HWIO [7, 7, 3, 64].
    np.testing.assert_array_equal(loaded["conv1.weight"].numpy(),
                                  state["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(loaded["layer4.1.bn2.running_var"].numpy(),
                                  state["layer4.1.bn2.running_var"])
    # The pose encoder's 6-channel conv1: the 3-channel kernel for both frames, halved.
    pose = torchvision_key_map(model.pose_net.encoder)["conv1.weight"].numpy()
    np.testing.assert_allclose(pose, np.concatenate([state["conv1.weight"]] * 2, 1)
                               .transpose(2, 3, 1, 0) / 2, rtol=1e-6)

    # Cached: no request, also with downloads off.
    monkeypatch.setenv(downloads.OFFLINE_ENV, "1")
    assert train_sources.resolve_weights("supervised", 18, str(weights_dir), "x") == str(npz)
    assert len(served.requests) == 1


def test_encoder_inits_without_a_published_file_are_one_line(tmp_path):
    weights_dir = tmp_path / "weights"
    # SwAV and MoCo published ResNet-50s only; torchvision no ResNet-10 (not one of its models); SimCLR
    # no torchvision-layout file at a stable address.
    for init, layers, said in (("swav", 18, "SwAV published no ResNet-18 to download (only ResNet-50)"),
                               ("moco", 34, "MoCo published no ResNet-34 to download (only ResNet-50)"),
                               ("supervised", 10, "torchvision published no ResNet-10 to download "
                                                  "(only ResNet-18, ResNet-34, ResNet-50, ResNet-101)"),
                               ("simclr", 50, "SimCLR has no official download address")):
        with pytest.raises(CheckpointError) as error:
            train_sources.resolve_weights(init, layers, str(weights_dir), "pose_encoder_weights")
        message = _one_line(error)
        assert message.startswith(f"--pose_encoder_weights={init}: "
                                  f"{weights_dir / f'{init}_resnet{layers}.npz'} does not exist")
        assert said in message and "tools.convert_resnet_weights" in message, message
    # A file of one's own in --weights_dir is used as it is, whatever was published.
    own = weights_dir / "swav_resnet18.npz"
    weights_dir.mkdir()
    own.write_bytes(b"")
    assert train_sources.resolve_weights("swav", 18, str(weights_dir), "x") == str(own)
