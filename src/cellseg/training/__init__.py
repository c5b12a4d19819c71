"""Training one fold: the lr rule, the tile loader, the loop, its history."""
