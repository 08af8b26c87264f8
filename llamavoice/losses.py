"""Losses: the latent KL through the flow, the stop BCE, the alignment losses and the VAE/GAN losses.

Everything here computes in fp32, whatever dtype the model runs in: KL terms subtract large
log-densities and lose their meaning in bf16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vocos.loss import DiscriminatorLoss, FeatureMatchingLoss, GeneratorLoss, MelSpecReconstructionLoss

from llamavoice.config import AudioConfig, LossConfig

LOG_2PI = math.log(2 * math.pi)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def frame_mask(lengths: Tensor, max_len: int) -> Tensor:
    return torch.arange(max_len, device=lengths.device)[None] < lengths[:, None]


def gaussian_log_prob(x: Tensor, mu: Tensor, logstd: Tensor) -> Tensor:
    """log N(x; μ, σ²) summed over the last dimension."""
    x, mu, logstd = x.float(), mu.float(), logstd.float()
    return (-0.5 * ((x - mu) * torch.exp(-logstd)) ** 2 - logstd - 0.5 * LOG_2PI).sum(-1)


def latent_kl(
    post_logstd: Tensor,
    u: Tensor,
    logdet: Tensor,
    prior_mu: Tensor,
    prior_logstd: Tensor,
    mask: Tensor,
) -> Tensor:
    """KL(q(z|x) ‖ p_LM(z)) in nats per latent frame, one-sample estimate.

    p_LM(z) = N(f(z); μ, σ) · |det ∂f/∂z| (change of variables), with u = f(z), z ~ q.
    E_q[log q] is taken in closed form (the Gaussian entropy), which lowers the variance.
    """
    dim = post_logstd.shape[-1]
    neg_entropy = -post_logstd.float().sum(-1) - 0.5 * dim * (1.0 + LOG_2PI)
    log_prior = gaussian_log_prob(u, prior_mu, prior_logstd) + logdet.float()
    return masked_mean(neg_entropy - log_prior, mask)


def standard_normal_kl(mu: Tensor, logstd: Tensor, mask: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) per frame: the small σ-VAE regularizer on the posterior."""
    mu, logstd = mu.float(), logstd.float()
    kl = 0.5 * (mu**2 + torch.exp(2 * logstd) - 1.0) - logstd
    return masked_mean(kl.sum(-1), mask)


def stop_loss(logits: Tensor, num_groups: Tensor, pos_weight: float) -> Tensor:
    """BCE on the stop head: position k < N is "continue", position N is "stop", rest is padding."""
    positions = torch.arange(logits.shape[1], device=logits.device)[None]
    targets = (positions == num_groups[:, None]).float()
    mask = positions <= num_groups[:, None]
    weight = torch.tensor(pos_weight, device=logits.device)
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=weight, reduction="none")
    return masked_mean(loss, mask)


def _alignment_grid(attn: Tensor, text_lengths: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For attention (B, H, n, L): the normalized distance of each (output k, text j) cell from the
    diagonal |j/L - k/(N+1)| (B, 1, n, L), the valid-cell mask, and which output rows count (B, n):
    real output positions of items that have text."""
    n, L = attn.shape[-2:]
    k = torch.arange(n, device=attn.device, dtype=torch.float32)[None, :, None]
    j = torch.arange(L, device=attn.device, dtype=torch.float32)[None, None, :]
    tl = text_lengths.float().clamp(min=1)[:, None, None]
    rows = (groups.float() + 1)[:, None, None]
    distance = ((j + 0.5) / tl - (k + 0.5) / rows).abs()
    cells = (j < text_lengths[:, None, None]) & (k < rows)
    row_ok = (k[..., 0] < rows[..., 0]) & (text_lengths[:, None] > 0)
    return distance[:, None], cells[:, None], row_ok


def guided_attention_loss(attn: Tensor, text_lengths: Tensor, groups: Tensor, sigma: float) -> Tensor:
    """DCTTS' guided attention: attention mass far from the diagonal is penalized by
    1 - exp(-d² / 2σ²), averaged over heads and the real output positions of items with text."""
    distance, cells, rows = _alignment_grid(attn, text_lengths, groups)
    penalty = (1.0 - torch.exp(-(distance**2) / (2 * sigma**2))) * cells
    per_row = (attn.float() * penalty).sum(-1).mean(1)  # (B, n)
    return masked_mean(per_row, rows)


def diagonality(attn: Tensor, text_lengths: Tensor, groups: Tensor, band: float = 0.1) -> Tensor:
    """The share of alignment attention within ``band`` of the diagonal (1 = perfectly diagonal;
    a uniform attention over L tokens scores about 2·band)."""
    distance, cells, rows = _alignment_grid(attn, text_lengths, groups)
    near = ((distance <= band) & cells).float()
    per_row = (attn.float() * near).sum(-1).mean(1)
    return masked_mean(per_row, rows)


class VAELosses(nn.Module):
    """Generator- and discriminator-side losses of Vocos-style adversarial training (the
    discriminators are :class:`llamavoice.models.discriminators.Discriminators`). Scores and
    feature maps are taken in fp32, whatever the autocast dtype of the discriminators."""

    def __init__(self, audio: AudioConfig, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        self.mel_loss = MelSpecReconstructionLoss(
            sample_rate=audio.sample_rate, n_fft=audio.n_fft, hop_length=audio.hop_length, n_mels=audio.n_mels
        )
        self.gen_loss = GeneratorLoss()
        self.disc_loss = DiscriminatorLoss()
        self.fm_loss = FeatureMatchingLoss()

    def _weight(self, name: str) -> float:
        return getattr(self.cfg, f"{name}_weight")  # mpd_weight, mrd_weight

    def generator(self, real: Tensor, fake: Tensor, disc_out: dict[str, tuple] | None) -> dict[str, Tensor]:
        """Mel L1 (×mel_weight), plus for each discriminator that ran: hinge adversarial + feature
        matching (×its weight). ``disc_out`` None: before the discriminators join."""
        cfg = self.cfg
        losses = {"mel": self.mel_loss(fake.float(), real.float())}
        total = cfg.mel_weight * losses["mel"]
        for name, (_, fake_scores, real_fmaps, fake_fmaps) in (disc_out or {}).items():
            adv, _ = self.gen_loss([s.float() for s in fake_scores])
            fm = self.fm_loss(_fp32_maps(real_fmaps), _fp32_maps(fake_fmaps))
            losses[f"adv_{name}"], losses[f"fm_{name}"] = adv.squeeze(), fm.squeeze()
            total = total + self._weight(name) * (adv.squeeze() + cfg.feature_matching_weight * fm.squeeze())
        losses["total"] = total
        return losses

    def discriminator(self, disc_out: dict[str, tuple]) -> dict[str, Tensor]:
        """Hinge loss of each discriminator on real vs generated audio, and their weighted sum."""
        losses: dict[str, Tensor] = {}
        total = 0.0
        for name, (real_scores, fake_scores, _, _) in disc_out.items():
            loss, _, _ = self.disc_loss([s.float() for s in real_scores], [s.float() for s in fake_scores])
            losses[name] = loss.squeeze()
            total = total + self._weight(name) * loss.squeeze()
        losses["total"] = total
        return losses


def _fp32_maps(fmaps: list[list[Tensor]]) -> list[list[Tensor]]:
    return [[f.float() for f in maps] for maps in fmaps]
