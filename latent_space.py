"""
The frozen VAE as the DiT sees it: tokens -> per-channel normalised latents and back.
"""
import torch

from training import load_model

class LatentSpace:
    """The frozen VAE as the DiT sees it: tokens -> per-channel normalised latents and back.
    A plain object, not an nn.Module, so it is never trained, saved with the DiT, or DDP-wrapped.
    The latents are the posterior means, normalised with the mean/std train_vae.py measured."""

    def __init__(self, vae, latent_mean, latent_std, vocab):
        device = next(vae.parameters()).device
        self.vae, self.vocab = vae.requires_grad_(False), vocab
        self.mean = torch.as_tensor(latent_mean, dtype=torch.float32, device=device)
        self.std = torch.as_tensor(latent_std, dtype=torch.float32, device=device).clamp(min=1e-6)
        self.latent_dim, self.block_size = vae.config.latent_dim, vae.config.block_size

    @classmethod
    def load(cls, vae_path):
        """The latent space of a finished train_vae.py run (vae.pt with its latent statistics), on
        the CPU: callers check it against their data and DiT, then move it with .to(device)."""
        vae, vocab, ckpt = load_model(vae_path, 'vae')
        if 'latent_mean' not in ckpt:
            raise SystemExit(f"{vae_path} has no latent statistics: it is not a finished train_vae.py run")
        return cls(vae, ckpt['latent_mean'], ckpt['latent_std'], vocab)

    def to(self, device):
        self.vae, self.mean, self.std = self.vae.to(device), self.mean.to(device), self.std.to(device)
        return self

    @torch.no_grad()
    def encode(self, idx, valid=None):
        """(B, T) ids -> (B, T, latent_dim) fp32 normalised latents."""
        mean, _, _ = self.vae.encode(idx, valid)
        return (mean.float() - self.mean) / self.std

    @torch.no_grad()
    def decode(self, z, valid=None):
        """(B, T, latent_dim) normalised latents -> (B, T) token ids (argmax of the decoder)."""
        z = z.to(self.mean.dtype) * self.std + self.mean
        return self.vae.decode(z.to(next(self.vae.parameters()).dtype), valid).argmax(-1)
