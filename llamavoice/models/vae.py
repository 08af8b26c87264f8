"""The VAE: log-mel posterior encoder → Gaussian latent z (25 Hz) → Vocos decoder → waveform.

Frame bookkeeping (24 kHz defaults): one latent frame = ``latent_downsample`` mel frames =
``samples_per_latent`` (960) samples. A clip of n samples has ``n // samples_per_latent`` latent
frames; the decoder turns T latent frames into exactly ``T * samples_per_latent`` samples.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn
from vocos.heads import ISTFTHead
from vocos.models import VocosBackbone
from vocos.modules import ConvNeXtBlock

from llamavoice.audio.features import LogMelSpectrogram
from llamavoice.config import AudioConfig, VAEConfig


class PosteriorEncoder(nn.Module):
    """q(z|x): log-mel (B, n_mels, 4T) → μ, log σ (B, T, D).

    The mel frames are folded into latent frames first so the ConvNeXt stack runs at the
    latent rate (4× cheaper than running it on mel frames).
    """

    def __init__(self, audio: AudioConfig, cfg: VAEConfig):
        super().__init__()
        self.fold = audio.latent_downsample
        self.input_proj = nn.Conv1d(audio.n_mels * self.fold, cfg.encoder_dim, kernel_size=3, padding=1)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(cfg.encoder_dim, cfg.encoder_dim * 3, layer_scale_init_value=1.0 / cfg.encoder_layers)
            for _ in range(cfg.encoder_layers)
        )
        self.norm = nn.LayerNorm(cfg.encoder_dim)
        self.out_proj = nn.Linear(cfg.encoder_dim, 2 * cfg.latent_dim)
        self.min_logstd = cfg.min_logstd

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        frames = mel.shape[-1] // self.fold
        x = rearrange(mel[..., : frames * self.fold], "b c (t r) -> b (c r) t", r=self.fold)
        x = self.input_proj(x)
        for block in self.blocks:
            x = block(x)
        x = self.out_proj(self.norm(x.transpose(1, 2)))
        mu, logstd = x.float().chunk(2, dim=-1)
        return mu, logstd.clamp(min=self.min_logstd)


class LatentDecoder(nn.Module):
    """z (B, T, D) → waveform (B, T * samples_per_latent): pixel-shuffle upsampling to the mel
    rate, then a Vocos backbone and ISTFT head."""

    def __init__(self, audio: AudioConfig, cfg: VAEConfig):
        super().__init__()
        self.unfold = audio.latent_downsample
        self.upsample = nn.Conv1d(cfg.latent_dim, cfg.decoder_dim * self.unfold, kernel_size=3, padding=1)
        self.backbone = VocosBackbone(
            input_channels=cfg.decoder_dim,
            dim=cfg.decoder_dim,
            intermediate_dim=cfg.decoder_intermediate_dim,
            num_layers=cfg.decoder_layers,
        )
        self.head = ISTFTHead(cfg.decoder_dim, n_fft=audio.n_fft, hop_length=audio.hop_length, padding="same")

    def forward(self, z: Tensor) -> Tensor:
        # At inference the upsampling and backbone may run in bf16 (inference/runtime.py); in
        # training the weights are fp32 and this cast does nothing.
        x = self.upsample(z.transpose(1, 2).to(self.upsample.weight.dtype))
        x = rearrange(x, "b (c r) t -> b c (t r)", r=self.unfold)
        x = self.backbone(x)
        # The ISTFT runs in fp32: complex ops have no bf16 kernels. (The backbone stays outside this
        # block: under autocast its input is bf16, which fp32 weights would refuse.)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.head(x.float())


class VAE(nn.Module):
    def __init__(self, audio: AudioConfig, cfg: VAEConfig):
        super().__init__()
        self.audio_cfg = audio
        self.mel = LogMelSpectrogram.from_config(audio)
        self.encoder = PosteriorEncoder(audio, cfg)
        self.decoder = LatentDecoder(audio, cfg)

    @property
    def samples_per_latent(self) -> int:
        return self.audio_cfg.samples_per_latent

    def num_frames(self, num_samples: Tensor | int) -> Tensor | int:
        return num_samples // self.samples_per_latent

    def encode(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Waveform (B, S) → posterior μ, log σ (B, S // samples_per_latent, D), fp32."""
        mel = self.mel(audio)
        frames = audio.shape[-1] // self.samples_per_latent
        mu, logstd = self.encoder(mel[..., : frames * self.audio_cfg.latent_downsample])
        return mu, logstd

    def decode(self, z: Tensor) -> Tensor:
        """Latents (B, T, D) → waveform (B, T * samples_per_latent)."""
        return self.decoder(z)

    @staticmethod
    def sample(mu: Tensor, logstd: Tensor, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + noise * logstd.exp()

