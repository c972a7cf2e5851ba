"""Parameter-free "ReferenceOnly" self-attention of MuseV's spatial attn1 (spec §2.6).

Every frame's attn1 keys/values are its own tokens followed by the tokens of the vision-condition
frame(s) of the same video sample at the same layer; queries are unchanged.
"""
import torch


def extend_self_attention_context(n, layout):
    """``n``: (rows, hw, C) attn1 input (after norm1).  Returns the K/V input
    ``[own tokens ; vision tokens]`` of shape (rows, hw·(1+n_vis), C), or ``n`` itself when the
    call has no vision frames (plain text-to-video, single-frame calls)."""
    if not layout.uses_vision:
        return n
    if n.shape[0] != layout.rows:
        raise ValueError(f"ReferenceOnly: attn1 got {n.shape[0]} rows, layout has {layout.rows}")
    vis_rows = layout.row_index("vision_rows", n.device)          # (rows, n_vis)
    rows, hw, c = n.shape
    vis = n[vis_rows.reshape(-1)].reshape(rows, vis_rows.shape[1] * hw, c)
    return torch.cat([n, vis], dim=1)
