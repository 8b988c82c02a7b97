"""World-model networks as plain PyTorch modules, each with a plain-data config.

V-M-C (Ha & Schmidhuber 2018): `ConvVAE` (V), `MDNRNN` (M), `Controller` (C).
Importing this package imports torch and nothing heavier.
"""

from worldmodel.models.config import ConfigMixin
from worldmodel.models.controller import Controller, ControllerConfig
from worldmodel.models.images import to_model_input, to_uint8_images
from worldmodel.models.mdnrnn import MDNRNN, MDNOutput, MDNRNNConfig, gmm_nll
from worldmodel.models.vae import ConvVAE, VAEConfig

__all__ = [
    "ConfigMixin",
    "Controller",
    "ControllerConfig",
    "ConvVAE",
    "MDNOutput",
    "MDNRNN",
    "MDNRNNConfig",
    "VAEConfig",
    "gmm_nll",
    "to_model_input",
    "to_uint8_images",
]
