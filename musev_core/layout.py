"""The frame layout of one UNet call.

ComfyUI runs SD1.5 video as "frames = batch": a UNet call sees ``rows`` 2-D samples.  MuseV's
layers need to know which rows form one video sample ("segment": its vision-condition frames
first, then the window's noisy frames, frame index fastest, the ``(b t)`` order of MuseV) and
which guidance role each segment has (0 = positive/cond, 1 = negative/uncond, ComfyUI's
``cond_or_uncond`` convention).  A call may hold several segments: the CFG chunks, and with
batched windows several windows per chunk, possibly of different lengths.
"""
from dataclasses import dataclass, field

import torch

COND, UNCOND = 0, 1


@dataclass(frozen=True)
class Segment:
    start: int      # first row
    frames: int     # T = n_vis + window length
    n_vis: int      # leading clean vision-condition frames
    role: int = COND


@dataclass
class CallLayout:
    segments: list
    rows: int
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    chunks: int = 0                  # guidance chunks (equal blocks of consecutive rows), 0 = unknown

    @classmethod
    def build(cls, rows, chunk_roles, chunk_segments):
        """``chunk_roles``: one role per chunk; ``chunk_segments``: ``[(n_vis, frames), ...]`` that
        tile one chunk (every chunk has the same structure)."""
        k = len(chunk_roles)
        per_chunk = sum(f for _, f in chunk_segments)
        if k == 0 or per_chunk * k != rows:
            raise ValueError(
                f"MuseV layout mismatch: the UNet got {rows} frames but {k} guidance chunk(s) of "
                f"{per_chunk} frames each were announced ({chunk_segments})")
        segs = []
        row = 0
        for role in chunk_roles:
            for n_vis, frames in chunk_segments:
                if n_vis < 0 or n_vis > frames:
                    raise ValueError(f"MuseV layout: {n_vis} vision frames in a {frames}-frame segment")
                segs.append(Segment(row, frames, n_vis, int(role)))
                row += frames
        return cls(segs, rows, chunks=k)

    @classmethod
    def reuse(cls, store, rows, chunk_roles, chunk_segments):
        """:meth:`build`, memoised in ``store`` (a per-run dict): every call of a sampling run with the
        same structure gets the same layout object, so its index tensors (:meth:`row_index`, per
        device) are built and uploaded once per run instead of once per call."""
        if store is None:
            return cls.build(rows, chunk_roles, chunk_segments)
        key = ("layout", int(rows), tuple(int(r) for r in chunk_roles),
               tuple((int(n), int(f)) for n, f in chunk_segments))
        layout = store.get(key)
        if layout is None:
            layout = store[key] = cls.build(rows, chunk_roles, chunk_segments)
        return layout

    def chunk_starts(self, device):
        """(chunks,) first row of every guidance chunk (the chunks are equal blocks of rows)."""
        key = ("chunk_starts", str(device))
        if key not in self._cache:
            per = self.rows // self.chunks
            self._cache[key] = torch.arange(0, self.rows, per, dtype=torch.long).to(device)
        return self._cache[key]

    def chunk_roles(self, device):
        """(chunks,) guidance role of every chunk."""
        key = ("chunk_roles", str(device))
        if key not in self._cache:
            per = self.rows // self.chunks
            roles = {s.start // per: s.role for s in self.segments}
            self._cache[key] = torch.tensor([roles[j] for j in range(self.chunks)], dtype=torch.long).to(device)
        return self._cache[key]

    def role_runs(self):
        """``[(start, stop, role)]``: maximal runs of consecutive rows with one guidance role."""
        if "role_runs" not in self._cache:
            runs = []
            for s in self.segments:
                if runs and runs[-1][2] == s.role and runs[-1][1] == s.start:
                    runs[-1] = (runs[-1][0], s.start + s.frames, s.role)
                else:
                    runs.append((s.start, s.start + s.frames, s.role))
            self._cache["role_runs"] = runs
        return self._cache["role_runs"]

    @property
    def n_vis(self):
        """The number of vision frames per segment (the same for every segment of a call)."""
        values = {s.n_vis for s in self.segments}
        if len(values) != 1:
            raise ValueError(f"MuseV layout: segments with different vision-frame counts {sorted(values)}")
        return values.pop()

    @property
    def uses_vision(self):
        return any(s.n_vis > 0 and s.frames > 1 for s in self.segments)

    def frame_groups(self):
        """``[(frames, rows_index (S, T) LongTensor or None, contiguous_start)]``: segments grouped
        by length so temporal layers can run on ``(S, T, ...)`` views; ``None`` index means the
        group is the whole call in order (no gather needed)."""
        if "groups" not in self._cache:
            by_len = {}
            for s in self.segments:
                by_len.setdefault(s.frames, []).append(s)
            groups = []
            if len(by_len) == 1:
                (frames, segs), = by_len.items()
                groups.append((frames, len(segs), None))
            else:
                for frames, segs in by_len.items():
                    idx = torch.tensor([[s.start + t for t in range(frames)] for s in segs], dtype=torch.long)
                    groups.append((frames, len(segs), idx))
            self._cache["groups"] = groups
        return self._cache["groups"]

    def row_index(self, name, device):
        key = (name, str(device))
        if key not in self._cache:
            self._cache[key] = self._build_index(name).to(device)
        return self._cache[key]

    def _build_index(self, name):
        if name == "role":           # (rows,) role of every row
            out = torch.empty(self.rows, dtype=torch.long)
            for s in self.segments:
                out[s.start:s.start + s.frames] = s.role
            return out
        if name == "vision_rows":    # (rows, n_vis) rows of the vision frames of each row's segment
            n_vis = self.n_vis
            out = torch.empty(self.rows, n_vis, dtype=torch.long)
            for s in self.segments:
                out[s.start:s.start + s.frames] = torch.arange(s.start, s.start + n_vis)
            return out
        if name == "is_vision":      # (rows,) bool
            out = torch.zeros(self.rows, dtype=torch.bool)
            for s in self.segments:
                if s.frames > 1:
                    out[s.start:s.start + s.n_vis] = True
            return out
        raise KeyError(name)

    def roles(self):
        return sorted({s.role for s in self.segments})
