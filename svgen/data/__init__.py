"""Training data on the svgen side: synthetic sounding clips (shard readers arrive with data prep)."""
