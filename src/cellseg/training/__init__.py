"""Training one fold: the resolved train config, the tile loader, the loop, its history."""
