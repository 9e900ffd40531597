"""The validation set a trainer scores after each epoch (``--degset``/``--tarset``): its pairs, found and checked
(every image decoded at the start, so that a bad one stops the run before it trains, not after an epoch)."""
from __future__ import annotations

import json
from pathlib import Path

from utils.data.image_headers import turned_pair_note
from utils.data.image_io import image_size, read_problem
from utils.data.integrity import decode_files
from utils.data.pairing import DEGSET_FLAGS, match_pairs, partners_of
from utils.dataset_utils import DatasetError
from utils.errors import UserError, counted, listing
from utils.eval.evaluation import smallest_file_side
from utils.eval.protocol import Protocol
from utils.train.distributed import DistInfo, broadcast_text
from utils.train.options import DEFAULT_DEGSET, DEFAULT_TARSET, ConfigError
from utils.train.run_log import Console


def validation_pairs(args, console: Console, info: DistInfo = DistInfo()) -> list[tuple[Path, Path]]:
    """``--degset``/``--tarset`` paired by file name, every image decoded (:func:`check_validation_images`);
    [] when validation is off. ``--skip-bad-files`` leaves out unpaired degraded images and pairs with a file
    that does not decode, as it leaves out such training files, with one warning naming them."""
    deg, tar = args.degset, args.tarset
    if deg or tar:  # a folder given: its partner must be too (an unset variable must not switch validation off)
        if not (deg and tar):
            given = " ".join(f"--{flag} {'not given' if value is None else repr(value)}"
                             for flag, value in (("degset", deg), ("tarset", tar)))
            raise ConfigError(f"{given}: pass both folders to validate each epoch, or "
                              f"--degset '' --tarset '' to train without validation")
    elif deg == "" or tar == "":
        return []
    if deg is None and tar is None:
        missing = [f"--{flag} {folder}" for flag, folder in (("degset", DEFAULT_DEGSET), ("tarset", DEFAULT_TARSET))
                   if not Path(folder).is_dir()]
        if missing:
            console(f"=> validation off: the default {' / '.join(missing)} "
                    f"{'does' if len(missing) == 1 else 'do'} not exist (pass both to validate each epoch)")
            return []
        deg, tar = DEFAULT_DEGSET, DEFAULT_TARSET
    skip = bool(getattr(args, "skip_bad_files", False))
    try:
        pairs, unpaired = match_pairs(deg, tar, skip_unpaired=skip, flags=DEGSET_FLAGS,
                                      fix="validate on other folders (--degset/--tarset), pass --skip-bad-files to "
                                          "validate without them, or train without validation (--degset '' "
                                          "--tarset '')")
    except UserError as exc:  # every rank pairs the same folders: rank 0's error line says it for all
        exc.met_by_every_rank = True
        raise
    found = len(pairs) + len(unpaired)
    pairs, bad = check_validation_images(pairs, info, skip_bad=skip)
    left_out = [f"{d.name} has no target of the same name in {tar}" for d in unpaired] + bad
    if left_out and not pairs:
        exc = DatasetError(f"no validation pair of {deg} / {tar} can be used (--skip-bad-files left all {found} "
                           f"out):{listing(left_out)}. Fix them, validate on other folders (--degset/--tarset), "
                           f"or {NO_VALIDATION}")
        exc.met_by_every_rank = True
        raise exc
    if left_out:
        console.warn(f"validating without {found - len(pairs)} of the {found} degraded images of {deg} "
                     f"(--skip-bad-files):{listing(left_out)}; validating with {counted(len(pairs), 'pair')}")
    console(f"=> validation: {len(pairs)} pairs from {deg} / {tar}, matched by file name")
    return pairs


NO_VALIDATION = "pass --degset '' --tarset '' to train without validation"


# The fixes of a validation pair that cannot be used, after replacing or removing it (--check-data says them too)
SKIP_OR_NO_VALIDATION = f"pass --skip-bad-files to validate without the pair, or {NO_VALIDATION}"


_UNCHECKED = "\0"  # what rank 0 broadcasts when decoding the validation images failed (no JSON text is a NUL byte)


def check_validation_images(pairs: list[tuple[Path, Path]], info: DistInfo = DistInfo(),
                            skip_bad: bool = False) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Decode every image of the validation ``pairs`` in full (:func:`utils.data.integrity.decode_files`, the
    loaders' reader) and compare each pair's sizes, before training. The start-up check of the training files
    reads headers and endings only, and passes a complete PNG with bytes damaged in its middle; a pair of two
    sizes was found only when scored: either was met by the first validation, after a whole epoch, and stopped
    every ``--resume`` there again. One error names each file that does not decode (or pair whose sizes differ)
    and its pair, with the fixes; ``skip_bad`` (``--skip-bad-files``) leaves those pairs out instead. Returns
    the pairs kept and the files left out, each named with why and its pair. Rank 0
    decodes and every rank gets its verdict: all stop (or leave out) alike, and rank 0's error line says it for
    all."""
    bad = _unusable(pairs, info)
    if not bad:
        return pairs, []
    partners = partners_of(pairs)
    named = [f"{read_problem(why)} (its pair: {', '.join(map(str, partners[f]))})" for f, why in bad.items()]
    if skip_bad:
        return [(d, t) for d, t in pairs if d not in bad and t not in bad], named
    one = len(bad) == 1
    exc = DatasetError(f"{len(bad)} validation image{'' if one else 's'} cannot be used (validation reads "
                       f"{'it' if one else 'them'} after each epoch):{listing(named)}. Replace "
                       f"{'it' if one else 'each'}, remove {'it' if one else 'each'} and its pair, pass "
                       f"--skip-bad-files to validate without {'the pair' if one else 'those pairs'}, or "
                       f"{NO_VALIDATION}")
    exc.met_by_every_rank = True
    raise exc


def _unusable(pairs: list[tuple[Path, Path]], info: DistInfo) -> dict[Path, str]:
    """Rank 0's verdict on the validation ``pairs``, on every rank: ``{file: why}`` for each file that does not
    decode (:func:`~utils.data.integrity.decode_files`), each degraded image whose target has another size, and
    each too small for the validation's scoring (:func:`~utils.eval.evaluation.smallest_file_side`)."""
    files = list(dict.fromkeys(f for pair in pairs for f in pair))
    if info.is_main:
        try:
            bad = decode_files(files)
            least = smallest_file_side(Protocol())  # the protocol validation scores with (engine.evaluate)
            for d, t in pairs:
                if d in bad or t in bad:
                    continue
                (h, w), (th, tw) = image_size(d), image_size(t)
                if (h, w) != (th, tw):
                    bad[d] = f"{d} is {h}x{w} but its target {t} is {th}x{tw} (height x width)" \
                             f"{turned_pair_note(d, t, (h, w), (th, tw))}"
                elif min(h, w) < least:
                    bad[d] = f"{d} is {h}x{w} (height x width), too small to score: validation needs at least " \
                             f"{least}x{least}"
        except BaseException:
            broadcast_text(_UNCHECKED, info)  # the other ranks stop too, instead of waiting for a verdict
            raise
        broadcast_text(json.dumps({str(f): why for f, why in bad.items()}), info)
        return bad
    said = broadcast_text("", info)
    if said == _UNCHECKED:
        exc = DatasetError("rank 0 could not check the validation images (its error says why)")
        exc.met_by_every_rank = True
        raise exc
    by_name = json.loads(said)
    return {f: by_name[str(f)] for f in files if str(f) in by_name}
