"""The store as it was before it had migrations: files, batches, output retention, the webhook outbox.

`if_not_exists` everywhere, so a SQLite store written by an earlier version (same tables, no version
table) is adopted as it is.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _seq() -> sa.Column:
    return sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True)


def upgrade() -> None:
    op.create_table("files", _seq(), sa.Column("id", sa.Text, nullable=False, unique=True),
                    sa.Column("path", sa.Text, nullable=False), sa.Column("body", sa.Text, nullable=False),
                    if_not_exists=True, sqlite_autoincrement=True)
    op.create_table("batches", _seq(), sa.Column("id", sa.Text, nullable=False, unique=True),
                    sa.Column("dataset", sa.Text, nullable=False), sa.Column("status", sa.Text, nullable=False),
                    sa.Column("input_file_id", sa.Text, nullable=False), sa.Column("body", sa.Text, nullable=False),
                    if_not_exists=True, sqlite_autoincrement=True)
    op.create_index("batches_by_status", "batches", ["status"], if_not_exists=True)
    op.create_index("batches_by_dataset", "batches", ["dataset"], if_not_exists=True)
    op.create_table("batch_output_retention", sa.Column("batch_id", sa.Text, primary_key=True),
                    sa.Column("seconds", sa.Integer, nullable=False), if_not_exists=True)
    op.create_table("webhook_events", _seq(), sa.Column("id", sa.Text, nullable=False, unique=True),
                    sa.Column("batch_id", sa.Text, nullable=False), sa.Column("type", sa.Text, nullable=False),
                    sa.Column("body", sa.Text, nullable=False),
                    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
                    sa.Column("next_attempt_at", sa.Float, nullable=False), sa.Column("delivered_at", sa.Float),
                    sa.Column("gave_up_at", sa.Float), sa.Column("last_error", sa.Text),
                    sa.Column("last_attempt_at", sa.Float), sa.UniqueConstraint("batch_id", "type"),
                    if_not_exists=True, sqlite_autoincrement=True)
    op.create_index("webhook_events_due", "webhook_events", ["delivered_at", "gave_up_at", "next_attempt_at"],
                    if_not_exists=True)
