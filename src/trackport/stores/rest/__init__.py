"""MLflow tracking servers over REST (self-hosted and Databricks), with no mlflow package."""
