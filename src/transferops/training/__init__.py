"""Training: the shared loop, checkpoints and seeding."""
