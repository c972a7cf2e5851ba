"""MuseV's context-window schedules (spec §5.5), as pure functions on frame indices.

MuseV denoises a long video in overlapping windows of ``context_frames`` latent frames.  The
windows are computed once (for denoising step 0) and reused at every step; the noise predictions
of overlapping windows are averaged with equal weight.  Indices here are *latent frame* indices of
the frames being generated: the clean vision-condition frames are not counted (they are prepended
to every window, see :func:`unet_layout`).

Two schedules (our names; MuseV's in brackets):

* ``"uniform_v2"`` (``uniform_v2``, MuseV's default): windows start at ``0, F-O, 2(F-O), ...`` while
  the start is ``< N``; each window is ``[start, min(start+F, N))`` -- the last ones may be shorter
  and never wrap; then the final window is dropped (once) if it ends on the same frame as the one
  before it.  ``context_stride`` is ignored (MuseV passes ``sample_rate=1``).
* ``"uniform_looped"`` (``uniform``, AnimateAnyone's closed-loop generator): the same starts but
  every window has exactly ``F`` frames, wrapping around modulo ``N``; with ``context_stride`` > 1
  dilated windows (every 2nd, 4th, ... frame) are added; when ``N <= F`` there is one unwrapped
  window of all frames.  The same "drop the final window" rule is applied afterwards.

Quirks reproduced from MuseV on purpose (they decide which frames are denoised together):

* The "drop the final window" rule runs exactly once.  With a large overlap several short
  trailing ``uniform_v2`` windows can end on the last frame; only the very last one is removed
  (e.g. N=9, F=8, O=6 -> ``[0..7], [2..8], [4..8], [6..8]``).
* ``uniform_looped`` windows may contain the same frame twice (e.g. dilated windows when N is even
  and the dilated span exceeds N).  MuseV accumulates with ``pred[:, :, c] = pred[:, :, c] + eps``
  and ``count[c] = count[c] + 1``, so such a frame receives ONE of its predictions and is counted
  once for that window; :func:`frame_counts` counts it the same way.

Public API: :data:`SCHEDULES`, :func:`get_windows`, :func:`batch_windows`, :func:`frame_counts`,
:func:`unet_layout`, :func:`validate`, :func:`describe`, :class:`WindowError`, and the raw
generators :func:`uniform_v2`, :func:`uniform_looped`, :func:`drop_last_repeat`.
"""
SCHEDULES = ("uniform_v2", "uniform_looped")

# MuseV's own schedule names, accepted as aliases.
_ALIASES = {"uniform": "uniform_looped"}


class WindowError(ValueError):
    """A context-window setting that cannot work; the message names the input and the fix."""


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def validate(n_frames, context_frames, context_overlap, context_batch_size=1, context_stride=1):
    """Check the window settings; raise :class:`WindowError` naming the bad input and the fix.

    Rules: ``n_frames >= 1``, ``context_frames >= 2``, ``0 <= context_overlap < context_frames``,
    ``context_batch_size >= 1``, ``context_stride >= 1`` (all integers).
    """
    named = (("n_frames", n_frames), ("context_frames", context_frames),
             ("context_overlap", context_overlap), ("context_batch_size", context_batch_size),
             ("context_stride", context_stride))
    for name, value in named:
        if not _is_int(value):
            raise WindowError(f"{name} must be an integer, got {value!r}")
    if n_frames < 1:
        raise WindowError(
            f"n_frames (video length in latent frames, vision-condition frames excluded) is {n_frames}: "
            "generate at least 1 frame")
    if context_frames < 2:
        raise WindowError(
            f"context_frames is {context_frames}: a window needs at least 2 frames; use 12 (MuseV's "
            "trained window) or any value >= 2")
    if context_overlap < 0:
        raise WindowError(f"context_overlap is {context_overlap}: it cannot be negative; use 0..{context_frames - 1}")
    if context_overlap >= context_frames:
        raise WindowError(
            f"context_overlap ({context_overlap}) must be smaller than context_frames ({context_frames}), "
            f"otherwise the windows never advance; use at most {context_frames - 1} (MuseV: 4 of 12)")
    if context_batch_size < 1:
        raise WindowError(f"context_batch_size is {context_batch_size}: use 1 or more windows per UNet call")
    if context_stride < 1:
        raise WindowError(f"context_stride is {context_stride}: use 1 (no dilated windows) or more")


def _schedule_name(schedule):
    name = _ALIASES.get(schedule, schedule)
    if name not in SCHEDULES:
        raise WindowError(f"context_schedule {schedule!r} is unknown: choose one of {', '.join(SCHEDULES)}")
    return name


def drop_last_repeat(windows):
    """MuseV's clean-up: drop the final window if it ends on the same frame as the one before it.

    Applied once (not repeatedly).  Returns a new list; the input is not modified."""
    windows = list(windows)
    if len(windows) >= 2 and windows[-1][-1] == windows[-2][-1]:
        return windows[:-1]
    return windows


def _uniform_v2_raw(n_frames, context_frames, context_overlap):
    step = context_frames - context_overlap
    return [list(range(start, min(start + context_frames, n_frames))) for start in range(0, n_frames, step)]


def uniform_v2(n_frames, context_frames, context_overlap, context_stride=1):
    """MuseV's default schedule (``prepare_global_context`` with ``uniform_v2``), before batching.

    Windows ``[s, min(s+F, N))`` for ``s = 0, F-O, 2(F-O), ... < N``, then the final window is dropped
    if it ends on the same frame as the previous one.  ``context_stride`` is accepted and ignored,
    as in MuseV.  Examples (F=12, O=4): N=12 -> [0..11]; N=13 -> [0..11], [8..12];
    N=24 -> [0..11], [8..19], [16..23].
    """
    validate(n_frames, context_frames, context_overlap, 1, context_stride)
    return drop_last_repeat(_uniform_v2_raw(n_frames, context_frames, context_overlap))


def _ordered_halving(value):
    """The bit-reversed 64-bit value of ``value`` as a fraction in [0, 1) (correctly rounded)."""
    reversed_bits = int(format(value, "064b")[::-1], 2)
    return reversed_bits / (1 << 64)


def _n_dilations(n_frames, context_frames):
    """``ceil(log2(N / F)) + 1`` for N > F, computed exactly with integers."""
    k = 0
    while context_frames << k < n_frames:
        k += 1
    return k + 1


def uniform_looped(n_frames, context_frames, context_overlap, context_stride=1, step=0, closed_loop=True):
    """MuseV's raw ``uniform`` generator (closed-loop windows with wrap-around), as a list.

    For ``N <= F``: one window ``[0..N-1]``.  Otherwise, for each dilation ``d = 1, 2, 4, ...``
    (``min(context_stride, ceil(log2(N/F)) + 1)`` of them) windows of ``F`` frames spaced ``d`` apart
    start at ``j = int(h·d) + round(N·h)``, stepping by ``F·d - O`` up to ``N + round(N·h)``
    (exclusive; ``- O`` more when not ``closed_loop``), every index taken modulo ``N``;
    ``h`` = bit-reversed ``step``.  MuseV's pipeline uses ``step=0``, ``closed_loop=True`` and then
    :func:`drop_last_repeat` -- use :func:`get_windows` for that.
    """
    validate(n_frames, context_frames, context_overlap, 1, context_stride)
    if not _is_int(step) or step < 0:
        raise WindowError(f"step must be a non-negative integer, got {step!r}")
    if n_frames <= context_frames:
        return [list(range(n_frames))]
    halving = _ordered_halving(step)
    pad = int(round(n_frames * halving))
    end = n_frames + pad + (0 if closed_loop else -context_overlap)
    windows = []
    for level in range(min(context_stride, _n_dilations(n_frames, context_frames))):
        dilation = 1 << level
        first = int(halving * dilation) + pad
        for j in range(first, end, context_frames * dilation - context_overlap):
            windows.append([e % n_frames for e in range(j, j + context_frames * dilation, dilation)])
    return windows


def get_windows(schedule, n_frames, context_frames, context_overlap, context_stride=1):
    """The windows MuseV denoises at every step (``prepare_global_context``, before batching).

    ``schedule``: ``"uniform_v2"`` or ``"uniform_looped"`` (MuseV's ``"uniform"`` is accepted too).
    Returns a list of windows, each a list of latent frame indices in ``[0, n_frames)``.
    """
    name = _schedule_name(schedule)
    if name == "uniform_v2":
        return uniform_v2(n_frames, context_frames, context_overlap, context_stride)
    return drop_last_repeat(uniform_looped(n_frames, context_frames, context_overlap, context_stride, step=0))


def batch_windows(windows, batch_size):
    """Group consecutive windows ``batch_size`` at a time (the last group may be smaller)."""
    if not _is_int(batch_size) or batch_size < 1:
        raise WindowError(f"context_batch_size is {batch_size!r}: use 1 or more windows per UNet call")
    windows = list(windows)
    return [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]


def frame_counts(windows, n_frames):
    """How many windows cover each frame (the divisor of MuseV's plain average).

    A window that holds a frame twice (possible with ``uniform_looped``) counts once for it, as in
    MuseV's indexed accumulation."""
    if not _is_int(n_frames) or n_frames < 1:
        raise WindowError(f"n_frames must be a positive integer, got {n_frames!r}")
    counts = [0] * n_frames
    for i, window in enumerate(windows):
        for frame in set(window):
            if not _is_int(frame) or not 0 <= frame < n_frames:
                raise WindowError(f"window {i} holds frame {frame!r}, outside 0..{n_frames - 1}")
            counts[frame] += 1
    return counts


def unet_layout(window, n_vis):
    """The frame layout of one window's UNet call: ``n_vis`` clean vision frames first.

    Returns ``dict(sample_index=[n_vis, ..., n_vis+L-1], vision_index=[0, ..., n_vis-1],
    unet_frames=n_vis+L)`` (MuseV's ``sample_index`` and ``vision_conditon_frames_sample_index``).
    With ``n_vis == 0`` MuseV passes ``None`` for both; here ``vision_index`` is then ``[]`` and
    ``sample_index`` covers all frames, which means the same.
    """
    window = list(window)
    if not window:
        raise WindowError("a window must hold at least one frame")
    if not _is_int(n_vis) or n_vis < 0:
        raise WindowError(f"the number of vision-condition frames must be an integer >= 0, got {n_vis!r}")
    length = len(window)
    return {
        "sample_index": list(range(n_vis, n_vis + length)),
        "vision_index": list(range(n_vis)),
        "unet_frames": n_vis + length,
    }


def describe(schedule, n_frames, context_frames, context_overlap, n_vis=0, context_batch_size=1, context_stride=1):
    """A JSON-able summary of a window plan (for the frontend widget and for error messages).

    Keys: the inputs (``schedule`` normalised to our name), ``windows``, ``frame_counts`` (windows
    covering each frame), ``batches`` (indices into ``windows``, one list per UNet call group),
    ``unet_frames`` (frames of each window's UNet call incl. vision frames), ``batch_unet_frames``
    (frames per batched call), ``n_windows``, ``n_batches``, ``max_count`` and ``min_count``.
    """
    name = _schedule_name(schedule)
    validate(n_frames, context_frames, context_overlap, context_batch_size, context_stride)
    if not _is_int(n_vis) or n_vis < 0:
        raise WindowError(f"the number of vision-condition frames must be an integer >= 0, got {n_vis!r}")
    windows = get_windows(name, n_frames, context_frames, context_overlap, context_stride)
    counts = frame_counts(windows, n_frames)
    batches = batch_windows(list(range(len(windows))), context_batch_size)
    unet_frames = [unet_layout(w, n_vis)["unet_frames"] for w in windows]
    return {
        "schedule": name,
        "n_frames": n_frames,
        "context_frames": context_frames,
        "context_overlap": context_overlap,
        "context_stride": context_stride,
        "context_batch_size": context_batch_size,
        "n_vis": n_vis,
        "windows": windows,
        "frame_counts": counts,
        "batches": batches,
        "unet_frames": unet_frames,
        "batch_unet_frames": [sum(unet_frames[i] for i in batch) for batch in batches],
        "n_windows": len(windows),
        "n_batches": len(batches),
        "min_count": min(counts),
        "max_count": max(counts),
    }


__all__ = [
    "SCHEDULES", "WindowError", "validate", "uniform_v2", "uniform_looped", "drop_last_repeat",
    "get_windows", "batch_windows", "frame_counts", "unet_layout", "describe",
]
