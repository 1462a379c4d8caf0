"""Errors a user can act on: the CLI prints them as one line and exits non-zero, without a traceback."""


class TransferopsError(Exception):
    """Base of every error caused by input (params, data, checkpoints, services) rather than by a bug."""


class ConfigError(TransferopsError, ValueError):
    """A params file or override is invalid; the message names the key and what was expected."""


class DataError(TransferopsError):
    """A dataset cannot be read or fails validation; the message names the file."""


class CheckpointError(TransferopsError):
    """A checkpoint is missing, truncated or belongs to another config."""


class TrainingError(TransferopsError):
    """Training diverged (NaN/inf loss) or cannot continue."""


class TrackingError(TransferopsError):
    """The MLflow server or registry is unreachable or refused a request."""


class PipelinesApiError(TransferopsError):
    """The Kubeflow Pipelines API is unreachable or refused a request; the message names the host."""


class GateError(TransferopsError):
    """The registry refuses a candidate: it belongs to another task than the registered model name."""


class ExportError(TransferopsError):
    """A model cannot be exported (e.g. to ONNX); the message names the file and the failing step."""
