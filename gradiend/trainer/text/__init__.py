"""Text-prediction trainers."""
