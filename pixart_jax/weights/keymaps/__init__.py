"""Key maps (data tables of weights.mapping.Rule) between our parameters and published checkpoint layouts."""
