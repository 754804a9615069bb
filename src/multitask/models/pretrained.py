"""Where a shared encoder starts, and loading it: torchvision's ImageNet weights, a state_dict
file, or a network this repository trained (its encoder, and heads to reuse).

Pure torch/torchvision: turning ``model.pretrained`` into :class:`EncoderWeights` (the pipeline's
files, MLflow's registry) is :func:`multitask.pretraining.resolve_start`'s job.

One module, not several: finding the weights (cache, download, hash), reading them (layouts)
and fitting them to an encoder (keys, shapes, input adaptation) share :class:`EncoderWeights`
and the error types, and each is a few functions.

Input adaptation in :func:`load_encoder`, for weights trained on ImageNet (layout
``torchvision``):

- **Normalisation.** The encoder receives pixels standardised with the data's scalar pair,
  ``z = (x - pixel_mean) / pixel_std`` (``x`` in 0..1). The weights expect
  ``y_c = (x - mean_c) / std_c`` per channel (ImageNet's statistics; 0.5/0.5 for Inception
  v3). Since ``x = z * pixel_std + pixel_mean``, ``y_c = z * scale_c + shift_c`` with
  ``scale_c = pixel_std / std_c`` and ``shift_c = (pixel_mean - mean_c) / std_c``: the
  encoder's input adapter holds ``scale`` and ``shift`` as buffers, so saved and exported
  networks apply it and serving still takes raw pixels.
- **1-channel input.** The first convolution's filter is the sum of its three RGB filters,
  ``W = W_r + W_g + W_b``, and the single channel is normalised with the channel averages of
  the weights' statistics (ImageNet: mean 0.449, std 0.226). Exact statement: a convolution is
  linear in its input channels, so for a grey image ``x`` replicated to three channels, the
  3-channel encoder's first convolution computes ``sum_c W_c * n_c(x)`` and the 1-channel one
  ``(sum_c W_c) * n(x)``. These are equal, and so is everything after (the same layers, the
  same weights), whenever every channel has the same normalisation ``n_c = n`` -- borders
  included, since zero padding pads every channel with the same zero. That holds as loaded for
  Inception v3 (0.5 everywhere) and for any encoder whose adapter is equal across channels.
  With ImageNet's per-channel statistics the 1-channel encoder matches the 3-channel one fed
  ``n(x)`` in every channel; its own per-channel inputs ``n_c(x)`` differ from ``n(x)`` by
  at most 0.202 (ImageNet standard deviations) for ``x`` in 0..1, blue at white the worst.
- **ResNet CIFAR stem.** Its 3x3 stride-1 convolution has no ImageNet counterpart and starts
  fresh (seeded); every other layer is loaded.
- **Classifier.** Torchvision's classifier (and Inception's auxiliary one) is dropped.

Weights from this repository (layout ``encoder``) carry the encoder's own adapter: they load
unchanged, expecting data standardised like the data they were trained on (a 3-channel
adapter becomes its channel average on 1-channel input, with the summed filters as above).

Loading is all or nothing: every key the encoder should receive must be in the weights, no
weight may be left over, and shapes must agree; otherwise :class:`WeightsError` names the keys
(and both shapes). Never a silent partial load, never a silent fall back to random weights.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from multitask.io import file_sha256
from multitask.models.zoo import SPECS, TorchvisionEncoder

log = logging.getLogger(__name__)

LISTED = 8  # keys named in an error before "and N more"


class WeightsError(ValueError):
    """Weights that cannot be used: hash mismatch, unreadable file, keys or shapes that do not
    fit the encoder. The message names the file or origin and the keys."""


class MissingWeightsError(FileNotFoundError):
    """Weights absent from the cache and not downloadable (offline): names the file, the folder
    to put it in and the URL it comes from."""


@dataclass(frozen=True)
class EncoderWeights:
    """Weights to start a shared encoder from, and where they come from.

    ``layout``: ``torchvision`` -- keys of torchvision's classification model (``conv1.weight``,
    ``fc.weight``; ImageNet files, plain torchvision state_dicts), the classifier dropped on
    load; ``encoder`` -- keys of this project's encoder module (what a multitask network holds
    under ``encoder.``). ``origin`` is one line for people (MLflow tags, ``train.json``);
    ``sha256`` is :func:`weights_sha256` of the weights read, the same whichever file or logged
    model holds them. ``heads`` maps a task name to its head's state_dict (multitask sources
    only, for ``model.reuse_heads``).
    """

    state: dict[str, Tensor]
    layout: Literal["torchvision", "encoder"]
    origin: str
    sha256: str
    heads: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    backbone: str | None = None


def weights_sha256(state: Mapping[str, Tensor]) -> str:
    """SHA-256 of a state_dict's names, dtypes, shapes and values, in name order: one digest
    for one set of weights whatever holds them (a state_dict file, a network file, a logged
    ``torch.export`` program), where each container's own bytes differ."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# ------------------------------------------------------------------------------ finding files
def imagenet_source(backbone: str) -> tuple[str, str]:
    """``(weight enum member, URL)`` of the ImageNet weights for ``backbone``.

    One fixed member of torchvision's weight enum per backbone (:data:`zoo.SPECS`): ResNet-50
    takes ``IMAGENET1K_V2`` (80.9% top-1, torchvision's default), every other backbone has
    only ``IMAGENET1K_V1``. Fixed rather than ``DEFAULT`` so a torchvision upgrade cannot
    change the starting point silently.
    """
    if backbone not in SPECS:
        raise ValueError(f"model.pretrained: imagenet: torchvision has no ImageNet weights for "
                         f"{backbone}; pick one of {', '.join(SPECS)}")
    from torchvision.models import get_weight  # torchvision costs ~1 s to import

    member = SPECS[backbone].weights
    return member, get_weight(member).url


def cache_folder() -> Path:
    """torch.hub's checkpoint folder, ``$TORCH_HOME/hub/checkpoints`` (as torchvision uses)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hub_path(url: str) -> Path:
    """Where torch.hub's cache keeps the file ``url`` names (torchvision's file name)."""
    return cache_folder() / Path(urlparse(url).path).name


def hash_prefix(file_name: str) -> str | None:
    """The sha256 prefix torchvision writes into its file names (``resnet18-f37072fd.pth``)."""
    match = torch.hub.HASH_REGEX.search(file_name)
    return match.group(1) if match and match.group(1) else None


def download_weights(url: str, *, progress: bool = True) -> Path:
    """The file ``url`` names, in torch.hub's cache: downloaded when absent, hash-checked.

    As ``torch.hub.load_state_dict_from_url(check_hash=True)`` does (same folder, same
    ``download_url_to_file``): a download whose sha256 does not start with the prefix in the
    file name is refused and nothing is kept. A file already in the cache is checked the same
    way (torch.hub trusts it). Offline, or any failed download: :class:`MissingWeightsError`
    naming the file, the folder and the URL.
    """
    path = hub_path(url)
    folder, name = path.parent, path.name
    prefix = hash_prefix(name)
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s to %s", url, path)
        try:
            torch.hub.download_url_to_file(url, str(path), prefix, progress=progress)
        except RuntimeError as exc:  # torch.hub's "invalid hash value"
            raise WeightsError(f"{url}: downloaded file's sha256 does not start with {prefix} "
                               f"(the prefix in its name); nothing was saved ({exc})") from exc
        except OSError as exc:  # no network, refused, HTTP error, timeout
            raise MissingWeightsError(
                f"{name}: not in {folder}, and downloading it failed ({exc}). Download {url} "
                f"where there is internet and put it in {folder} under that name (the folder "
                f"follows TORCH_HOME)") from exc
    if (problem := cached_file_problem(path, url)) is not None:
        raise WeightsError(problem)
    return path


def cached_file_problem(path: Path, url: str) -> str | None:
    """Why ``path``, torch.hub's cached copy of ``url``, is not the published file (its sha256
    does not start with the prefix in its name); None when it is, or its name has no prefix."""
    prefix = hash_prefix(path.name)
    if prefix is None or file_sha256(path).startswith(prefix):
        return None
    return (f"{path}: sha256 does not start with {prefix} (the prefix in its name): corrupt or "
            f"not the published file; delete it and rerun, which downloads it again from {url} "
            f"(offline: fetch that URL where there is internet and put the file in its place)")


# ------------------------------------------------------------------------------ reading files
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch's messages carry terminal colours


def read_payload(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike
        text = _ANSI.sub("", str(exc)).strip()
        if "Unsupported global" in text:  # torch.save(model), not model.state_dict()
            raise WeightsError(
                f"{path}: holds pickled Python objects (a whole model or module), not only "
                "tensors; it is not unpickled here, since unpickling runs code: save the "
                "weights with torch.save(model.state_dict(), path)") from exc
        reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)  # the safe loader's
        cause = reason[1] if reason else (text.splitlines() or [""])[0]  # torch's run long
        raise WeightsError(f"{path}: not a PyTorch weights file (torch.load: "
                           f"{type(exc).__name__}{': ' + cause if cause else ''}); give a file "
                           "written by torch.save(state_dict) or multitask train") from exc


def is_state_dict(payload: Any) -> bool:
    return (isinstance(payload, Mapping) and bool(payload)
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in payload.items()))


def imagenet_weights(backbone: str, *, progress: bool = True) -> EncoderWeights:
    """torchvision's ImageNet weights for ``backbone`` (:func:`imagenet_source`), from the
    cache or downloaded (:func:`download_weights`)."""
    member, url = imagenet_source(backbone)
    path = download_weights(url, progress=progress)
    state = read_payload(path)
    if not is_state_dict(state):
        raise WeightsError(f"{path}: not a state_dict (names -> tensors); delete it and rerun")
    return EncoderWeights(dict(state), "torchvision", f"imagenet: {member} ({path.name})",
                          weights_sha256(state), backbone=backbone)


def file_weights(path: Path) -> EncoderWeights:
    """A weights file: a plain torchvision state_dict (layout ``torchvision``) or a network
    file written by ``multitask.training.session.save_network`` (its encoder and heads; hard
    parameter sharing only)."""
    payload = read_payload(path)
    if isinstance(payload, Mapping) and "state_dict" in payload and "model" in payload:
        model = payload["model"]
        architecture = model.get("architecture")
        if architecture != "hps":
            raise WeightsError(
                f"{path}: a {architecture} network; only a hard-parameter-sharing (hps) network "
                f"has one shared encoder to start from (train one with model.architecture: hps)")
        return network_weights(payload["state_dict"], origin=f"file: {path} (multitask network)",
                               sha256=weights_sha256(payload["state_dict"]),
                               backbone=model.get("backbone"))
    if not is_state_dict(payload):
        inner = sorted(str(k) for k, v in payload.items() if is_state_dict(v)) if isinstance(
            payload, Mapping) else []
        fix = (f"it holds one under {inner[0]!r} (a training checkpoint?): save that alone, "
               f"torch.save(checkpoint[{inner[0]!r}], path)" if inner else
               "save the weights with torch.save(model.state_dict(), path)")
        raise WeightsError(f"{path}: neither a state_dict (names -> tensors) nor a network file "
                           f"written by multitask train; {fix}")
    return EncoderWeights(dict(payload), "torchvision", f"file: {path}", weights_sha256(payload))


def network_weights(state_dict: Mapping[str, Tensor], *, origin: str, sha256: str,
                    backbone: str | None) -> EncoderWeights:
    """The encoder (``encoder.*``) and heads (``heads.<task>.*``) of a multitask network's
    state_dict, as an ``encoder``-layout start."""
    encoder = {k.removeprefix("encoder."): v for k, v in state_dict.items()
               if k.startswith("encoder.")}
    if not encoder:
        raise WeightsError(f"{origin}: no encoder.* weights; only a hard-parameter-sharing "
                           f"(hps) network has one shared encoder to start from")
    heads: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        if key.startswith("heads."):
            task, _, rest = key.removeprefix("heads.").partition(".")
            heads.setdefault(task, {})[rest] = value
    return EncoderWeights(encoder, "encoder", origin, sha256, heads, backbone)


# ---------------------------------------------------------------------------------- loading
def imagenet_affine(encoder: TorchvisionEncoder, pixel_mean: float | Sequence[float],
                    pixel_std: float | Sequence[float]) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` mapping data standardised with ``(pixel_mean, pixel_std)`` (a float,
    or one per channel) to the per-channel normalisation the backbone's weights expect (channel
    averages on 1 channel)."""
    mean = torch.tensor(encoder.spec.mean, dtype=torch.float64)
    std = torch.tensor(encoder.spec.std, dtype=torch.float64)
    if encoder.in_channels != len(mean):
        mean, std = mean.mean().expand(encoder.in_channels), std.mean().expand(encoder.in_channels)
    data_mean = torch.as_tensor(pixel_mean, dtype=torch.float64)
    data_std = torch.as_tensor(pixel_std, dtype=torch.float64)
    return (data_std / std).float(), ((data_mean - mean) / std).float()


def torchvision_state(encoder: TorchvisionEncoder, state: Mapping[str, Tensor]
                      ) -> tuple[dict[str, Tensor], set[str]]:
    """Torchvision keys -> the encoder's (``net.`` prefix), classifier dropped; and the keys the
    encoder sets itself (the adapter; a CIFAR stem's convolution, which starts fresh)."""
    dropped = (encoder.spec.classifier, *encoder.spec.dropped)
    source = {f"net.{k}": v for k, v in state.items()
              if not any(k == d or k.startswith(d + ".") for d in dropped)}
    own = {"adapter.scale", "adapter.shift"}
    if encoder.stem_kind == "cifar":
        own.add(f"{encoder.input_conv}.weight")
    return {k: v for k, v in source.items() if k not in own}, own


def adapt_channels(source: dict[str, Tensor], target: Mapping[str, Tensor], input_conv: str
                   ) -> None:
    """3-channel weights for a 1-channel encoder: sum the first convolution's filters; average
    an ``encoder``-layout adapter's per-channel scale and shift."""
    conv = f"{input_conv}.weight"
    if (conv in source and conv in target and source[conv].dim() == 4
            and source[conv].shape[1] == 3 and target[conv].shape[1] == 1):
        # summed in float64, so the filter is rounded once, to the encoder's precision
        source[conv] = source[conv].double().sum(dim=1, keepdim=True)
    for key in ("adapter.scale", "adapter.shift"):
        if (key in source and key in target and source[key].numel() == 3
                and target[key].numel() == 1):
            source[key] = source[key].mean().reshape(1)


def listed(keys: list[str]) -> str:
    more = f" and {len(keys) - LISTED} more" if len(keys) > LISTED else ""
    return ", ".join(keys[:LISTED]) + more


def load_encoder(encoder: nn.Module, weights: EncoderWeights, *,
                 pixel_mean: float | Sequence[float], pixel_std: float | Sequence[float]) -> None:
    """Load ``weights`` into ``encoder`` with the input adaptation of the module docstring.

    ``pixel_mean``/``pixel_std`` are the data's standardisation (0..1 scale); they matter for
    ``torchvision``-layout weights, whose normalisation the adapter is set to. All or nothing:
    :class:`WeightsError` names missing, unexpected and mis-shaped keys.
    """
    state = fitted_state(encoder, weights)
    encoder.load_state_dict(state, strict=True)
    if weights.layout == "torchvision":
        assert isinstance(encoder, TorchvisionEncoder)
        encoder.adapter.set_affine(*imagenet_affine(encoder, pixel_mean, pixel_std))
    log.info("encoder %s started from %s", getattr(encoder, "name", type(encoder).__name__),
             weights.origin)


def fitted_state(encoder: nn.Module, weights: EncoderWeights) -> dict[str, Tensor]:
    """The state_dict ``encoder`` gets from ``weights`` (keys renamed, the classifier dropped,
    3-channel filters summed for 1-channel input; the rest ``encoder``'s own), or
    :class:`WeightsError` naming missing, unexpected and mis-shaped keys: what
    :func:`load_encoder` loads, and what the check stage tries before any stage runs."""
    name = getattr(encoder, "name", type(encoder).__name__)
    if weights.backbone is not None and weights.backbone != name:
        raise WeightsError(f"{weights.origin}: weights for a {weights.backbone} encoder, not "
                           f"{name}; set model.backbone: {weights.backbone} or start from "
                           f"weights for {name}")
    target = encoder.state_dict()
    if weights.layout == "torchvision":
        if not isinstance(encoder, TorchvisionEncoder):
            raise WeightsError(f"{weights.origin}: torchvision weights, but {name} is not a "
                               f"torchvision backbone ({', '.join(SPECS)})")
        source, own = torchvision_state(encoder, weights.state)
    elif weights.layout == "encoder":
        source, own = dict(weights.state), set()
    else:
        raise ValueError(f"{weights.origin}: unknown weights layout {weights.layout!r}")
    adapt_channels(source, target, getattr(encoder, "input_conv", ""))
    missing = sorted(set(target) - set(source) - own)
    unexpected = sorted(set(source) - set(target))
    mismatched = [f"{k}: {list(source[k].shape)} in the weights, {list(target[k].shape)} in "
                  f"the encoder" for k in sorted(set(source) & set(target))
                  if source[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        problems = ([f"missing {listed(missing)}"] if missing else []) + (
            [f"unexpected {listed(unexpected)}"] if unexpected else []) + mismatched
        raise WeightsError(
            f"{weights.origin}: does not fit the {name} encoder ({'; '.join(problems)}); check "
            f"model.backbone, model.width, model.stem and the data's channels against the "
            "weights")
    return {**target, **{k: v.to(target[k].dtype) for k, v in source.items()}}


def load_heads(model: nn.Module, weights: EncoderWeights) -> list[str]:
    """``model.reuse_heads``: copy each head :func:`matching_heads` finds from ``weights.heads``;
    the names of the reused heads (the others keep their fresh initialisation)."""
    reused = matching_heads(model, weights)
    for task, head in model.heads.items():
        if task in reused:
            head.load_state_dict(weights.heads[task])
        elif task in weights.heads:
            log.info("head %s not reused: its shapes differ from %s's", task, weights.origin)
    return reused


def matching_heads(model: nn.Module, weights: EncoderWeights) -> list[str]:
    """The tasks of ``model`` whose head ``weights`` holds under the same task name with the
    same parameter names and shapes, in ``model``'s order: what ``model.reuse_heads`` reuses."""
    heads = getattr(model, "heads", None)
    if not isinstance(heads, nn.ModuleDict):
        raise WeightsError(f"model.reuse_heads: the {getattr(model, 'name', 'given')} "
                           f"architecture has no per-task heads to reuse; use hps or "
                           f"cross_stitch, or set reuse_heads: false")
    matching = []
    for task, head in heads.items():
        saved = weights.heads.get(task)
        own = head.state_dict()
        if saved is not None and saved.keys() == own.keys() and all(
                saved[k].shape == v.shape for k, v in own.items()):
            matching.append(task)
    return matching
