"""Log-mel spectrogram features (the VAE encoder input and the mel-loss target).

Frame-count rule: the STFT is centered (``n_fft // 2`` samples of padding on each side), so a
waveform of ``T`` samples gives ``T // hop_length + 1`` frames when ``n_fft`` is even (in general
``(T + 2 * (n_fft // 2) - n_fft) // hop_length + 1``; see :meth:`LogMelSpectrogram.num_frames`).
Frame ``i`` is centered on sample ``i * hop_length``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from llamavoice.config import AudioConfig

LOG_CLAMP = 1e-5  # floor on mel magnitudes before the log: silence maps to log(1e-5) ~ -11.5


class LogMelSpectrogram(torch.nn.Module):
    """Waveform ``(..., T)`` -> natural-log mel magnitude ``(..., n_mels, frames)``.

    Magnitude (power 1) STFT with a periodic Hann window, HTK mel filters without area
    normalization, then ``log(clamp(mel, min=1e-5))``. Leading dimensions are kept: ``(B, T)``
    gives ``(B, n_mels, frames)`` and ``(T,)`` gives ``(n_mels, frames)``.

    The input is padded by reflection (zeros for clips too short to reflect, under
    ``n_fft // 2 + 1`` samples). Always computed in float32 with autocast disabled: in half
    precision the STFT loses the quiet bins that the log then magnifies. The window and filterbank
    are non-persistent buffers (they are derived from the config, so they are not saved in
    checkpoints) and follow ``.to(device)``.
    """

    def __init__(
        self,
        sample_rate: int = 24000,
        n_fft: int = 1024,
        hop_length: int = 240,
        n_mels: int = 100,
        f_min: float = 0.0,
        f_max: float | None = None,
    ) -> None:
        super().__init__()
        if hop_length <= 0 or n_fft <= 0 or n_mels <= 0 or sample_rate <= 0:
            raise ValueError("sample_rate, n_fft, hop_length and n_mels must be positive")
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.f_min = f_min
        self.f_max = f_max if f_max is not None else sample_rate / 2
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        fbank = AF.melscale_fbanks(
            n_freqs=n_fft // 2 + 1,
            f_min=f_min,
            f_max=self.f_max,
            n_mels=n_mels,
            sample_rate=sample_rate,
            norm=None,
            mel_scale="htk",
        )  # (n_freqs, n_mels)
        self.register_buffer("fbank", fbank.T.contiguous(), persistent=False)  # (n_mels, n_freqs)

    @classmethod
    def from_config(cls, cfg: AudioConfig) -> LogMelSpectrogram:
        return cls(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            n_mels=cfg.n_mels,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
        )

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples (``num_samples // hop_length + 1`` for even n_fft)."""
        pad = self.n_fft // 2
        return (num_samples + 2 * pad - self.n_fft) // self.hop_length + 1

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.shape[-1] == 0:
            raise ValueError("LogMelSpectrogram got an empty waveform (0 samples)")
        lead = audio.shape[:-1]
        x = audio.reshape(-1, audio.shape[-1])
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            pad = self.n_fft // 2
            # Reflect padding needs more samples than the pad; tiny clips fall back to zeros.
            mode = "reflect" if x.shape[-1] > pad else "constant"
            x = F.pad(x.unsqueeze(1), (pad, pad), mode=mode).squeeze(1)
            spec = torch.stft(
                x,
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                win_length=self.n_fft,
                window=self.window.float(),
                center=False,
                return_complex=True,
            ).abs()  # (N, n_freqs, frames)
            mel = torch.matmul(self.fbank.float(), spec)
            out = torch.log(torch.clamp(mel, min=LOG_CLAMP))
        return out.reshape(*lead, self.n_mels, out.shape[-1])
