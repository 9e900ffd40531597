"""``python -m utils.app`` (``make app``): serve the restoration page for one checkpoint, on this machine only.

    python -m utils.app                                  # the tester's default checkpoint
    python -m utils.app --model checkpoint/demo --port 7861
    make app ARGS="--model checkpoint/demo/epoch_006.pth"

``--model`` takes what ``tester_bary.py --model`` takes (a checkpoint file, a run's output folder or its
``latest`` pointer) and is loaded by :func:`utils.checkpoints.load_model`, as the tester loads it; without it, the
tester's default (:func:`utils.checkpoints.default_model`: the authors' checkpoint, else the newest under
``checkpoint/``). The page is served on
127.0.0.1 only, never shared, with Gradio's analytics, telemetry and version checks off (the machine may have
no internet). The flags, the port and the checkpoint are checked before Gradio starts; every failure the user
fixes is one ``error:`` line (exit status 2 for flags), the traceback only with ``--debug``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from utils.checkpoints import CHECKPOINT_DIR, model_or_default
from utils.cli import add_network_size_flags, network_size_overrides, one_spelling
from utils.data.image_io import MAX_PIXELS, pixel_limit
from utils.errors import OneLineArgumentParser, UsageError, UserError, add_debug_flag, counted, run_main
from utils.eval.options import add_checkpoint_flags, pixel_count
from utils.eval.outputs import OutputFolderError, check_writable_folder
from utils.runtime import DEVICE_HELP, DEVICES, pick_device, stop_signals_as_interrupt, tune_cpu_allocator

DEMO_EXAMPLES = "data/demo/test"
QUICK_DEMO_EXAMPLES = "data/demo-quick/test"  # what `python -m utils.demo --quick` builds
HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_UPLOAD = "1gb"  # an upload's bytes; its pixels are bounded by --max-pixels
# Set before Gradio is imported: no analytics, telemetry or version checks (nothing may leave the machine).
OFFLINE_ENVIRONMENT = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                       "DO_NOT_TRACK": "1"}
INSTALL_HINT = "run `make app` (installs requirements-app.txt into .venv) or `pip install -r requirements-app.txt`"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number between 1 and 65535, got {value}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="python -m utils.app", description="BaryIR restoration page (local web app)",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_checkpoint_flags(parser)  # as the tester's
    add_network_size_flags(parser, " (for checkpoints that do not carry their configuration)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"serve on http://{HOST}:PORT")
    parser.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    parser.add_argument("--examples", default=None, metavar="DIR",
                        help=f"benchmark folder whose degraded images the page offers as examples (default: "
                             f"{DEMO_EXAMPLES} when it exists, else {QUICK_DEMO_EXAMPLES})")
    parser.add_argument("--max-pixels", type=pixel_count, default=MAX_PIXELS, metavar="N",
                        help="refuse uploads of more than N pixels, as tester_bary.py --max-pixels does")
    parser.add_argument("--work-dir", default=None, metavar="DIR",
                        help="where restored images are written, one request-* folder per Restore, the 8 newest kept "
                             "(default: a temporary folder removed on exit); nothing else in DIR is touched")
    add_debug_flag(parser)
    return one_spelling(parser)


def check_port(port: int, host: str = HOST) -> None:
    """Refuse a port another program listens on, before anything is loaded (:class:`UsageError` with the fix)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web server binds: TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UsageError(f"--port {port}: {host}:{port} is in use ({exc.strerror or exc}) — stop what serves "
                             f"there or pass another port, e.g. --port {port + 1}") from exc


def check_gradio() -> None:
    """Gradio must be installed (it is optional): :class:`UserError` saying how otherwise."""
    if importlib.util.find_spec("gradio") is None:
        raise UserError(f"the app needs Gradio, which is not installed in {sys.prefix}: {INSTALL_HINT}")


def checkpoint_to_serve(model: str | None, checkpoint_dir: str = CHECKPOINT_DIR) -> str:
    """``--model`` as given, else the tester's default (:func:`utils.checkpoints.default_model`: the authors'
    checkpoint, else the newest under ``checkpoint_dir``); :class:`UsageError` when there is none."""
    return model_or_default(model, f"train one (`make demo` trains {checkpoint_dir}/demo/)", checkpoint_dir)


def examples_folder(examples: str | None) -> Path | None:
    """``--examples`` (which must exist), else the demo's test images when present (the full demo's, else the
    quick one's), else None."""
    if examples is None:
        return next((Path(d) for d in (DEMO_EXAMPLES, QUICK_DEMO_EXAMPLES) if Path(d).is_dir()), None)
    if not Path(examples).is_dir():
        what = "a file, not a folder" if Path(examples).exists() else "no such folder"
        raise UsageError(f"--examples {examples}: {what} — pass a benchmark folder such as {DEMO_EXAMPLES} "
                         f"(built by make demo), or leave the flag out")
    return Path(examples)


def check_work_dir(work_dir: str) -> None:
    """``--work-dir`` must be a folder the app can make and write in: :class:`OutputFolderError` naming the flag
    and the fix otherwise, before anything is loaded. Nothing is left behind: the folder itself is made at the
    first Restore. A folder the permission bits allow may still refuse (``/proc``, ``/sys``, a read-only mount,
    or any folder for root, whom the bits never stop): a folder is made and removed in the nearest existing one
    on the way, where ``--work-dir /proc/x`` passed the bits and failed at the first Restore."""
    check_writable_folder(work_dir, "--work-dir", create=False)  # a file in the way, a dead link, the bits
    folder = Path(work_dir)
    existing = next(p for p in [folder, *folder.absolute().parents] if p.is_dir())
    try:
        with tempfile.TemporaryDirectory(dir=existing, prefix=".baryir-app-probe-"):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise OutputFolderError(f"--work-dir {work_dir}: the app cannot make folders in {existing} ({why}) — pass "
                                f"a folder of yours on a writable disk, e.g. --work-dir ~/baryir-app, or leave the "
                                f"flag out (a temporary folder)") from exc


def main(args) -> int:
    """Check the flags, load the model, serve the page until interrupted; returns the exit status."""
    check_port(args.port)
    check_gradio()
    examples_root = examples_folder(args.examples)
    if args.work_dir:  # a file in the way, or no permission: said now (made at the first Restore)
        check_work_dir(args.work_dir)
    path = checkpoint_to_serve(args.model)
    device = pick_device(args.device)  # DeviceError: one line naming the flag and the fix
    from utils.checkpoints import load_model
    model, info = load_model(path, args.backbone, args.preset, **network_size_overrides(args))
    if "note" in info:
        print(f"=> {info.pop('note')}")
    model.to(device).eval()
    os.environ.update(OFFLINE_ENVIRONMENT)
    with tempfile.TemporaryDirectory(prefix="baryir-app-") as scratch, gradio_files_in(Path(scratch) / "gradio"):
        from utils.app.page import build_page  # imports Gradio, after its analytics are off
        from utils.app.restore import Session, example_images
        from utils.app.stop_checks import where_it_stops
        examples = example_images(examples_root) if examples_root is not None else []
        if args.examples and not examples:
            raise UsageError(f"--examples {args.examples}: no degraded images in the benchmark layout there "
                             f"(<task>/input/, <task>/<set>/input/ or lowlight/low/) — pass a test root such as "
                             f"{DEMO_EXAMPLES}, or leave the flag out")
        work_dir = Path(args.work_dir) if args.work_dir else Path(scratch)
        session = Session(model=model, info=info, device=device, work_dir=work_dir)
        page = build_page(session, examples)
        print(f"=> {info['model']} ({info['backbone']}) on {device}; {counted(len(examples), 'example image')}; "
              f"serving http://{HOST}:{args.port} (Ctrl-C to stop)", flush=True)
        stop_signals_as_interrupt()
        # Gradio serves files only from the current and temporary folders and these: the examples, and the
        # restorations written under --work-dir wherever it is
        allowed = [str(p.resolve()) for p in (examples_root, work_dir) if p is not None]
        with pixel_limit(args.max_pixels):
            try:
                try:
                    page.queue(default_concurrency_limit=1).launch(
                        server_name=HOST, server_port=args.port, share=False, inbrowser=False, show_error=True,
                        ssr_mode=False, pwa=False, mcp_server=False, run_history=False, allowed_paths=allowed,
                        max_file_size=MAX_UPLOAD, footer_links=["gradio"], quiet=True, prevent_thread_lock=True)
                except OSError as exc:  # the port was taken between the check and the launch
                    raise UsageError(f"--port {args.port}: cannot serve there ({exc}) — pass another port") from exc
                serve_until_interrupted()
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM while the server was starting (it may answer already)
                pass
            if session.busy.locked():
                print(f"=> stopping the restoration at work (it ends {where_it_stops(device)})", flush=True)
            session.stop()  # waits for it; a request's files go with the scratch folder
            page.close(verbose=False)
    print(f"=> stopped: http://{HOST}:{args.port} no longer serves the page", flush=True)
    return 0


@contextlib.contextmanager
def gradio_files_in(folder: Path) -> Iterator[None]:
    """Gradio's own copies of an upload and of what the page shows go into ``folder`` (the app's scratch folder,
    removed on exit) while the app serves: by default they stay in ``/tmp/gradio`` after it stops, readable by
    every user of the machine. A ``GRADIO_TEMP_DIR`` the user set is kept."""
    if "GRADIO_TEMP_DIR" in os.environ:
        yield
        return
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    try:
        yield
    finally:
        os.environ.pop("GRADIO_TEMP_DIR", None)


def serve_until_interrupted() -> None:
    """Wait (the server runs in Gradio's threads) until Ctrl-C or SIGTERM, the way this server is meant to stop:
    their KeyboardInterrupt ends the app with status 0 in :func:`main`, not as an error (Gradio's own wait
    printed "Keyboard interruption in main thread" and the app then said "error: interrupted")."""
    while True:
        signal.pause()  # any signal wakes it; only Ctrl-C and SIGTERM (raised as KeyboardInterrupt) stop it


def cli() -> int:
    """``python -m utils.app``."""
    tune_cpu_allocator()  # as tester_bary.py: reuse freed activation memory
    args = get_args_parser().parse_args()
    return run_main(main, args, debug=args.debug)
