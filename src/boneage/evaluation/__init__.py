"""Evaluation: MAD (the poster's metric), RMSE and bias, overall, by sex and by age band; predictions; figures."""
