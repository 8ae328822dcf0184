"""Training: the training flags, the Trainer wiring, complete checkpoints and resumption, signals and the NaN
guard, and what encoder-decoder training does differently. Never imports inference."""
