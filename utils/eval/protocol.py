"""How one image is restored and scored: the :class:`Protocol` and :func:`restore_array` (the model to test is
loaded by :func:`utils.checkpoints.load_model`).

Protocols:

- ``reference``: crop degraded and target to multiples of 8 by dropping bottom rows and right
  columns, restore, quantise output and target to 8 bits (clamp to [0, 1], x255, +0.5, truncate:
  ``torchvision.utils.save_image``'s rule, ties round up), score;
- ``pad``: reflect-pad the input to multiples of 8, restore, crop back; every pixel is scored.

Metrics are always computed on 8-bit images: 16-bit targets are rounded to 8 bits for scoring,
while the saved restorations of 16-bit inputs stay 16-bit.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from utils.compiled import COMPILE_MODES
from utils.data.image_io import quantise, to_float
from utils.data.noise import SEED_RULE
from utils.errors import UsageError, UserError, counted, human_bytes
from utils.eval.inference import PRECISIONS, check_tiling, is_out_of_memory, restore, restore_tiled
from utils.eval.metrics import METRIC_SPACES, SSIM_KINDS
from utils.memory import TILE_SIDES, TILED_IMAGE_BYTES_PER_PIXEL, available_bytes, choose_tile, restore_need

PROTOCOLS = ("reference", "pad")
# How the command line overrides automatic tiling, at the end of its note (the app, with its own control, drops it).
AUTO_TILE_FLAGS = " (--tile N to choose, --tile 0 never to tile)"
SIZE_MULTIPLE = 8
_PROTOCOL_TEXT = {
    "reference": "crop degraded and target to multiples of 8 (bottom rows and right columns dropped), restore, "
                 "quantise output and target to 8 bits (clamp [0,1], x255, +0.5, truncate: round half up as "
                 "torchvision save_image); EXIF orientation ignored",
    "pad": "reflect-pad the input to multiples of 8, restore, crop back to the full size, quantise output and "
           "target to 8 bits (clamp [0,1], x255, +0.5, truncate: round half up as torchvision save_image); "
           "EXIF orientation ignored; every pixel is scored",
}
_SSIM_TEXT = {"skimage": "scikit-image default (7x7 uniform window, per channel, data range 255)",
              "gaussian": "BasicSR/MATLAB (11x11 Gaussian window sigma 1.5, valid region, per channel, data range 255)"}
_SPACE_TEXT = {"rgb": "8-bit RGB", "y": "BT.601 Y with offset, 16 + (65.481 R + 128.553 G + 24.966 B)/255"}


# --------------------------------------------------------------------------- protocol

@dataclass
class Protocol:
    """How images are prepared, restored and scored (printed with the table and saved with the results)."""
    protocol: str = "reference"
    metric_space: str = "rgb"
    ssim: str = "skimage"
    crop_border: int = 0
    precision: str = "fp32"
    tile: int | None = None  # None: tile only an image that would not fit memory_budget; 0: never tile
    tile_overlap: int = 32
    tile_batch: int = 4
    memory_budget: int | None = None  # bytes a restore may add (set from the device's free memory when None)
    lpips: bool = False
    lpips_net: str = "alex"
    fid: bool = False
    noise_seed: int = 0
    compile: str = "off"  # torch.compile mode of the forward (utils.compiled.COMPILE_MODES)

    def validate(self) -> "Protocol":
        for value, allowed, flag in ((self.protocol, PROTOCOLS, "--protocol"), (self.metric_space, METRIC_SPACES,
                                     "--metric-space"), (self.ssim, SSIM_KINDS, "--ssim"),
                                     (self.precision, PRECISIONS, "--precision"),
                                     (self.compile, COMPILE_MODES, "--compile")):
            if value not in allowed:
                raise ValueError(f"{flag} must be one of {allowed}, got {value!r}")
        if self.crop_border < 0:
            raise ValueError(f"--crop-border must be >= 0, got {self.crop_border}")
        if self.tile is not None and (self.tile < 0 or self.tile % SIZE_MULTIPLE):
            below = max(SIZE_MULTIPLE, self.tile // SIZE_MULTIPLE * SIZE_MULTIPLE)
            nearest = f"--tile {below} or {below + SIZE_MULTIPLE}" if self.tile > SIZE_MULTIPLE else \
                f"--tile {SIZE_MULTIPLE * 64}"
            raise ValueError(f"--tile must be a positive multiple of {SIZE_MULTIPLE} (the network's size step), or 0 "
                             f"never to tile, got {self.tile}: e.g. {nearest}")
        if self.tile:
            check_tiling(self.tile, self.tile_overlap, SIZE_MULTIPLE)
        elif self.tile is None:  # automatic: some tile it may choose must take the overlap (the others are passed)
            try:
                check_tiling(max(TILE_SIDES), self.tile_overlap, SIZE_MULTIPLE)
            except ValueError:
                raise ValueError(f"--tile-overlap {self.tile_overlap} leaves no step in any tile automatic tiling "
                                 f"may choose (at most {max(TILE_SIDES)} pixels): use an overlap below "
                                 f"{max(TILE_SIDES) - SIZE_MULTIPLE + 1}, or choose --tile") from None
        return self

    def with_budget(self, device: torch.device) -> "Protocol":
        """This protocol with ``memory_budget`` set from ``device``'s free memory now (90 % of it), when
        tiling is automatic and no budget was given; unchanged otherwise."""
        if self.tile is not None or self.memory_budget is not None:
            return self
        free = available_bytes(device)
        return self if free is None else replace(self, memory_budget=int(0.9 * free))

    def scores_caption(self) -> str:
        """What the PSNR/SSIM of a figure are, in a line: the channels scored, the SSIM window, any border left out
        (a figure shows the whole image, so a cropped border must be said)."""
        space = {"rgb": "8-bit RGB", "y": "the Y channel (BT.601)"}[self.metric_space]
        window = {"skimage": "SSIM with scikit-image's 7x7 uniform window",
                  "gaussian": "SSIM with an 11x11 Gaussian window (BasicSR)"}[self.ssim]
        border = f", a {self.crop_border}-px border left out of both (shown here)" if self.crop_border else ""
        return f"PSNR (dB) / SSIM against the target on {space}; {window}{border}"

    def describe(self) -> dict[str, Any]:
        """The protocol as written to results.json (values plus what they mean)."""
        d = asdict(self)
        d.pop("memory_budget")
        if self.tile is None:
            d["tile"] = "automatic: an image that would not fit the free memory is restored in tiles"
        d["protocol_rule"] = _PROTOCOL_TEXT[self.protocol]
        d["metric_space_rule"] = _SPACE_TEXT[self.metric_space]
        d["ssim_rule"] = _SSIM_TEXT[self.ssim]
        d["bit_depth"] = ("metrics on 8-bit images: outputs and 16-bit targets are rounded to 8 bits for "
                          "scoring; saved restorations of 16-bit inputs are 16-bit PNGs")
        d["noise"] = SEED_RULE.replace("<noise_seed>", str(self.noise_seed))
        d["lpips_input"] = "[-1, 1]" if self.lpips else None
        d["average"] = "mean of the rows' mean PSNR/SSIM (each row averages its images)"
        return d


def protocol_from_args(args) -> Protocol:
    """The protocol the tester's flags (``--protocol``, ``--ssim``, ``--tile``, ...) ask for, checked: a value that
    cannot be is a :class:`UsageError` naming the flag and the fix. The tester and its ``--check-data`` use it."""
    try:
        return Protocol(protocol=args.protocol, metric_space=args.metric_space, ssim=args.ssim,
                        crop_border=args.crop_border, precision=args.precision, tile=args.tile,
                        tile_overlap=args.tile_overlap, tile_batch=args.tile_batch, lpips=args.lpips, fid=args.fid,
                        noise_seed=args.noise_seed, compile=args.compile).validate()
    except ValueError as exc:  # the message names the flag and the fix
        raise UsageError(str(exc)) from exc


def crop_to_multiple(img: np.ndarray, multiple: int = SIZE_MULTIPLE) -> np.ndarray:
    """``(H, W[, C]) -> (H - H % multiple, W - W % multiple[, C])``: drop bottom rows and right columns (the
    reference's crop); a view, not a copy."""
    h, w = img.shape[:2]
    return img[: h - h % multiple, : w - w % multiple]


def to_8bit(img: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` ``uint8`` unchanged; ``uint16`` rounded to 8 bits (x / 65535 x 255), same shape."""
    return img if img.dtype == np.uint8 else quantise(to_float(img), 8)


# --------------------------------------------------------------------------- restoring

class RestoreOutOfMemory(UserError, RuntimeError):
    """Restoring one image ran out of memory; the message says how to bound it."""


class NonFiniteOutput(UserError, ValueError):
    """The network returned NaN or inf for an image (an overflow in half precision, diverged weights)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def automatic_tile(model: nn.Module, shape: tuple[int, int], protocol: Protocol, device: torch.device,
                   name: str) -> tuple[tuple[int, int] | None, str | None]:
    """``((tile, tile_batch), note)`` when an image of ``shape`` (H, W) would not fit ``protocol.memory_budget``
    whole, else ``(None, None)``. Raises :class:`RestoreOutOfMemory` when not even the smallest tile fits."""
    budget = protocol.memory_budget
    if protocol.tile is not None or budget is None or not hasattr(model, "config"):
        return None, None
    h, w = shape
    need = restore_need(model, protocol.precision, h, w)
    if need <= budget:
        return None, None
    # on the CPU, the whole image's buffers of tiled restoring share the budget with the tiles' activations
    whole = TILED_IMAGE_BYTES_PER_PIXEL * h * w if device.type == "cpu" else 0
    chosen = choose_tile(model, protocol.precision, h, w, budget - whole, protocol.tile_batch, protocol.tile_overlap,
                         SIZE_MULTIPLE)
    if chosen is None:
        raise RestoreOutOfMemory(f"{name} ({h}x{w}) needs about {human_bytes(need)} to restore and even small tiles "
                                 f"need more than the {human_bytes(budget)} free on {device}: free memory, or use a "
                                 f"smaller --preset / --precision bf16")
    note = (f"note: {name} ({h}x{w}) would need about {human_bytes(need)} on {device}, {human_bytes(budget)} free: "
            f"restoring it in {chosen[0]}x{chosen[0]} tiles, {chosen[1]} a pass{AUTO_TILE_FLAGS}")
    return chosen, note


def restore_array(model: nn.Module, img: np.ndarray, protocol: Protocol, device: torch.device,
                  name: str = "image", note: Callable[[str], None] | None = None,
                  tile_progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, float]:
    """Restore one ``(H, W, 3)`` uint8/uint16 image: ``(float32 (H, W, 3) unclamped, seconds)``.

    Pads to multiples of 8 when needed (the reference protocol crops beforehand); tiles when
    ``protocol.tile``, or when the image would not fit ``protocol.memory_budget`` (:func:`automatic_tile`;
    ``note`` is told the tile it chose, before restoring; ``tile_progress(done, total)`` follows the tiles).
    Out-of-memory becomes :class:`RestoreOutOfMemory` naming the fix.
    """
    x = torch.from_numpy(to_float(img)).permute(2, 0, 1)[None]
    tiling, message = automatic_tile(model, img.shape[:2], protocol, device, name)
    if message and note is not None:
        note(message)
    tile, tile_batch = tiling or (protocol.tile, protocol.tile_batch)
    _sync(device)
    start = time.perf_counter()
    try:
        if tile:
            out = restore_tiled(model, x, tile, protocol.tile_overlap, protocol.precision,
                                tile_batch=tile_batch, multiple=SIZE_MULTIPLE, compile_mode=protocol.compile,
                                progress=tile_progress)
        else:
            out = restore(model, x.to(device), protocol.precision, pad=True, multiple=SIZE_MULTIPLE,
                          compile_mode=protocol.compile).cpu()
        _sync(device)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        h, w = img.shape[:2]
        hint = (f"use a smaller --tile or --tile-batch 1 (now --tile {tile}, --tile-batch "
                f"{tile_batch})" if tile else
                "use tiled inference: --tile 512 --tile-overlap 32 (memory then depends on the tile size, "
                "not the image's)")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise RestoreOutOfMemory(f"out of memory restoring {name} ({h}x{w}) on {device}: {hint}") from exc
    seconds = time.perf_counter() - start
    out = out[0].permute(1, 2, 0).numpy()
    bad = int(out.size - np.isfinite(out).sum())
    if bad:  # quantising would make NaN black and inf white, and score and save that without a word
        raise NonFiniteOutput(f"{name}: the network's output has {counted(bad, 'non-finite value')} (NaN or inf) "
                              f"of {out.size:,} ({protocol.precision}); use --precision fp32, or check the checkpoint")
    return out, seconds
