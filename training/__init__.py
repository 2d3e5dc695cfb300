"""Training, data preparation and synthetic data for CAV-MAE Studio."""
