"""What a run reports: the leaderboard, the static site, comparisons of cells, exports and the cost plan."""
