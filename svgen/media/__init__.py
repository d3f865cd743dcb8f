"""Audio features, VAE encode/decode and the mp4 writer: the bridge between pixels/samples and latents."""
