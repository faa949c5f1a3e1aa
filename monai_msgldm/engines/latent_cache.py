# Copyright (c) monai_msgldm contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Stage-2 latent caching: the frozen autoencoder's posterior of every training slice, encoded once."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from monai.data import MetaTensor
from monai.networks.nets import AutoencoderKL
from monai.transforms import Compose, OneOf, RandomizableTrait, RandomOrder, SomeOf
from monai.utils import ImageMetaKey

from monai_msgldm.networks.nets.latent_diffusion import MultiContrastLDM
from monai_msgldm.networks.nets.msgldm import MSGLDM
from monai_msgldm.transforms import RandAxialSliceSamplesd, RandModalityDropoutd
from monai_msgldm.transforms.slicing import SLICE_INDEX_KEY

__all__ = ["LatentCache", "StaleLatentError", "check_cacheable_transforms"]

#: statistics per contrast in a slice's fingerprint: mean, mean of squares, two fixed random projections
_FINGERPRINT_STATS = 4


class StaleLatentError(RuntimeError):
    """A cached slice came back with a different image: its cached latents would be stale."""


class _Entry(NamedTuple):
    mean: torch.Tensor
    std: torch.Tensor | None
    fingerprint: torch.Tensor
    features: tuple[torch.Tensor, ...] | None


def _flatten(transform: Any) -> list[Any]:
    if isinstance(transform, Compose) and not isinstance(transform, (OneOf, SomeOf, RandomOrder)):
        return [t for child in transform.transforms for t in _flatten(child)]
    return [transform]


def check_cacheable_transforms(transform: Any, name: str = "check_cacheable_transforms") -> None:
    """Raise when a transform chain may give different images for the same slice key (so cached latents go stale).

    A cached latent is valid only for the exact image it was encoded from. The only random transforms allowed are
    those that do not change the image content of a given slice: the slicer
    (:py:class:`~monai_msgldm.transforms.RandAxialSliceSamplesd`, it picks which slice, and the slice index is part
    of the key) and :py:class:`~monai_msgldm.transforms.RandModalityDropoutd` with ``mask_key`` (it writes a mask
    and leaves the images as they are). Any other random transform (``RandomizableTrait``, as MONAI's
    ``CacheDataset`` detects them; ``OneOf`` / ``SomeOf`` / ``RandomOrder`` included), before or after the slicer,
    is refused. Deterministic transforms are fine. (A ``Lambda`` that draws random numbers cannot be seen here:
    :py:class:`LatentCache` also checks every image it serves against a fingerprint.)

    Args:
        transform: a MONAI ``Compose`` (nested ones are walked), a single transform, or ``None`` (nothing checked).
        name: the caller's name, for the message.

    Raises:
        ValueError: naming the random transforms that change images.
    """
    if transform is None:
        return
    bad = []
    for t in _flatten(transform):
        if not isinstance(t, RandomizableTrait) or isinstance(t, RandAxialSliceSamplesd):
            continue
        if isinstance(t, RandModalityDropoutd) and t.mask_key is not None:
            continue
        bad.append(type(t).__name__)
    if bad:
        raise ValueError(
            f"{name} caches the autoencoder's latents per slice, which is valid only when a slice's image is the same "
            f"at every visit; the training transforms hold random transforms that change images: {bad} (only "
            "RandAxialSliceSamplesd and RandModalityDropoutd with mask_key are allowed). Train without the latent "
            "cache (bundle: --cache_latents False) or remove these augmentations."
        )


def _as_plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _first_of(batch: Mapping, batch_key: str, meta: Mapping, meta_key: str) -> Any:
    """``batch[batch_key]``, else ``meta[meta_key]``, else ``None``."""
    if batch_key in batch:
        return batch[batch_key]
    return meta.get(meta_key)


def _to_list(value: Any, n: int, what: str) -> list:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(-1).tolist()
    elif isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        value = [value]
    value = list(value)
    if len(value) != n:
        raise ValueError(f"LatentCache expects one {what} per batch item ({n}), got {len(value)}: {value!r}.")
    return value


class LatentCache:
    """The posterior of the frozen stage-0 autoencoder for every training slice, encoded once and reused.

    Stage 2 trains the UNet on ``z0 = scale_factor * (mean + std * eps)``, a fresh sample of the autoencoder's
    posterior ``N(mean, std^2)`` of each slice (what ``MultiContrastLDM.encode`` draws through MONAI's
    ``AutoencoderKL.encode_stage_2_inputs``). The autoencoder is frozen, so ``mean`` and ``std`` of a slice never
    change: this cache encodes each slice the first time it is seen (lazily, misses of a batch in one encoder call)
    and keeps ``mean`` and ``std`` of every contrast, ``(M * latent_channels, *L)`` each; every later visit draws a
    fresh ``eps`` only (:py:meth:`sample`), so training sees the same distribution of latents as without the cache.
    For a ``VQVAE`` (deterministic) the quantized latent is the mean and there is no std.

    Slices are keyed by ``(case, slice index)``: the case is ``batch[case_key]`` (the datalist's ``subject``), or
    the image's ``filename_or_obj`` meta data when the batch has no such key; the slice index is ``batch[slice_key]``
    or the image meta data ``slice_key``, which :py:class:`~monai_msgldm.transforms.RandAxialSliceSamplesd` records
    (``slice_key=None``: the case alone is the key, for data sets of 2D files).

    Stale latents are refused: each entry keeps a fingerprint of its image (per contrast, in float64: the mean, the
    mean of squares and two projections on fixed random +-1 fields), and a cached slice whose image comes back
    different (more than ``atol`` on any of these) raises :py:class:`StaleLatentError`. Random augmentation of the
    images is therefore incompatible with the cache (see :py:func:`check_cacheable_transforms`, which
    :py:class:`~monai_msgldm.engines.LatentDiffusionTrainer` runs on its data set's transforms).

    With ``structure_features=True`` (MSG-LDM only) the cache also keeps the frozen stage-1 structure encoders'
    features of every contrast of the slice (``MSGLDM.structure_features``: one tensor per level, before the
    fusion). They depend on each contrast's own image only, so they hold for any availability mask drawn later; the
    trainer then runs only the fusion and enhancement of the structure branch per iteration. This removes most of
    the structure branch's cost (a stage-2 iteration at the demo's size took 0.207 s instead of 0.326 s with the
    latents alone, ``benchmarks/stage2_cache.py``) but the features are large: ``M * sum_l structure_channels[l] *
    prod(S_l)`` values per slice, 0.9 MiB at the demo's size (64 x 64, channels 8, 16, 32) and 35 MiB at the paper's
    (192 x 192, channels 32 to 256): for small data sets only.

    The cache lives in memory (``device``, CPU by default) and is not saved with checkpoints (a resumed run refills
    it). Size: ``2 * M * latent_channels * prod(L) * bytes(dtype)`` per slice, 72 KiB for the paper's model at
    192 x 192 (4 contrasts x 4 channels x 24 x 24, float32), so about 2.6 GiB for 38,000 slices (BraTS 2020's
    ~295 training cases x ~130 slices); under DDP each rank holds its own.

    Args:
        case_key: batch key of the case identifier (strings or numbers); see above for the fallback.
        slice_key: batch key (or image meta data key) of the slice index; ``None``: no slice index.
        image_key: batch key of the images (whose meta data is read for the fallbacks).
        device: where entries are stored; ``None``: on the images' device.
        dtype: storage dtype of ``mean`` and ``std`` (float32; float16 / bfloat16 halve the memory but round the
            posterior).
        atol: tolerance of the fingerprint check (per-pixel averages of images in [-1, 1]); ``None``: no check.
        structure_features: also cache MSG-LDM's per-contrast structure encoder features (see above; :py:meth:`lookup`
            returns them).

    Example::

        cache = LatentCache()
        keys = cache.keys(batch)                                   # [(subject, slice index), ...]
        mean, std = cache.posterior(model, images, keys)           # encodes the slices not seen before
        z0 = cache.sample(mean, std, model.scale_factor)           # scale_factor * (mean + std * eps)
        prediction, target = inferer(images, model, available, latents=z0)
        # with LatentCache(structure_features=True): the structure encoders' features too
        found = cache.lookup(model, images, keys)                  # {"mean", "std", "structure_features"}
    """

    def __init__(
        self,
        case_key: str = "subject",
        slice_key: str | None = SLICE_INDEX_KEY,
        image_key: str = "image",
        device: str | torch.device | None = "cpu",
        dtype: torch.dtype = torch.float32,
        atol: float | None = 1e-5,
        structure_features: bool = False,
    ) -> None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"LatentCache expects a floating point torch dtype, got {dtype!r}.")
        if atol is not None and not float(atol) >= 0.0:
            raise ValueError(f"LatentCache expects atol >= 0 or None, got {atol!r}.")
        self.case_key = case_key
        self.slice_key = slice_key
        self.image_key = image_key
        self.device = None if device is None else torch.device(device)
        self.dtype = dtype
        self.atol = None if atol is None else float(atol)
        self.structure_features = bool(structure_features)
        self._entries: dict[Hashable, _Entry] = {}
        self._probes: dict[tuple[int, str], torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------------ bookkeeping
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached tensors (means, stds and fingerprints)."""
        total = 0
        for mean, std, fingerprint, features in self._entries.values():
            for t in (mean, std, fingerprint, *(features or ())):
                total += 0 if t is None else t.numel() * t.element_size()
        return total

    def clear(self) -> None:
        """Forget every entry (e.g. after the autoencoder changed) and reset the counters."""
        self._entries.clear()
        self.hits = self.misses = 0

    # ------------------------------------------------------------------ keys
    def keys(self, batchdata: Mapping[Hashable, Any]) -> list[Hashable]:
        """The ``(case, slice index)`` key of every item of a collated batch (see the class)."""
        if not isinstance(batchdata, Mapping) or self.image_key not in batchdata:
            got = list(batchdata) if isinstance(batchdata, Mapping) else type(batchdata).__name__
            raise ValueError(f"LatentCache expects a dict batch with the images under '{self.image_key}', got {got}.")
        images = batchdata[self.image_key]
        n = len(images)
        meta = images.meta if isinstance(images, MetaTensor) else {}
        cases = _first_of(batchdata, self.case_key, meta, ImageMetaKey.FILENAME_OR_OBJ)
        if cases is None:
            raise ValueError(
                f"LatentCache needs a case identifier per slice: batch key '{self.case_key}' (e.g. the datalist's "
                f"'subject') or the images' '{ImageMetaKey.FILENAME_OR_OBJ}' meta data; got keys {list(batchdata)} "
                "and no such meta data."
            )
        cases = [str(c) if isinstance(c, (str, bytes)) else c for c in _to_list(cases, n, f"case ('{self.case_key}')")]
        if self.slice_key is None:
            return [(c,) for c in cases]
        indices = _first_of(batchdata, self.slice_key, meta, self.slice_key)
        if indices is None:
            raise ValueError(
                f"LatentCache needs the slice index of every item: batch key or image meta data '{self.slice_key}' "
                "(RandAxialSliceSamplesd records it in the slices' meta data; keep meta data tracking on), or "
                f"slice_key=None for data sets of 2D files; got keys {list(batchdata)}."
            )
        indices = [int(i) for i in _to_list(indices, n, f"slice index ('{self.slice_key}')")]
        return list(zip(cases, indices))

    # ------------------------------------------------------------------ fingerprints
    def fingerprint(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, M, *S) -> (B, M, 4)`` float64 per-contrast statistics of the images (see the class)."""
        x = _as_plain(images).detach().to(torch.float64).flatten(2)
        n = x.shape[-1]
        probe_key = (n, str(x.device))
        if probe_key not in self._probes:
            g = torch.Generator().manual_seed(n)
            signs = torch.randint(0, 2, (n, 2), generator=g).to(torch.float64) * 2.0 - 1.0
            self._probes[probe_key] = signs.to(x.device)
        proj = x @ self._probes[probe_key] / n
        return torch.cat([x.mean(-1, keepdim=True), (x * x).mean(-1, keepdim=True), proj], dim=-1)

    def _check(self, key: Hashable, cached: torch.Tensor, current: torch.Tensor) -> None:
        if self.atol is None:
            return
        diff = float((cached.to(current.device) - current).abs().max())
        if not diff <= self.atol:  # also catches NaN
            raise StaleLatentError(
                f"LatentCache: the image of slice {key!r} differs from the one its latents were cached from (largest "
                f"fingerprint difference {diff:.3g} > atol {self.atol:g}). Something random changes the slices' "
                "images between visits (augmentation, a random Lambda, a data set that changes): cached latents would "
                "be stale. Train without the latent cache (bundle: --cache_latents False) or make the image pipeline "
                "deterministic."
            )

    # ------------------------------------------------------------------ cache
    def lookup(self, model: MultiContrastLDM, images: torch.Tensor, keys: Sequence[Hashable]) -> dict[str, Any]:
        """Everything cached for the slices of ``images``, encoding (without gradients) those not cached yet.

        Args:
            model: the (unwrapped) ``MultiContrastLDM`` whose frozen autoencoder encodes (an ``MSGLDM`` with
                ``structure_features``, whose frozen structure encoders also run).
            images: ``(B, M, *S)``, all contrasts of each slice (as the training path encodes them).
            keys: ``B`` keys (:py:meth:`keys`).

        Returns:
            ``{"mean": ..., "std": ...}``, the posterior ``(B, M * latent_channels, *L)`` each on the images' device
            in ``dtype`` (``std`` is ``None`` for a VQVAE), unscaled; with ``structure_features`` also
            ``"structure_features"``: ``[(B, M, structure_channels[l], *S_l) for each level l]``.

        Raises:
            StaleLatentError: a cached slice's image differs from the one it was encoded from.
        """
        model.check_images(images)
        if self.structure_features and not isinstance(model, MSGLDM):
            raise ValueError(
                f"LatentCache(structure_features=True) caches MSG-LDM's structure encoder features and needs an "
                f"MSGLDM, got {type(model).__name__}."
            )
        keys = list(keys)
        if len(keys) != images.shape[0]:
            raise ValueError(f"LatentCache expects one key per image ({images.shape[0]}), got {len(keys)}.")
        prints = self.fingerprint(images)
        first: dict[Hashable, int] = {}
        for i, key in enumerate(keys):
            if key in self._entries:
                self._check(key, self._entries[key].fingerprint, prints[i])
                self.hits += 1
            elif key in first:  # the same new slice twice in one batch
                self._check(key, prints[first[key]], prints[i])
                self.hits += 1
            else:
                first[key] = i
        if first:
            self._add(model, images, prints, first)
        entries = [self._entries[k] for k in keys]
        device = images.device
        found: dict[str, Any] = {"mean": torch.stack([e.mean for e in entries]).to(device, non_blocking=True)}
        stds = [e.std for e in entries if e.std is not None]
        found["std"] = torch.stack(stds).to(device, non_blocking=True) if stds else None
        if self.structure_features:
            features = [e.features for e in entries if e.features is not None]
            found["structure_features"] = [torch.stack(level).to(device, non_blocking=True) for level in zip(*features)]
        return found

    def _add(
        self, model: MultiContrastLDM, images: torch.Tensor, prints: torch.Tensor, first: dict[Hashable, int]
    ) -> None:
        """Encode the new slices ``images[first.values()]`` in one call and store them under ``first``'s keys."""
        rows = list(first.values())
        mean, std = self._encode(model, images[rows])
        features = None
        if self.structure_features:
            with torch.no_grad():
                features = model.structure_features(_as_plain(images[rows]))  # type: ignore[operator]
        store = self.device or images.device

        def keep(t: torch.Tensor) -> torch.Tensor:
            return t.to(store, self.dtype).clone()

        for j, (key, i) in enumerate(first.items()):
            self._entries[key] = _Entry(
                mean=keep(mean[j]),
                std=None if std is None else keep(std[j]),
                fingerprint=prints[i].to(store).clone(),
                features=None if features is None else tuple(keep(f[j]) for f in features),
            )
        self.misses += len(rows)

    def posterior(
        self, model: MultiContrastLDM, images: torch.Tensor, keys: Sequence[Hashable]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The cached posterior ``(mean, std)`` of every slice of ``images`` (:py:meth:`lookup`'s ``mean`` and
        ``std``), encoding (without gradients) those not cached yet.

        Raises:
            StaleLatentError: a cached slice's image differs from the one it was encoded from.
        """
        found = self.lookup(model, images, keys)
        return found["mean"], found["std"]

    @staticmethod
    @torch.no_grad()
    def _encode(model: MultiContrastLDM, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Posterior ``(mean, std)`` of every contrast, ``(K, M * latent_channels, *L)``, as
        ``ModalityWiseAutoencoder`` flattens the contrasts into the batch."""
        wrapper = model.autoencoder
        k, m = images.shape[:2]
        flat = _as_plain(images).reshape(k * m, 1, *images.shape[2:])
        if isinstance(wrapper.model, AutoencoderKL):
            mean, std = wrapper.model.encode(flat)
        else:  # VQVAE: deterministic
            mean, std = wrapper.model.encode_stage_2_inputs(flat), None
        shape = (k, m * wrapper.latent_channels, *mean.shape[2:])
        return mean.reshape(shape), None if std is None else std.reshape(shape)

    @staticmethod
    def sample(
        mean: torch.Tensor,
        std: torch.Tensor | None,
        scale_factor: torch.Tensor | float,
        eps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``scale_factor * (mean + eps * std)`` in float32 (MONAI's ``AutoencoderKL.sampling`` then the model's
        scale), ``eps`` drawn from the global RNG of ``mean``'s device when ``None``; ``scale_factor * mean`` when
        ``std`` is ``None``."""
        mean = mean.float()
        if std is None:
            return mean * scale_factor
        if eps is None:
            eps = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype)
        elif eps.shape != mean.shape:
            raise ValueError(f"LatentCache expects eps of shape {tuple(mean.shape)}, got {tuple(eps.shape)}.")
        return (mean + eps * std.float()) * scale_factor

    def latents(
        self, model: MultiContrastLDM, images: torch.Tensor, keys: Sequence[Hashable], eps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:py:meth:`posterior` then :py:meth:`sample` with the model's ``scale_factor``: the scaled joint latent
        ``(B, M * latent_channels, *L)`` that ``model.encode(images)`` would draw."""
        mean, std = self.posterior(model, images, keys)
        return self.sample(mean, std, model.scale_factor, eps)
