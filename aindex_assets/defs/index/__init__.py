"""The index: training descriptors, versioned training, distractors, shards, the served index."""
