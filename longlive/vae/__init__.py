"""longlive.vae: our Wan2.2 / Wan2.1 causal video VAEs with streaming decode (spec 01, "Wan2.2 VAE"), and the release's
pruned Wan2.2 decoder MG-LightVAE (`lightvae`)."""

from .causal import CausalCache, CausalConv3d
from .config import VAE_PRESETS, VAEConfig, get_vae_config
from .lightvae import lightvae_config, lightvae_for, load_lightvae
from .loading import apply_stats, build_vae, check_state_dict, load_vae, read_state_dict
from .wan_vae import StreamingDecoder, WanVAE

__all__ = [
    "VAE_PRESETS",
    "CausalCache",
    "CausalConv3d",
    "StreamingDecoder",
    "VAEConfig",
    "WanVAE",
    "apply_stats",
    "build_vae",
    "check_state_dict",
    "get_vae_config",
    "lightvae_config",
    "lightvae_for",
    "load_lightvae",
    "load_vae",
    "read_state_dict",
]
