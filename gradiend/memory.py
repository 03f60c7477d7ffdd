"""How much memory a GRADIEND training run holds beyond the base model (an estimate, in bytes)."""

from __future__ import annotations


def memory_estimate(n_inputs: int, latent_dim: int, bias_decoder: bool, n_gradient_kinds: int,
                    gradiend_batch_size: int, bytes_per_value: int = 4) -> dict[str, int]:
    """Bytes a training run holds beyond the base model: GRADIEND weights, AdamW state, gradient buffers."""
    weights = (2 * n_inputs * latent_dim + latent_dim + (n_inputs if bias_decoder else 0)) * bytes_per_value
    optimizer = 2 * weights  # exp_avg + exp_avg_sq
    buffers = n_gradient_kinds * gradiend_batch_size * n_inputs * 4
    return {"gradiend_weights": weights, "optimizer_state": optimizer, "gradient_buffers": buffers,
            "total": weights + optimizer + buffers}
