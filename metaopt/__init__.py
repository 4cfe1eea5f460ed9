"""metaopt."""
