"""Pretrained encoders through the real code path: generated torchvision state_dicts loaded from a
local file and through the imagenet path (a hash-named file served from 127.0.0.1 into a
TORCH_HOME under tmp_path); frozen encoders get no gradient; the 1-channel adaptation; the
normalisation inside the network; and every refusal names what is wrong."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multitask.config import ModelConfig
from multitask.models import build_model
from multitask.models import pretrained as pre
from multitask.models.backbones import build_backbone
from multitask.models.pretrained import (
    EncoderWeights,
    MissingWeightsError,
    WeightsError,
    download_weights,
    file_weights,
    imagenet_weights,
    load_encoder,
    load_heads,
    network_weights,
    weights_sha256,
)
from multitask.models.zoo import IMAGENET_MEAN, IMAGENET_STD, SPECS, TorchvisionEncoder
from multitask.tasks import Task

TASKS = [Task("left", 10), Task("right", 3)]
PIXEL_MEAN, PIXEL_STD = 0.29, 0.35


def size_for(name: str) -> int:
    return 75 if name == "inception_v3" else 32


@functools.cache
def torchvision_state(name: str) -> dict[str, Tensor]:
    """What an ImageNet file holds: torchvision's full classification model (classifier and,
    for Inception, the auxiliary classifier included) with random weights, no zero bias, and
    batch-norm statistics calibrated on random images so that eval-mode features neither
    vanish nor explode (a fresh model's do, which would let a wrong load pass a comparison)."""
    import torchvision.models

    torch.manual_seed(0)
    options = {"init_weights": True} if name == "inception_v3" else {}
    model = getattr(torchvision.models, name)(weights=None, **options)
    with torch.no_grad():  # zero-initialised biases would make ConvNeXt's LayerNorm see only
        for parameter in model.parameters():  # the filters' direction, not their scale
            if not parameter.any():
                parameter.normal_(0.0, 0.1)
    for norm in model.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.reset_running_stats()
            norm.momentum = 1.0  # the calibration batch's statistics
    size = size_for(name)
    aux = getattr(model, "AuxLogits", None)  # dropped on load; needs bigger input than 75 px
    if aux is not None:
        model.AuxLogits = None
    with torch.no_grad():
        model.train()(torch.randn(6, 3, size, size))
    if aux is not None:
        model.AuxLogits = aux
    for norm in model.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.momentum = 0.1
    return model.state_dict()


def hash_named(folder: Path, name: str, state: dict[str, Tensor]) -> Path:
    """Save ``state`` as torchvision names its files: ``<name>-<sha256 prefix>.pth``."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "state.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return tmp.rename(folder / f"{name}-{digest[:8]}.pth")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``(base URL, folder it serves)``: an HTTP server on 127.0.0.1 in a thread."""
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def start(model_backbone: str, weights: EncoderWeights, channels: int = 1) -> nn.Module:
    """An HPS network whose encoder starts from ``weights`` (the session's path)."""
    torch.manual_seed(1)
    init = functools.partial(load_encoder, weights=weights, pixel_mean=PIXEL_MEAN,
                             pixel_std=PIXEL_STD)
    return build_model(ModelConfig(backbone=model_backbone), TASKS, channels,
                       size_for(model_backbone), encoder_init=init)


def assert_loaded(encoder: TorchvisionEncoder, state: dict[str, Tensor]) -> None:
    """Every torchvision tensor but the classifier and the first convolution is in the encoder
    unchanged; the first convolution holds the summed RGB filters (1-channel input), or for a
    ResNet's CIFAR stem its own fresh 3x3 filters."""
    mine = encoder.state_dict()
    spec = encoder.spec
    conv = f"{spec.first_conv}.weight"
    for key, value in state.items():
        if key.startswith((spec.classifier + ".", *(d + "." for d in spec.dropped))):
            assert f"net.{key}" not in mine
        elif key == conv and encoder.stem_kind == "cifar":
            assert mine[f"net.{key}"].shape == (value.shape[0], 1, 3, 3)
        elif key == conv:
            torch.testing.assert_close(mine[f"net.{key}"], value.sum(dim=1, keepdim=True))
        else:
            assert torch.equal(mine[f"net.{key}"], value), key


def assert_frozen_encoder_gets_no_gradient(model: nn.Module, channels: int = 1) -> None:
    model.encoder.requires_grad_(False)
    size = size_for(model.encoder.name)
    outputs = model(torch.randn(2, channels, size, size))
    F.cross_entropy(outputs["left"], torch.tensor([1, 2])).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.heads["left"].parameters())


def assert_equal_features(got: Tensor, expected: Tensor) -> None:
    """Equal up to float64 rounding (the summation order differs), relative to the largest
    feature; random weights amplify float32's rounding too much to tell it from a bug."""
    assert got.dtype == expected.dtype == torch.float64
    scale = expected.abs().max().item()
    assert scale > 1e-3  # features that vanish would compare equal whatever was loaded
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10 * scale)


# -------------------------------------------------------------------- every backbone, two paths
@pytest.mark.parametrize("name", list(SPECS))
def test_every_backbone_starts_from_a_local_file_and_from_the_imagenet_path(
        name: str, server: tuple[str, Path], torch_home: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    base, folder = server
    state = torchvision_state(name)
    served = hash_named(folder, name, state)
    member = SPECS[name].weights

    from_file = file_weights(served)
    assert (from_file.layout, from_file.origin) == ("torchvision", f"file: {served}")
    model = start(name, from_file)
    assert_loaded(model.encoder, state)
    assert_frozen_encoder_gets_no_gradient(model)

    monkeypatch.setattr(pre, "imagenet_source", lambda b: (member, f"{base}/{served.name}"))
    weights = imagenet_weights(name, progress=False)
    cached = torch_home / "hub" / "checkpoints" / served.name
    assert cached.read_bytes() == served.read_bytes()
    assert weights.origin == f"imagenet: {member} ({served.name})"
    assert weights.sha256 == from_file.sha256 == weights_sha256(state)
    assert weights.backbone == name
    model = start(name, weights)
    assert_loaded(model.encoder, state)
    assert_frozen_encoder_gets_no_gradient(model)


def test_resnet_cifar_stem_starts_its_convolution_fresh_and_loads_the_rest(
        tmp_path: Path) -> None:
    state = torchvision_state("resnet18")
    model = start("resnet18", file_weights(hash_named(tmp_path, "resnet18", state)))
    encoder = model.encoder
    assert encoder.stem_kind == "cifar" and encoder.net.conv1.weight.shape == (64, 1, 3, 3)
    mine = encoder.state_dict()
    assert all(torch.equal(mine[f"net.{k}"], v) for k, v in state.items()
               if not k.startswith(("conv1.", "fc.")))


# ------------------------------------------------------------------- input adaptation, exactly
@pytest.mark.parametrize("name", list(SPECS))
def test_one_channel_equals_three_channels_on_a_replicated_grey_image(name: str) -> None:
    """The module docstring's statement: with the same normalisation in every channel, the
    1-channel encoder (summed filters) on a grey image equals the 3-channel one on that image
    replicated three times. Inception's weights expect 0.5/0.5 everywhere: equal as loaded."""
    weights = EncoderWeights(torchvision_state(name), "torchvision", "test", "0", backbone=name)
    stem = "imagenet" if name.startswith("resnet") else "auto"
    size = size_for(name)
    encoders = {}
    for channels in (1, 3):
        torch.manual_seed(channels)
        encoders[channels] = build_backbone(name, channels, size, stem=stem).double().eval()
        load_encoder(encoders[channels], weights, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)
    grey, rgb = encoders[1], encoders[3]
    if name != "inception_v3":  # ImageNet's statistics differ by channel: use grey's in all
        rgb.adapter.set_affine(grey.adapter.scale.expand(3), grey.adapter.shift.expand(3))
    z = (torch.rand(2, 1, size, size, dtype=torch.float64) - PIXEL_MEAN) / PIXEL_STD
    with torch.no_grad():
        assert_equal_features(grey(z), rgb(z.expand(-1, 3, -1, -1)))


def test_the_adapter_maps_standardised_pixels_to_what_the_weights_expect() -> None:
    weights = EncoderWeights(torchvision_state("mobilenet_v3_small"), "torchvision", "t", "0")
    x = torch.rand(2, 3, 8, 8)  # pixels on the 0..1 scale
    encoders = {c: build_backbone("mobilenet_v3_small", c, 8) for c in (1, 3)}
    for encoder in encoders.values():
        load_encoder(encoder, weights, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(encoders[3].adapter((x - PIXEL_MEAN) / PIXEL_STD),
                               (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    grey = x[:, :1]
    torch.testing.assert_close(encoders[1].adapter((grey - PIXEL_MEAN) / PIXEL_STD),
                               (grey - mean.mean()) / std.mean())
    assert "adapter.scale" in encoders[1].state_dict()  # saved and exported with the network


# ------------------------------------------------------------------------------ refusals
def test_offline_without_the_file_names_the_file_the_folder_and_the_url(
        torch_home: Path) -> None:
    url = "http://127.0.0.1:9/models/resnet18-f37072fd.pth"  # port 9 (discard): refused
    with pytest.raises(MissingWeightsError) as caught:
        download_weights(url, progress=False)
    message = str(caught.value)
    folder = torch_home / "hub" / "checkpoints"
    assert message.startswith(f"resnet18-f37072fd.pth: not in {folder}")
    assert url in message
    assert isinstance(caught.value, FileNotFoundError)  # the CLI prints it, no traceback


def test_a_download_whose_hash_differs_from_its_name_is_refused_and_not_kept(
        server: tuple[str, Path], torch_home: Path) -> None:
    base, folder = server
    served = hash_named(folder, "resnet18", {"w": torch.zeros(3)})
    wrong = served.rename(folder / "resnet18-00000000.pth")
    with pytest.raises(WeightsError, match="sha256 does not start with 00000000"):
        download_weights(f"{base}/{wrong.name}", progress=False)
    assert not (torch_home / "hub" / "checkpoints" / wrong.name).exists()


def test_a_cached_file_whose_hash_differs_from_its_name_is_refused(torch_home: Path) -> None:
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "resnet18-f37072fd.pth").write_bytes(b"truncated")
    with pytest.raises(WeightsError, match=r"resnet18-f37072fd\.pth: sha256 does not start "
                                           r"with f37072fd .* delete it and rerun"):
        download_weights("http://127.0.0.1:9/resnet18-f37072fd.pth", progress=False)


def test_missing_unexpected_and_misshaped_keys_are_named() -> None:
    resnet18 = EncoderWeights(torchvision_state("resnet18"), "torchvision", "r18", "0")
    with pytest.raises(WeightsError, match=r"r18: does not fit the resnet34 encoder \(missing "
                                           r"net\.layer1\.2\.bn1\.bias, .* and \d+ more"):
        load_encoder(build_backbone("resnet34", 3, 32), resnet18, pixel_mean=0, pixel_std=1)
    resnet34 = EncoderWeights(torchvision_state("resnet34"), "torchvision", "r34", "0")
    with pytest.raises(WeightsError, match=r"unexpected net\.layer1\.2\.bn1\.bias"):
        load_encoder(build_backbone("resnet18", 3, 32), resnet34, pixel_mean=0, pixel_std=1)
    imagenet_stem = build_backbone("resnet18", 1, 64)
    own = EncoderWeights(imagenet_stem.state_dict(), "encoder", "mine", "0")
    with pytest.raises(WeightsError, match=r"net\.conv1\.weight: \[64, 1, 7, 7\] in the weights, "
                                           r"\[64, 1, 3, 3\] in the encoder"):
        load_encoder(build_backbone("resnet18", 1, 36), own, pixel_mean=0, pixel_std=1)
    nothing_changed = build_backbone("resnet18", 1, 36)
    before = {k: v.clone() for k, v in nothing_changed.state_dict().items()}
    with pytest.raises(WeightsError):
        load_encoder(nothing_changed, own, pixel_mean=0, pixel_std=1)
    assert all(torch.equal(before[k], v) for k, v in nothing_changed.state_dict().items())


def test_weights_for_another_backbone_are_refused_by_name() -> None:
    weights = EncoderWeights({}, "encoder", "models:/enc@latest", "0", backbone="lenet")
    with pytest.raises(WeightsError, match=r"models:/enc@latest: weights for a lenet encoder, "
                                           r"not resnet18; set model\.backbone: lenet"):
        load_encoder(build_backbone("resnet18", 1, 36), weights, pixel_mean=0, pixel_std=1)


def test_imagenet_sources_are_torchvisions_own_enums() -> None:
    from torchvision.models import get_model_weights

    for name in SPECS:
        member, url = pre.imagenet_source(name)
        enum = get_model_weights(name)
        assert member == str(enum.DEFAULT) and url == enum.DEFAULT.url  # pinned, = default today
    assert pre.imagenet_source("resnet50")[0] == "ResNet50_Weights.IMAGENET1K_V2"
    with pytest.raises(ValueError, match="no ImageNet weights for lenet"):
        pre.imagenet_source("lenet")


# ------------------------------------------------------------------ transfer inside the project
def network_file(path: Path, architecture: str = "hps") -> nn.Module:
    """What session.save_network writes, for a LeNet network on 1x36x36 input."""
    torch.manual_seed(2)
    model = build_model(ModelConfig(architecture=architecture), TASKS, 1, 36)
    torch.save({"state_dict": model.state_dict(), "tasks": [t.to_dict() for t in TASKS],
                "model": ModelConfig(architecture=architecture).model_dump(mode="json"),
                "input": {"channels": 1, "image_size": 36, "pixel_mean": 0.3,
                          "pixel_std": 0.3}}, path)
    return model


def test_a_network_file_starts_the_encoder_and_reuses_matching_heads(tmp_path: Path) -> None:
    source = network_file(tmp_path / "network.pt")
    weights = file_weights(tmp_path / "network.pt")
    assert (weights.layout, weights.backbone, sorted(weights.heads)) == (
        "encoder", "lenet", ["left", "right"])
    tasks = [Task("left", 10), Task("right", 4), Task("new", 2)]
    init = functools.partial(load_encoder, weights=weights, pixel_mean=0.3, pixel_std=0.3)
    model = build_model(ModelConfig(), tasks, 1, 36, encoder_init=init)
    assert load_heads(model, weights) == ["left"]  # right: 4 classes now; new: no such head
    x = torch.randn(3, 1, 36, 36)
    torch.testing.assert_close(model.encoder(x), source.encoder(x))
    torch.testing.assert_close(model(x)["left"], source(x)["left"])


def test_one_set_of_weights_has_one_digest_whatever_file_holds_it(tmp_path: Path) -> None:
    """A network file and a state_dict file of the same weights (other bytes, other order of
    names) give one digest; a value, a dtype or a name changed gives another."""
    source = network_file(tmp_path / "network.pt")
    state = source.state_dict()
    torch.save(dict(reversed(state.items())), tmp_path / "state.pt")
    digest = file_weights(tmp_path / "network.pt").sha256
    assert digest == file_weights(tmp_path / "state.pt").sha256 == weights_sha256(state)
    assert (tmp_path / "network.pt").read_bytes() != (tmp_path / "state.pt").read_bytes()
    key = next(iter(state))
    nudged = {**state, key: state[key].clone().index_put_((torch.tensor(0),),
                                                          state[key][0] + 1e-6)}
    assert weights_sha256(nudged) != digest
    assert weights_sha256({**state, key: state[key].double()}) != digest
    assert weights_sha256({f"x{k}": v for k, v in state.items()}) != digest
    assert weights_sha256({**state, "n": torch.tensor(3)}) != digest  # a 0-d buffer too


def test_only_hard_sharing_networks_give_an_encoder(tmp_path: Path) -> None:
    network_file(tmp_path / "mtan.pt", "mtan")
    with pytest.raises(WeightsError, match=r"mtan\.pt: a mtan network; only a "
                                           r"hard-parameter-sharing \(hps\) network"):
        file_weights(tmp_path / "mtan.pt")
    with pytest.raises(WeightsError, match=r"runs:/x/model: no encoder\.\* weights"):
        network_weights({"stem.0.weight": torch.zeros(1)}, origin="runs:/x/model", sha256="0",
                        backbone="lenet")
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(WeightsError, match=r"junk\.pt: not a PyTorch weights file \(torch\.load: "
                                           r"UnpicklingError: Unsupported operand"):
        file_weights(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match=r"absent\.pt: no such weights file"):
        file_weights(tmp_path / "absent.pt")


def test_a_checkpoint_holding_a_state_dict_is_refused_with_what_to_save(tmp_path: Path) -> None:
    """A training checkpoint ({'epoch': ..., 'state_dict': ...}) is the usual near miss: the
    error names the entry to save alone; anything else gets how to save a state_dict."""
    weights = {"conv1.weight": torch.zeros(2, 3, 3, 3)}
    torch.save({"epoch": 3, "state_dict": weights}, tmp_path / "checkpoint.pt")
    with pytest.raises(WeightsError, match=r"checkpoint\.pt: neither a state_dict .* it holds "
                                           r"one under 'state_dict' \(a training checkpoint\?\): "
                                           r"save that alone, torch\.save\(checkpoint\["
                                           r"'state_dict'\], path\)$"):
        file_weights(tmp_path / "checkpoint.pt")
    torch.save([weights["conv1.weight"]], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match=r"list\.pt: neither a state_dict .*; save the weights "
                                           r"with torch\.save\(model\.state_dict\(\), path\)$"):
        file_weights(tmp_path / "list.pt")


def test_three_channel_encoder_weights_fit_one_channel_data() -> None:
    torch.manual_seed(0)
    rgb = build_backbone("mobilenet_v3_small", 3, 32).double().eval()
    load_encoder(rgb, EncoderWeights(torchvision_state("mobilenet_v3_small"), "torchvision",
                                     "t", "0"), pixel_mean=0, pixel_std=1)
    rgb.adapter.set_affine(torch.full((3,), 2.0), torch.tensor([0.1, 0.2, 0.3]))  # unequal
    grey = build_backbone("mobilenet_v3_small", 1, 32).double().eval()
    load_encoder(grey, EncoderWeights(rgb.state_dict(), "encoder", "rgb", "0"), pixel_mean=0,
                 pixel_std=1)
    assert grey.adapter.scale.tolist() == [2.0]
    assert grey.adapter.shift.item() == pytest.approx(0.2)
    rgb.adapter.set_affine(grey.adapter.scale.expand(3), grey.adapter.shift.expand(3))
    z = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert_equal_features(grey(z), rgb(z.expand(-1, 3, -1, -1)))
