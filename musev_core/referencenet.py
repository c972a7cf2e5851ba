"""ReferenceNet fusion (spec §4.3): ``ReferEmbFuseAttention``.

Queries are the main UNet's tokens; keys/values are ``[reference tokens ; own tokens]``
(reference first), no input norm, residual.  The reference features themselves come from an
SD1.5 encoder+middle run at timestep 0 (spec §4.1-4.2), which the host runs on its own UNet code.
"""
import torch

from .attention import DEFAULT_OPS, AttentionProjections, sdpa_attention

N_REFERENCE_FEATURES = 13   # conv_in output, 11 down-path skips, mid block output


def feature_tokens(feature):
    """(1, C, n_ref, h, w) or (1, C, h, w) reference feature -> (1, n_ref·h·w, C) tokens."""
    if feature.ndim == 4:
        feature = feature[:, :, None]
    b, c = feature.shape[:2]
    return feature.reshape(b, c, -1).transpose(1, 2)


class ReferEmbFuseAttention(AttentionProjections):
    def fuse(self, x, ref_tokens_per_row, attn_fn=sdpa_attention):
        """``x``: (rows, C, h, w); ``ref_tokens_per_row``: callable(projection) -> (rows, Lr, C),
        the projected reference tokens of each row's sample.  Returns ``x + attn``."""
        rows, c, h, w = x.shape
        tokens = x.reshape(rows, c, h * w).transpose(1, 2)
        k = torch.cat([ref_tokens_per_row(self.to_k), self.to_k(tokens)], dim=1)
        v = torch.cat([ref_tokens_per_row(self.to_v), self.to_v(tokens)], dim=1)
        out = attn_fn(self.to_q(tokens), k, v, self.heads)
        out = self.to_out[0](out)
        return x + out.transpose(1, 2).reshape(rows, c, h, w)
