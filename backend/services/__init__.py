"""The service layer's parts (no web code): model runtime, examples, versions, jobs and their handlers,
predictor, video."""
