"""gradiend: learn, measure and rewrite a feature neuron from a language model's gradients."""

__version__ = "0.1.0"
