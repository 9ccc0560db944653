"""The only code that talks to a service (Label Studio, MLflow): idempotent calls, retried here and nowhere else."""
