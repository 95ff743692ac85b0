"""Training and evaluation of the prompt generator, and cross-validated fine-tuning on a project's labels."""
