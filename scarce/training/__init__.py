"""Training: recipes, schedules, the loop, losses, regularisers, weight selection, lr-find."""
