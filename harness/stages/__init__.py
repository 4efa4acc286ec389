"""The pipeline's stages, each cached and resumable: prepare, fine-tune, distill, evaluate, diversity,
cross-architecture and search."""
