"""Every read and write of artifacts on disk: HDF5 shards, manifests, locks, checkpoints."""
