"""A per-frame normalizing flow f: z → u, kept behind a thin adapter over nflows.

The flow acts on each latent frame independently (inputs are flattened to (N, D)), so it is
causal and streamable. nflows is unmaintained; nothing outside this module imports it, and we
avoid its LULinear/QRLinear (they call deprecated torch functions).
"""

from __future__ import annotations

import torch
from nflows.nn.nets import ResidualNet
from nflows.transforms import (
    ActNorm,
    AffineCouplingTransform,
    CompositeTransform,
    PiecewiseRationalQuadraticCouplingTransform,
    ReversePermutation,
)
from torch import Tensor, nn

from llamavoice.config import FlowConfig


class LatentFlow(nn.Module):
    """Invertible map between VAE latents z and LM-space latents u, with exact log|det ∂u/∂z|."""

    def __init__(self, latent_dim: int, cfg: FlowConfig):
        super().__init__()
        if latent_dim < 2:
            raise ValueError("the flow needs latent_dim >= 2 (coupling splits the features)")
        self.latent_dim = latent_dim

        def coupling_net(in_features: int, out_features: int) -> nn.Module:
            return ResidualNet(in_features, out_features, hidden_features=cfg.hidden_dim, num_blocks=cfg.num_blocks)

        layers: list[nn.Module] = []
        for i in range(cfg.num_layers):
            mask = (torch.arange(latent_dim) + i) % 2  # alternate which half is transformed
            layers.append(ActNorm(latent_dim))
            if cfg.coupling == "affine":
                layers.append(AffineCouplingTransform(mask, coupling_net))
            elif cfg.coupling == "rq":
                layers.append(
                    PiecewiseRationalQuadraticCouplingTransform(
                        mask, coupling_net, num_bins=cfg.num_bins, tails="linear",
                        tail_bound=cfg.tail_bound,
                    )
                )
            else:
                raise ValueError(f"unknown flow coupling '{cfg.coupling}'; use 'affine' or 'rq'")
            layers.append(ReversePermutation(latent_dim))
        self.transform = CompositeTransform(layers)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (..., D) → u (..., D) and log|det ∂u/∂z| (...) per frame, in fp32."""
        u, logdet = self.transform(z.reshape(-1, self.latent_dim).float())
        return u.reshape(z.shape), logdet.reshape(z.shape[:-1])

    def inverse(self, u: Tensor) -> Tensor:
        """u (..., D) → z (..., D)."""
        z, _ = self.transform.inverse(u.reshape(-1, self.latent_dim).float())
        return z.reshape(u.shape)

    @property
    def actnorm_initialized(self) -> bool:
        """True when every ActNorm layer holds its data init (or there is none to do)."""
        return all(bool(m.initialized) for m in self.modules() if isinstance(m, ActNorm))

    @torch.no_grad()
    def init_actnorm(self, z: Tensor) -> None:
        """Data-dependent init of the ActNorm layers from real latent frames z (N, D), padding
        excluded: each layer starts with zero mean and unit variance on its inputs. A no-op when
        the weights already hold an init (e.g. loaded from a checkpoint)."""
        if self.actnorm_initialized:
            return
        was_training = self.training
        self.train()  # nflows' ActNorm initializes itself on its first forward in training mode
        self(z)
        self.train(was_training)
