"""Training as in the poster: patch data, augmentation, the trainer, and the train command."""
