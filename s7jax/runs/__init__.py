"""What a run leaves on disk: its folder's files, lock, checkpoints, final
weights, TensorBoard events, epoch record, the committed results and plots."""
