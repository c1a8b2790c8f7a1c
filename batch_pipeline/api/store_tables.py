"""The store's tables as the newest migration leaves them, for building queries (migrations keep
their own copies: they describe the schema of their time)."""

from sqlalchemy import Column, Float, Integer, MetaData, Table, Text, UniqueConstraint

metadata = MetaData()


def _seq() -> Column:
    return Column("seq", Integer, primary_key=True, autoincrement=True)


files = Table("files", metadata, _seq(), Column("id", Text, nullable=False, unique=True),
              Column("path", Text, nullable=False), Column("body", Text, nullable=False),
              Column("purpose", Text), Column("expires_at", Float), sqlite_autoincrement=True)

batches = Table("batches", metadata, _seq(), Column("id", Text, nullable=False, unique=True),
                Column("dataset", Text, nullable=False), Column("status", Text, nullable=False),
                Column("input_file_id", Text, nullable=False), Column("body", Text, nullable=False),
                Column("output_file_id", Text), Column("error_file_id", Text), sqlite_autoincrement=True)

# output_expires_after of batches that asked for it (OpenAI's batch object does not show it).
batch_output_retention = Table("batch_output_retention", metadata, Column("batch_id", Text, primary_key=True),
                               Column("seconds", Integer, nullable=False))

# The webhook outbox: one row per (batch, event type), written with the transition it announces.
webhook_events = Table(
    "webhook_events", metadata, _seq(), Column("id", Text, nullable=False, unique=True),
    Column("batch_id", Text, nullable=False), Column("type", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"), Column("next_attempt_at", Float, nullable=False),
    Column("delivered_at", Float), Column("gave_up_at", Float), Column("last_error", Text),
    Column("last_attempt_at", Float), Column("claimed_until", Float), UniqueConstraint("batch_id", "type"),
    sqlite_autoincrement=True)

# In the order rows may be copied (no foreign keys, so any order works; this one reads naturally).
TABLES = (files, batches, batch_output_retention, webhook_events)
