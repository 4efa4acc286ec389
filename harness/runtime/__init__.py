"""Where the work runs: Ray clusters, data-parallel workers, pre-flight checks of the inputs, shard resources."""
