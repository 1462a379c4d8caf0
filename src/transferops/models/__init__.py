"""Models: :func:`create_model` and the :class:`TransferNet` wrapper every transfer method works on."""

from transferops.models.factory import TransferNet, create_model, load_weights, model_from_config

__all__ = ["TransferNet", "create_model", "load_weights", "model_from_config"]
