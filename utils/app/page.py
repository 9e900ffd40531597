"""The app's Gradio page: an upload, the precision and tiling choices, and what :mod:`utils.app.restore` returns.

Every element a test or a script reads has an ``elem_id`` (:data:`utils.app.elements.IDS`). The page computes
nothing itself: one button press is one :func:`utils.app.restore.restore_for_page` call, whose ``status`` line
also carries any failure (an unreadable file, a bad tiling choice), so errors show in the page, never as a server
traceback. That call runs in a thread of its own under an ``async`` handler, which is how a cancel reaches it: Stop
sets the cancel events of its client's requests (which then answer "Stopped" themselves); gradio_client's
``job.cancel()`` or the app closing cancel the handler (``asyncio.CancelledError``); a closed or reloaded tab, or an
API client's process that died (its heartbeat connection to Gradio closes), calls the page's ``unload``; each sets
the request's cancel event, and the restoration ends at its next PyTorch operation on the CPU, at the network's next
layer on a GPU (:meth:`utils.app.restore.Session.computing`), saying so on the server's terminal. Gradio learns that
a client left only when one of its connections closes: a client that drops off with them open (a laptop asleep
behind an ``ssh -L`` tunnel, whose end goes on accepting the heartbeats; a frozen process) is not seen to go, and
its restoration runs to its end.
Gradio must be importable (``requirements-app.txt``); :mod:`utils.app.main` imports this module only after it
has turned off Gradio's analytics.
"""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import gradio as gr

from utils.app.elements import IDS
from utils.app.restore import (
    DEFAULT_PRECISION,
    DEFAULT_TILE,
    TILE_CHOICES,
    UPLOADS_KEPT_S,
    PageResult,
    Session,
    has_embeddings,
    precisions_for,
    restore_for_page,
)
from utils.app.stop_checks import where_it_stops
from utils.data.image_files import IMAGE_EXTENSIONS

TITLE = "BaryIR: restore an image"
STOPPED = "**Stopped**: the restoration was stopped (Stop). Press **Restore** to start it again."
WAITING = "waiting for the restoration at work to end"  # the progress line of a request that waits


def model_line(session: Session) -> str:
    """The page's line about the model: its file, backbone, width and where it runs."""
    info = session.info
    cfg = info.get("model_config", {})
    width = f", dim {cfg['dim']}, blocks {cfg.get('num_blocks')}" if "dim" in cfg else ""
    return (f"Model: `{info['model']}` ({info['backbone']}{width}; configuration from "
            f"{info.get('config_from', 'the checkpoint')}) on {session.device}. The restoration is the tester's "
            f"(`tester_bary.py --input FILE --precision P --tile T` writes the same PNG).")


def _outputs(result: PageResult) -> tuple:
    """A :class:`PageResult` as the values of the page's outputs, in :func:`build_page`'s order."""
    pair = (str(result.before), str(result.after)) if result.after is not None else None
    return (result.status, pair, str(result.after) if result.after is not None else None, result.residual,
            result.wb, result.wb_residual, result.maps)


def tiles_shown_by(progress: gr.Progress):
    """A ``tile_progress`` callback that moves the page's progress bar: a large image restored in tiles takes
    minutes, and the page showed only a clock meanwhile."""
    def shown(done: int, total: int) -> None:
        progress((done, total), desc="restoring in tiles", unit="tiles")  # Gradio adds "3/20 tiles", the %
    return shown


def refusing_quietly(component: gr.components.Component) -> gr.components.Component:
    """``component``, its refusals of a request (a file type the upload does not take, a choice not in the list:
    Gradio's own ``gr.Error`` from ``preprocess``) sent to the client as their one line without Gradio also printing
    the traceback in the app's terminal. Wraps the instance's method: a subclass of a Gradio component would make
    Gradio write a ``.pyi`` stub beside this file."""
    preprocess = component.preprocess

    def quiet(payload):
        try:
            return preprocess(payload)
        except gr.Error as exc:
            raise gr.Error(exc.message, duration=exc.duration, visible=exc.visible, title=exc.title,
                           print_exception=False) from None
    component.preprocess = quiet
    return component


def client_of(request: gr.Request | None) -> str:
    """The client a request comes from (one browser tab, one API client): Gradio's session hash."""
    return str(getattr(request, "session_hash", None) or "")


def build_page(session: Session, examples: list[tuple[Path, str]]) -> gr.Blocks:
    """The page for ``session``'s model; ``examples``: ``[(image, label)]`` offered under the upload."""
    maps_shown = has_embeddings(session.info["backbone"])

    async def on_restore(upload: str | None, precision: str, tile: str, request: gr.Request,
                         progress=gr.Progress()) -> tuple:  # noqa: B008
        with session.cancellable(client_of(request)) as cancelled:
            try:  # in a thread of its own, so that a cancel reaches this coroutine at once
                result = await asyncio.to_thread(restore_in_thread, upload, precision, tile, progress, cancelled)
            except asyncio.CancelledError:  # gradio_client's cancel, the app closing: the work ends too
                cancelled.set()
                raise
        if cancelled.is_set() and result.after is None and upload is not None:  # Stop (or the tab closed)
            return _outputs(PageResult(status=STOPPED))
        if result.after is None and upload is not None:
            gr.Warning(result.status.replace("**", "").replace("`", ""), title="Cannot restore")
        return _outputs(result)

    def restore_in_thread(upload: str | None, precision: str, tile: str, progress: gr.Progress,
                          cancelled: threading.Event) -> PageResult:
        result = restore_for_page(session, upload, precision, tile, tile_progress=tiles_shown_by(progress),
                                  cancelled=cancelled, waiting=lambda: progress(None, desc=WAITING))
        if cancelled.is_set() and result.after is None and upload is not None:  # where the user sees it stopped
            print(f"=> cancelled: {Path(upload).name} was stopped {where_it_stops(session.device)}; the next "
                  f"request runs now", flush=True)
        return result

    def on_stop(request: gr.Request) -> None:
        """Stop: the client's restorations under way, or waiting for the one at work, end (at their next operation)
        and answer "Stopped" themselves; with none, nothing changes. (Gradio's own ``cancels=`` ended the handler
        instead and marked every output "Error", which the page's later "Stopped" cleared only when it reached the
        browser after Gradio's cancel: on a busy machine it came first, and "Error" stayed.)"""
        session.cancel(client_of(request))

    def on_leave(request: gr.Request) -> None:  # the tab or the API client went: its restoration is for no one
        session.cancel(client_of(request))

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(UPLOADS_KEPT_S, UPLOADS_KEPT_S)) as page:
        gr.Markdown(f"# {TITLE}\n{model_line(session)}")
        with gr.Row():
            with gr.Column(scale=1):
                upload = refusing_quietly(gr.File(label="Image (drop it here, or click to choose one)",
                                                  file_count="single", file_types=list(IMAGE_EXTENSIONS),
                                                  type="filepath", elem_id=IDS["upload"]))
                precision = refusing_quietly(gr.Radio(
                    list(precisions_for(session.device)), value=DEFAULT_PRECISION, label="Precision",
                    info="as tester_bary.py --precision (bf16 is fast only on CPUs with AMX or on GPUs)",
                    elem_id=IDS["precision"]))
                tiling = gr.Dropdown(list(TILE_CHOICES), value=DEFAULT_TILE, allow_custom_value=True, label="Tiling",
                                     info="as tester_bary.py --tile: auto tiles only an image that would not fit "
                                          "the free memory; off never; a size (a multiple of 8) always",
                                     elem_id=IDS["tiling"])
                with gr.Row():
                    button = gr.Button("Restore", variant="primary", elem_id=IDS["restore"])
                    stop = gr.Button("Stop", variant="stop", elem_id=IDS["stop"])
                if examples:
                    gr.Examples(examples=[[str(p)] for p, _ in examples], example_labels=[lab for _, lab in examples],
                                inputs=[upload], label="Demo test images (click one, then Restore)")
            with gr.Column(scale=2):
                status = gr.Markdown("Drop an image and press **Restore**.", elem_id=IDS["status"])
                comparison = gr.ImageSlider(label="Input | restored (drag the divider)", type="filepath",
                                            format="png", interactive=False, elem_id=IDS["comparison"])
                download = gr.File(label="Restored PNG", interactive=False, elem_id=IDS["download"])
        with gr.Row():
            residual = gr.Image(label="Residual: restored - input", format="png", interactive=False,
                                elem_id=IDS["residual"])
            wb = gr.Image(label="WB embedding (norm over channels)", format="png", interactive=False,
                          visible=maps_shown, elem_id=IDS["wb"])
            wb_residual = gr.Image(label="Residual embedding (norm over channels)", format="png",
                                   interactive=False, visible=maps_shown, elem_id=IDS["wb_residual"])
        maps = gr.Markdown(elem_id=IDS["maps"])
        # every request enters at once and waits in Session.computing for the one at work, where Stop reaches it
        button.click(on_restore, inputs=[upload, precision, tiling], concurrency_limit=None,
                     outputs=[status, comparison, download, residual, wb, wb_residual, maps])
        stop.click(on_stop, queue=False, api_visibility="private", show_progress="hidden")
        page.unload(on_leave)
    return page
