"""HTDemucs split in three: STFT before, the network core, masking and iSTFT after.

An inference runtime takes the core only: the encoder, transformer and decoder, from the
complex-as-channels spectrogram and the waveform to the frequency branch (before masking) and
the time branch. The STFT, the masking and the iSTFT are demucs' own methods, run by torch
outside the exported graph, so the arithmetic around the core stays demucs' exactly. The core's
code is ``HTDemucs.forward`` between those steps, unchanged (demucs 4.1.0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from demucs.htdemucs import HTDemucs
from einops import rearrange
from torch import nn
from torch.nn import functional as F

# Takes (mix, mag) and returns (frequency branch, time branch), both denormalised.
Core = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def training_length(model: Any) -> int:
    """The samples every segment is padded to: the core's fixed input length."""
    return int(model.segment * model.samplerate)


class HTDemucsCore(nn.Module):
    """``HTDemucs.forward`` from the normalisation of its inputs to their denormalisation."""

    def __init__(self, model: HTDemucs) -> None:
        super().__init__()
        self.model = model

    def forward(self, mix: torch.Tensor, mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        x = mag
        batch, _, freqs, frames = x.shape
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (1e-5 + std)
        xt = mix
        meant = xt.mean(dim=(1, 2), keepdim=True)
        stdt = xt.std(dim=(1, 2), keepdim=True)
        xt = (xt - meant) / (1e-5 + stdt)
        saved: list[torch.Tensor] = []
        saved_t: list[torch.Tensor] = []
        lengths: list[int] = []
        lengths_t: list[int] = []
        for idx, encode in enumerate(m.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if idx < len(m.tencoder):
                lengths_t.append(xt.shape[-1])
                tenc = m.tencoder[idx]
                xt = tenc(xt)
                if not tenc.empty:
                    saved_t.append(xt)
                else:
                    inject = xt
            x = encode(x, inject)
            if idx == 0 and m.freq_emb is not None:
                frs = torch.arange(x.shape[-2], device=x.device)
                emb = m.freq_emb(frs).t()[None, :, :, None].expand_as(x)
                x = x + m.freq_emb_scale * emb
            saved.append(x)
        if m.crosstransformer:
            if m.bottom_channels:
                f = x.shape[2]
                x = rearrange(x, "b c f t-> b c (f t)")
                x = m.channel_upsampler(x)
                x = rearrange(x, "b c (f t)-> b c f t", f=f)
                xt = m.channel_upsampler_t(xt)
            x, xt = m.crosstransformer(x, xt)
            if m.bottom_channels:
                x = rearrange(x, "b c f t-> b c (f t)")
                x = m.channel_downsampler(x)
                x = rearrange(x, "b c (f t)-> b c f t", f=f)
                xt = m.channel_downsampler_t(xt)
        for idx, decode in enumerate(m.decoder):
            skip = saved.pop(-1)
            x, pre = decode(x, skip, lengths.pop(-1))
            offset = m.depth - len(m.tdecoder)
            if idx >= offset:
                tdec = m.tdecoder[idx - offset]
                length_t = lengths_t.pop(-1)
                if tdec.empty:
                    pre = pre[:, :, 0]
                    xt, _ = tdec(pre, None, length_t)
                else:
                    xt, _ = tdec(xt, saved_t.pop(-1), length_t)
        sources = len(m.sources)
        x = x.view(batch, sources, -1, freqs, frames)
        x = x * std[:, None] + mean[:, None]
        xt = xt.view(batch, sources, -1, mix.shape[-1])
        xt = xt * stdt[:, None] + meant[:, None]
        return x, xt


def spectrogram(model: Any, mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mix padded to the training length, its complex STFT, the length before padding)."""
    length = mix.shape[-1]
    padded = training_length(model)
    if length < padded:
        mix = F.pad(mix, (0, padded - length))
    return mix, model._spec(mix), length


def separate_with(model: Any, core: Core, mix: torch.Tensor) -> torch.Tensor:
    """``model(mix)`` with its core computed by ``core`` (eval mode, as ``HTDemucs.forward``)."""
    padded, z, length = spectrogram(model, mix)
    x, xt = core(padded, model._magnitude(z))
    zout = model._mask(z, x)
    out: torch.Tensor = xt + model._ispec(zout, padded.shape[-1])
    return out[..., :length]


def core_inputs(model: Any, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (mix, mag) pair of the core's shape, to export and to check an export with."""
    generator = torch.Generator().manual_seed(seed)
    mix = torch.randn(batch, model.audio_channels, training_length(model), generator=generator)
    padded, z, _ = spectrogram(model, mix)
    return padded, model._magnitude(z)
