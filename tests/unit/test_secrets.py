"""Credentials in URIs never reach logs: the masking applied to every log record, error and printed URI."""

import logging

import pytest

from transferops.secrets import SecretMaskingFilter, mask
from transferops.tracking.tracker import safe_uri


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("postgresql://user:password@host", "postgresql://user:***@host"),
        ("postgresql+psycopg://user:password@host:5432/db", "postgresql+psycopg://user:***@host:5432/db"),
        (
            "postgresql+psycopg://mlflow:p%40ss%3Aw0rd@db.internal:5432/mlflow",
            "postgresql+psycopg://mlflow:***@db.internal:5432/mlflow",
        ),
        ("postgresql://user:p@ss:w/rd@host/db", "postgresql://user:***@host/db"),  # raw '@' ':' '/' in it
        (
            "mysql+pymysql://root:pw@127.0.0.1:3306/mlflow?charset=utf8",
            "mysql+pymysql://root:***@127.0.0.1:3306/mlflow?charset=utf8",
        ),
        ("redis://:only-a-password@cache:6379/0", "redis://:***@cache:6379/0"),
        ("https://user:hunter2@mlflow.example.com/x", "https://user:***@mlflow.example.com/x"),
        (
            "postgresql+psycopg://127.0.0.1:5432/db?user=u&password=pw-9&sslmode=require",
            "postgresql+psycopg://127.0.0.1:5432/db?user=u&password=***&sslmode=require",
        ),
        (
            "host=db port=5432 user=mlflow password=pw-9 dbname=mlflow",
            "host=db port=5432 user=mlflow password=*** dbname=mlflow",
        ),
    ],
)
def test_url_passwords_are_masked(uri, masked):
    assert mask(uri) == masked
    assert mask(f"connecting to {uri} (attempt 2)") == f"connecting to {masked} (attempt 2)"


@pytest.mark.parametrize(
    "text",
    [
        "postgresql+psycopg://user@host:5432/db",
        "http://127.0.0.1:5000",
        "s3://mlflow-artifacts/store/1/models",
        "models:/transferops-digits@champion",
        "sqlite:////tmp/x/mlflow.db",
    ],
)
def test_text_without_a_password_is_left_alone(text):
    assert mask(text) == text


def test_log_records_and_printed_uris_are_masked():
    uri = "postgresql+psycopg://mlflow:s3cr3t-db-pw@db:5432/mlflow"
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "backend store %s unreachable", (uri,), None)
    SecretMaskingFilter().filter(record)
    assert "s3cr3t-db-pw" not in record.getMessage()
    assert record.getMessage() == "backend store postgresql+psycopg://mlflow:***@db:5432/mlflow unreachable"
    assert "s3cr3t-db-pw" not in safe_uri(uri)
