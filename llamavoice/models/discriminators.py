"""The discriminators of VAE training: Vocos' multi-period (MPD) and multi-resolution (MRD) ones.

Only training builds them (stages ``vae`` and ``joint``); their losses are in
:class:`llamavoice.losses.VAELosses`. A shipped model directory holds no discriminator weights.
"""

from __future__ import annotations

from torch import Tensor, nn
from vocos.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator

from llamavoice.config import LossConfig


class Discriminators(nn.Module):
    """MPD and MRD, each only if its loss weight is > 0. MPD dominates the cost of VAE training on
    a CPU (about 3x MRD and far more than the VAE itself), so CPU configs turn it off with
    ``model.loss.mpd_weight: 0``. (The weights are named ``nets.mpd.*`` / ``nets.mrd.*`` in
    training checkpoints.)"""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.nets = nn.ModuleDict()
        if cfg.mpd_weight > 0:
            self.nets["mpd"] = MultiPeriodDiscriminator()
        if cfg.mrd_weight > 0:
            self.nets["mrd"] = MultiResolutionDiscriminator()

    def forward(self, real: Tensor, fake: Tensor) -> dict[str, tuple]:
        """name → (real scores, fake scores, real feature maps, fake feature maps)."""
        return {name: net(y=real, y_hat=fake) for name, net in self.nets.items()}
