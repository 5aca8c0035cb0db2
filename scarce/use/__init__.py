"""Using a trained model: predict, external evaluation, export, explanations."""
