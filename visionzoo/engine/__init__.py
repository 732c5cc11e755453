"""Training and evaluation: the loop, checkpoints, metrics, logging and DistributedDataParallel set-up."""
