"""What the app computes for one upload, with no web framework involved (tests call it directly).

The restoration is :func:`utils.eval.evaluation.restore_files`, the function behind ``tester_bary.py --input``:
the same reading (EXIF orientation applied), padding to multiples of 8, tiling (automatic, off or a given
size), precision, quantisation and PNG writing under the same name. The app's PNG is therefore the tester's,
pixel for pixel, for the same checkpoint, precision and tiling. Around it:

- :func:`page_protocol`: the tester's :class:`~utils.eval.protocol.Protocol` for the page's precision and
  tiling choices (every other setting at the tester's default);
- :func:`residual_map`: restored - input, what the network changed;
- :func:`embedding_maps`: for the WB backbones (BaryNet, BaryPromptIR), where the WB embedding and the
  residual embedding are large: their per-position L2 norm over channels, the channel pooling of the demo's
  takeaway figure (:func:`utils.analysis.embeddings.difference_map` against a zero embedding);
- :func:`signed_colours`, :func:`heat_overlay`: those maps as RGB pictures, on the scales
  :func:`display_limit` and :func:`display_range` choose;
- :func:`example_images`: degraded test images to offer as examples (the demo's ``data/demo/test``);
- :func:`restore_for_page`: one press of the page's Restore button, all of the above; a failure the user can
  act on (an unreadable file, a bad choice, out of memory) comes back as the status line, not as an exception.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import matplotlib
import numpy as np
import torch
import torch.nn as nn

from net.presets import WB_BACKBONES
from utils.analysis.embeddings import difference_map, latents
from utils.app.stop_checks import checked_while
from utils.data.image_files import IMAGE_EXTENSIONS, is_image
from utils.data.image_headers import NOT_KEPT_WHY
from utils.data.image_io import quantise, read_image, to_float, write_image
from utils.errors import UserError, exception_chain, failure_message
from utils.eval.evaluation import EvaluationStopped, restore_files
from utils.eval.inference import PRECISIONS
from utils.eval.protocol import AUTO_TILE_FLAGS, SIZE_MULTIPLE, Protocol, RestoreOutOfMemory, crop_to_multiple
from utils.eval.tasks import DenoiseLayout, find_task_sets

# The tiling choices the page lists ('auto': tile only an image that would not fit the free memory, as the
# tester without --tile; 'off': never, --tile 0; a number: --tile N). Other multiples of 8 may be typed.
TILE_CHOICES = ("auto", "off", "256", "512", "1024")
# The page's defaults, which an API call's None (or a value it leaves out) also means.
DEFAULT_PRECISION = "fp32"
DEFAULT_TILE = "auto"
# The embedding maps are computed on the input scaled down to at most this many pixels a side: a map has one
# value per 8x8 block anyway, and the encoder then needs bounded memory whatever the upload's size.
MAP_SIDE = 512
# The residual map is shown at most this many pixels a side (area-averaged): a colour picture of a 100-Mpx map
# would take gigabytes, and a screen shows no more.
DISPLAY_SIDE = 2048
# A colour scale ends at this percentile of the values, so that a few extreme pixels do not wash a map out; the
# embedding maps' scales start at the mirror percentile (a norm map varies around a large common level).
SCALE_PERCENTILE = 99.0
EXAMPLE_LIMIT = 8
TileProgress = Callable[[int, int], None]  # (tiles done, tiles in all) of an image restored in tiles
# Gradio's copies of uploads (and of what the page showed) are removed this many seconds after they were made, in a
# sweep as often (utils.app.page's delete_cache): a Restore pressed later on the same upload finds no file.
UPLOADS_KEPT_S = 3600


class UploadError(UserError):
    """An upload that cannot be restored (unreadable, too large, out of memory); the message says why, naming
    the file as the user knows it."""


def precisions_for(device: torch.device) -> tuple[str, ...]:
    """The precisions the page offers on ``device``: those of ``tester_bary.py --precision``, without fp16 on
    the CPU (which refuses it)."""
    return tuple(p for p in PRECISIONS if p != "fp16" or device.type == "cuda")


def parse_tile(choice: str | None) -> int | None:
    """The page's tiling choice as ``Protocol.tile``: ``'auto'`` -> None, ``'off'`` -> 0, ``'512'`` -> 512.

    ``None`` (an API call's null or a left-out value) is the page's default, ``'auto'``: it was read as the word
    "none", tiling off, so a large image sent through the API without a tiling ran out of memory where the page
    tiled it. A size must be a multiple of 8 that leaves a step of at least 8 pixels past the 32-pixel overlap
    (``tester_bary.py --tile``'s rule); anything else is a ``ValueError`` that says what to choose.
    """
    text = DEFAULT_TILE if choice is None else str(choice).strip().lower()
    if text in ("auto", ""):
        return None
    if text in ("off", "0"):
        return 0
    overlap = Protocol().tile_overlap
    smallest = overlap + SIZE_MULTIPLE
    if not re.fullmatch(r"\d+", text) or int(text) < smallest or int(text) % SIZE_MULTIPLE:
        raise ValueError(f"tiling {choice!r}: choose 'auto', 'off' or a tile size in pixels, a multiple of "
                         f"{SIZE_MULTIPLE} of at least {smallest} (tiles overlap by {overlap}), e.g. 512")
    return int(text)


def page_protocol(precision: str | None, tile: str | None) -> Protocol:
    """The protocol of ``tester_bary.py --input ... --precision <precision> --tile <tile>`` (every other flag at
    its default); ``None`` for either is the page's default (:data:`DEFAULT_PRECISION`, :data:`DEFAULT_TILE`).
    A ``ValueError`` names the choice to change when one cannot work."""
    precision = DEFAULT_PRECISION if precision is None else precision
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return Protocol(precision=precision, tile=parse_tile(tile)).validate()


@dataclass(frozen=True)
class Restored:
    """One upload restored as ``tester_bary.py --input`` restores it."""
    name: str            # the upload's file name
    output: Path         # the restored PNG, named and written by the tester's code
    before: np.ndarray   # (H, W, 3) uint8 or uint16: the upload as read (EXIF orientation applied)
    after: np.ndarray    # (H, W, 3), the same dtype: the restored PNG read back
    seconds: float       # the network's time (reading and writing not included)
    note: str | None     # what automatic tiling chose, when it tiled
    not_kept: tuple[str, ...] = ()          # what the RGB PNG does not keep (image_headers.NOT_KEPT_WHY's keys)
    decoder_warnings: tuple[str, ...] = ()  # what libjpeg said, when it decoded the upload over damaged data


def _caveats(restored: Restored) -> str:
    """What the tester says of this upload beside its restoration: what the PNG does not keep, and a JPEG
    decoded over damage (an empty string when neither)."""
    said = []
    if restored.not_kept:
        verb = "are" if len(restored.not_kept) > 1 else "is"
        why = "; ".join(dict.fromkeys(NOT_KEPT_WHY.get(what, "") for what in restored.not_kept))
        said.append(f"its {' and '.join(restored.not_kept)} {verb} not kept in the restored PNG ({why})")
    for words in restored.decoder_warnings:
        said.append(f"{words}: the image was read as it decodes, and damaged parts come out grey or smeared")
    return "".join(f". **Note**: {s}" for s in said)


def _named(message: str, path: Path, name: str) -> str:
    """``message`` with the upload's stored path replaced by the name the user gave the file."""
    return message.replace(str(path), name)


def restore_upload(model: nn.Module, path: str | os.PathLike, save_dir: str | os.PathLike, protocol: Protocol,
                   device: torch.device, name: str | None = None,
                   tile_progress: TileProgress | None = None) -> Restored:
    """Restore the image file ``path`` into ``save_dir`` with :func:`~utils.eval.evaluation.restore_files`.

    ``name``: the file's name as the user knows it (default: ``path``'s), used in messages. A file that
    cannot be read, or that runs out of memory, raises :class:`UploadError` with the reason.
    """
    path = Path(path)
    name = name or path.name
    if not is_image(name):  # as the tester's --input says (Gradio's own type check lets an API upload through)
        raise UploadError(f"{name} is not an image file of a kind this project reads ({' '.join(IMAGE_EXTENSIONS)}): "
                          f"convert it, e.g. to PNG")
    try:
        entry = restore_files(model, [path], save_dir, protocol, device, progress=False,
                              tile_progress=tile_progress)[0]
        before = read_image(path, exif=True)
    except EvaluationStopped as stop:  # unreadable, too large, out of memory: the cause's message
        raise UploadError(_named(str(stop), path, name)) from stop
    after = read_image(entry["output"])
    return Restored(name=name, output=Path(entry["output"]), before=before, after=after,
                    seconds=float(entry["seconds"]), note=entry.get("note"), not_kept=tuple(entry.get("not_kept", ())),
                    decoder_warnings=tuple(w.removeprefix(f"{path.name}: ") for w in entry.get("decoder_warnings", ())))


# --------------------------------------------------------------------------- maps

def residual_map(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """What the network changed: ``(H, W, 3)`` input and restoration (uint8/uint16) -> ``(H, W)`` float32,
    restored - input in [-1, 1] units of full scale, averaged over the colour channels."""
    if before.shape != after.shape:
        raise ValueError(f"input {before.shape} and restoration {after.shape} differ in shape")
    return (to_float(after) - to_float(before)).mean(axis=2)


def display_limit(values: np.ndarray, floor: float = 1 / 255) -> float:
    """Where a colour scale for ``values`` ends: the :data:`SCALE_PERCENTILE` th percentile of ``|values|``,
    at least ``floor`` (one 8-bit step for residuals), so an all-zero map still has a scale."""
    return max(float(np.percentile(np.abs(values), SCALE_PERCENTILE)), floor)


def signed_colours(values: np.ndarray, limit: float) -> np.ndarray:
    """A signed ``(H, W)`` map as ``(H, W, 3)`` uint8 on a diverging scale: blue at ``-limit``, white at 0, red
    at ``+limit`` (clipped beyond)."""
    scaled = 0.5 + 0.5 * np.clip(values / limit, -1.0, 1.0)
    return quantise(matplotlib.colormaps["RdBu_r"](scaled)[..., :3], 8)


def display_range(values: np.ndarray) -> tuple[float, float]:
    """``(low, high)`` of a colour scale for ``values``: their (100 - :data:`SCALE_PERCENTILE`) th and
    :data:`SCALE_PERCENTILE` th percentiles, ``high > low`` even for a constant map."""
    low, high = (float(v) for v in np.percentile(values, [100.0 - SCALE_PERCENTILE, SCALE_PERCENTILE]))
    return low, max(high, low + 1e-6)


def heat_overlay(image: np.ndarray, values: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """An ``(h, w)`` map laid over the grey ``(h, w, 3)`` image (float in [0, 1]) as the demo's takeaway figure
    draws it: ``inferno`` from ``scale[0]`` to ``scale[1]`` (clipped) at 75 % opacity; ``(h, w, 3)`` uint8."""
    low, high = scale
    grey = np.clip(image, 0.0, 1.0).mean(axis=2, keepdims=True)
    colour = matplotlib.colormaps["inferno"](np.clip((values - low) / (high - low), 0.0, 1.0))[..., :3]
    return quantise(0.25 * grey + 0.75 * colour, 8)


def has_embeddings(backbone: str) -> bool:
    """Whether ``backbone`` splits its latent into a WB and a residual embedding (:data:`net.presets.WB_BACKBONES`)."""
    return backbone in WB_BACKBONES


@dataclass(frozen=True)
class EmbeddingMaps:
    """Where the WB and the residual embedding of one image are large (one value per 8x8 block, upsampled)."""
    image: np.ndarray     # (h, w, 3) float32 in [0, 1]: the input the maps belong to (scaled, cropped to 8s)
    wb: np.ndarray        # (h, w) float32: L2 norm over channels of the WB embedding b at each position
    residual: np.ndarray  # (h, w) float32: the same for the residual embedding r = z - b
    scaled: bool          # whether the input was scaled down to MAP_SIDE first


def scaled_down(x: np.ndarray, max_side: int) -> tuple[np.ndarray, bool]:
    """A float32 ``(H, W)`` or ``(H, W, C)`` array area-averaged so that no side exceeds ``max_side`` (aspect
    kept), and whether it had to be."""
    h, w = x.shape[:2]
    if max(h, w) <= max_side:
        return x, False
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(x, size, interpolation=cv2.INTER_AREA), True


def embedding_maps(model: nn.Module, img: np.ndarray, device: torch.device,
                   max_side: int = MAP_SIDE) -> EmbeddingMaps | None:
    """The WB and residual maps of ``img`` (``(H, W, 3)`` uint8/uint16) through a WB backbone's encoder.

    As the demo: the input (scaled down to ``max_side`` first) is cropped to multiples of 8, run through
    :func:`~utils.analysis.embeddings.latents` in float32 (``(1, 3, h, w)`` -> two ``(1, C, h/8, w/8)``), and
    each latent is pooled over its channels at every position (its L2 norm, i.e. its
    :func:`~utils.analysis.embeddings.difference_map` from zero), upsampled to ``(h, w)``. ``None`` for an
    input under 8 pixels a side.
    """
    x, scaled = scaled_down(to_float(img), max_side)
    x = crop_to_multiple(x)
    if min(x.shape[:2]) < SIZE_MULTIPLE:
        return None
    batch = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].to(device)
    wb, res = latents(model, batch)
    size = tuple(x.shape[:2])
    zero = torch.zeros_like(wb[0])
    return EmbeddingMaps(image=x, wb=difference_map(wb[0], zero, size).cpu().numpy(),
                         residual=difference_map(res[0], zero, size).cpu().numpy(), scaled=scaled)


# --------------------------------------------------------------------------- examples

def example_images(root: str | os.PathLike, limit: int = EXAMPLE_LIMIT) -> list[tuple[Path, str]]:
    """Degraded test images under a benchmark root (``data/demo/test``), one per set: ``[(path, label)]``.

    Every task folder with degraded images counts (``derain/demo/input``, ``lowlight/low``, ...; not
    ``denoise/``, whose noisy inputs are synthesised); set ``k`` offers its ``k``-th image, so the examples
    show several photos. A folder that is missing or not in the benchmark layout gives no examples.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found: list[tuple[Path, str]] = []
    for task in sorted(d.name for d in root.iterdir() if d.is_dir() and d.name != DenoiseLayout(0).folder):
        try:
            sets = find_task_sets([task], root)
        except (UserError, ValueError):  # not a benchmark folder: no examples from it
            continue
        for s in sets:
            items = [i for i in s.items if i.degraded is not None]
            if items:
                item = items[len(found) % len(items)]
                found.append((item.degraded, f"{s.name}: {item.name}"))
    return found[:limit]


# --------------------------------------------------------------------------- one request of the page

@dataclass
class Session:
    """What every request of one app shares: the loaded model, where it runs, and a folder for the outputs.

    ``busy`` is held while a request computes, so one restoration runs at a time whatever the web layer does.
    A request whose client went away (a closed tab, the page's Stop, a cancelled API call) is told through its
    ``cancelled`` event (:meth:`computing`, :meth:`cancellable`, :meth:`cancel`) and ends at its next PyTorch
    operation on the CPU, at the network's next layer on a GPU, freeing ``busy`` and its memory for the next
    request: it used to run to its end, the next request waiting for it. ``stopping``: set by :meth:`stop`
    (Ctrl-C, SIGTERM), which ends any request at work."""
    model: nn.Module
    info: dict               # load_model's info: "model" (the file), "backbone", "model_config", ...
    device: torch.device
    work_dir: Path           # one subfolder per request; the newest KEEP_REQUESTS are kept
    busy: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False, compare=False)
    # the cancel events of the requests under way, by client (a page's or an API client's session)
    _requests: dict[str, set[threading.Event]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _requests_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @contextlib.contextmanager
    def computing(self, cancelled: threading.Event | None = None,
                  waiting: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold ``busy`` for one request's work, done in this thread; once :meth:`stop` is asked
        (:class:`AppStopping`) or ``cancelled`` is set (:class:`RequestCancelled`), the work ends at its next
        PyTorch operation on the CPU, at the network's next layer on a GPU
        (:func:`utils.app.stop_checks.checked_while`), and a request that comes later, or is cancelled while it
        waits for ``busy``, starts none (and stops waiting). ``waiting()`` is called once if the request has to
        wait for the one at work."""
        def check() -> None:
            if self.stopping.is_set():
                raise AppStopping("the app was stopped while restoring it; start it again to restore the image")
            if cancelled is not None and cancelled.is_set():
                raise RequestCancelled("its request was cancelled (the page closed, Stop pressed, or the API "
                                       "client's cancel), so it was stopped; restore it again to have it")
        if not self.busy.acquire(blocking=False):
            if waiting is not None:
                waiting()
            while not self.busy.acquire(timeout=0.05):  # waiting for the request at work: a cancel ends the wait
                check()
        try:
            check()
            with checked_while(self.model, self.device, check):
                yield
        finally:
            self.busy.release()

    @contextlib.contextmanager
    def cancellable(self, client: str) -> Iterator[threading.Event]:
        """The cancel event of one request of ``client`` (pass it to :meth:`computing`), which :meth:`cancel`
        sets while the request is under way."""
        cancelled = threading.Event()
        with self._requests_lock:
            self._requests.setdefault(client, set()).add(cancelled)
        try:
            yield cancelled
        finally:
            with self._requests_lock:
                events = self._requests.get(client, set())
                events.discard(cancelled)
                if not events:
                    self._requests.pop(client, None)

    def cancel(self, client: str) -> int:
        """Cancel every request of ``client`` under way (its page was closed); how many there were."""
        with self._requests_lock:
            events = list(self._requests.get(client, ()))
        for cancelled in events:
            cancelled.set()
        return len(events)

    def stop(self) -> None:
        """End the restoration at work where :meth:`computing` looks next and wait until it has: the app then
        exits with no thread inside PyTorch (a Ctrl-C during a restoration ended the app with "terminate called
        without an active exception" and SIGABRT, status 134, once Python tore down under the running thread)."""
        self.stopping.set()
        with self.busy:
            pass


class AppStopping(UserError):
    """The app is stopping (Ctrl-C, SIGTERM) while a request computes: that request ends, saying so."""


class RequestCancelled(UserError):
    """The request's client went away (a closed tab, Stop, a cancelled API call) while it computed or waited."""


KEEP_REQUESTS = 8
WAIT_SHOWN_S = 0.1  # a request that waited this long for the one before it says so (apart from its own time)


@dataclass(frozen=True)
class PageResult:
    """Everything the page shows for one request; on failure only ``status`` (the reason) is set."""
    status: str                          # one Markdown line: what was done, or why not
    before: Path | None = None           # the input as read, as a PNG (the slider's left side)
    after: Path | None = None            # the restored PNG (the slider's right side and the download)
    residual: np.ndarray | None = None   # (H, W, 3) uint8: signed_colours of residual_map (at most DISPLAY_SIDE)
    wb: np.ndarray | None = None         # (h, w, 3) uint8: heat_overlay of the WB map
    wb_residual: np.ndarray | None = None  # (h, w, 3) uint8: heat_overlay of the residual embedding's map
    maps: str = ""                       # Markdown: what the maps show and their scales


REQUEST_PREFIX = "request-"  # the app's own folders under --work-dir; nothing else there is ever touched
# Exactly the names request_folder makes (prefix, 20-digit time in ns, mkdtemp's 8 characters): a user's own
# "request-01" or "request-notes" never matches, so it is neither removed nor counted.
_REQUEST_NAME = re.compile(rf"{REQUEST_PREFIX}\d{{20}}-[A-Za-z0-9_]{{8}}")


def request_folder(work_dir: Path, keep: int = KEEP_REQUESTS) -> Path:
    """A new folder ``request-*`` for one request's files under ``work_dir``; all but the newest ``keep`` older
    ``request-*`` folders are removed (the page has already been sent their files: Gradio serves copies from its
    own cache). Any other file or folder in ``work_dir`` is the user's and is left alone."""
    work_dir.mkdir(parents=True, exist_ok=True)
    # oldest first by name: each carries its creation time in nanoseconds (file times may tie on coarse clocks)
    old = sorted(p for p in work_dir.iterdir() if p.is_dir() and not p.is_symlink()
                 and _REQUEST_NAME.fullmatch(p.name))
    for folder in old[:max(0, len(old) - keep + 1)]:
        shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{REQUEST_PREFIX}{time.time_ns():020d}-", dir=work_dir))


def _tiling_text(protocol: Protocol, note: str | None) -> str:
    if note:
        return f"tiled automatically ({note.removeprefix('note: ').removesuffix(AUTO_TILE_FLAGS)}; Tiling chooses)"
    if protocol.tile is None:
        return "tiling auto (the whole image fitted)"
    return "tiling off" if protocol.tile == 0 else f"{protocol.tile}x{protocol.tile} tiles"


def _times_text(request: float, waited: float) -> str:
    """What the status says besides the network's time: the request's own (reading, restoring, writing, the maps),
    and the wait for the request before it, when there was one (a cancelled restoration still ending). The wait
    was counted in the request's time ("s in all"), which read as the time this restoration took."""
    wait = f", after waiting {waited:.2f} s for the request before it to end" if waited >= WAIT_SHOWN_S else ""
    return f"the network; {request:.2f} s with reading, writing and the maps{wait}"


def _maps_text(residual: np.ndarray, residual_scaled: bool, residual_limit: float, maps: EmbeddingMaps | None,
               scales: tuple[tuple[float, float], tuple[float, float]] | None, backbone: str) -> str:
    shown = f", shown at {residual.shape[1]}x{residual.shape[0]}" if residual_scaled else ""
    lines = [f"**Residual** (restored - input, mean over R, G, B{shown}): blue -{residual_limit:.3f}, white 0, "
             f"red +{residual_limit:.3f} of full scale ({SCALE_PERCENTILE:g}th percentile of |residual|)."]
    if not has_embeddings(backbone):
        lines.append(f"**Embedding maps**: {backbone} has no WB/residual embeddings (only "
                     f"{' and '.join(sorted(WB_BACKBONES))} split their latent into the two); none are shown.")
    elif maps is None:
        lines.append("**Embedding maps**: the image is under 8 pixels a side; none are shown.")
    else:
        h, w = maps.wb.shape
        scaled = f", computed on the input scaled down to {w}x{h}" if maps.scaled else ""
        (wb_low, wb_high), (res_low, res_high) = scales
        lines.append(f"**WB / residual embedding**: L2 norm over channels at each position (the demo's channel "
                     f"pooling), laid over the grey input{scaled}; each on its own scale, spanning its middle "
                     f"{2 * SCALE_PERCENTILE - 100:g} % of values: WB {wb_low:.3f} to "
                     f"{wb_high:.3f} (mean {float(maps.wb.mean()):.3f}), residual {res_low:.3f} to {res_high:.3f} "
                     f"(mean {float(maps.residual.mean()):.3f}).")
    return "\n\n".join(lines)


def restore_for_page(session: Session, upload: str | os.PathLike | None, precision: str | None, tile: str | None,
                     name: str | None = None, tile_progress: TileProgress | None = None,
                     cancelled: threading.Event | None = None, waiting: Callable[[], None] | None = None
                     ) -> PageResult:
    """One press of the page's Restore button: the upload restored (:func:`restore_upload`) with the chosen
    precision and tiling, its residual map and, for WB backbones, its embedding maps.

    A failure the user can act on (no file, an unreadable one, a bad tiling choice, out of memory) is a
    :class:`PageResult` with only ``status`` saying why; a bug still raises. ``None`` for ``precision`` or
    ``tile`` is the page's default (:func:`page_protocol`). ``tile_progress(done, total)`` is
    told each tile when the image is restored in tiles (the page's progress bar). Once ``cancelled`` is set, the
    work ends at its next PyTorch operation on the CPU, at the network's next layer on a GPU
    (:meth:`Session.computing`), its status saying so. ``waiting()`` is called once if the request has to wait for
    the one at work (the page says so).
    """
    arrived = time.perf_counter()
    if upload is None:
        return PageResult(status="**Nothing to restore**: drop an image (or pick an example) first.")
    upload = Path(upload)
    name = name or upload.name
    if not upload.exists():  # the page lists the upload, so "image not found" read as a bug of the app
        return PageResult(status=f"**Cannot restore** `{name}`: the app no longer has its copy of this upload "
                                 f"(uploads are removed once {UPLOADS_KEPT_S // 60} minutes old): drop "
                                 f"the image again, then press Restore")
    try:
        protocol = page_protocol(precision, tile)
    except ValueError as exc:  # a page choice that cannot work
        return PageResult(status=f"**Cannot restore** `{name}`: {exc}")
    try:
        with session.computing(cancelled, waiting):  # one restoration at a time (Session): the next waits here
            waited = time.perf_counter() - arrived
            return _restore_for_page(session, upload, protocol, protocol.precision, name, waited, tile_progress)
    except (AppStopping, RequestCancelled) as exc:  # before its work began
        return PageResult(status=f"**Cannot restore** `{name}`: {exc}")


def _restore_for_page(session: Session, upload: Path, protocol: Protocol, precision: str, name: str,
                      waited: float, tile_progress: TileProgress | None) -> PageResult:
    """:func:`restore_for_page`'s work once the choices are checked, with ``session.busy`` held (after ``waited``
    seconds for it)."""
    start = time.perf_counter()
    folder = None
    try:
        folder = request_folder(session.work_dir)
        restored = restore_upload(session.model, upload, folder, protocol, session.device, name=name,
                                  tile_progress=tile_progress)
        before = write_image(folder / "input" / restored.output.name, restored.before)
        residual, residual_scaled = scaled_down(residual_map(restored.before, restored.after), DISPLAY_SIDE)
        r_limit = display_limit(residual)
        maps = embedding_maps(session.model, restored.before, session.device, MAP_SIDE) \
            if has_embeddings(session.info["backbone"]) else None
    except Exception as exc:  # noqa: BLE001 - a failure the user can act on becomes the status; a bug raises
        if folder is not None:  # nothing of a failed request is kept (it held at most a partial input copy)
            shutil.rmtree(folder, ignore_errors=True)
        found = failure_message(exc)
        if found is None:
            raise
        oom = any(isinstance(e, RestoreOutOfMemory) for e in exception_chain(exc))
        page_hint = " In this page: choose a smaller size under Tiling." if oom else ""
        return PageResult(status=f"**Cannot restore** `{name}`: {_named(found[0], upload, name)}{page_hint}")
    scales = (display_range(maps.wb), display_range(maps.residual)) if maps is not None else None
    h, w = restored.before.shape[:2]
    bits = 16 if restored.before.dtype == np.uint16 else 8
    status = (f"**Restored** `{name}` ({w}x{h}, {bits}-bit) in {restored.seconds:.2f} s "
              f"({_times_text(time.perf_counter() - start, waited)}) on {session.device}: {precision}, "
              f"{_named(_tiling_text(protocol, restored.note), upload, name)}; download it as `{restored.output.name}`"
              f"{_caveats(restored)}")
    return PageResult(status=status, before=before, after=restored.output,
                      residual=signed_colours(residual, r_limit),
                      wb=heat_overlay(maps.image, maps.wb, scales[0]) if maps is not None else None,
                      wb_residual=heat_overlay(maps.image, maps.residual, scales[1]) if maps is not None else None,
                      maps=_maps_text(residual, residual_scaled, r_limit, maps, scales, session.info["backbone"]))
