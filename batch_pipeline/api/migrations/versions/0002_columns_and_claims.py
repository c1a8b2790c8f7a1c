"""What queries filter on becomes a column of its own (both databases index it; JSON functions differ),
and webhook events get a claim, so that one API replica at a time delivers each.

Revision ID: 0002
Revises: 0001
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_FILE_FIELDS = ("purpose", "expires_at")
_BATCH_FIELDS = ("output_file_id", "error_file_id")


def _backfill(table: str, fields: tuple[str, ...]) -> None:
    """From each record's JSON body, in Python: the same on SQLite and PostgreSQL."""
    connection = op.get_bind()
    rows = connection.execute(sa.text(f"SELECT id, body FROM {table}")).fetchall()
    for record_id, body in rows:
        values = json.loads(body)
        connection.execute(sa.text(f"UPDATE {table} SET {', '.join(f'{f} = :{f}' for f in fields)} WHERE id = :id"),
                           {"id": record_id, **{field: values.get(field) for field in fields}})


def upgrade() -> None:
    op.add_column("files", sa.Column("purpose", sa.Text))
    op.add_column("files", sa.Column("expires_at", sa.Float))
    _backfill("files", _FILE_FIELDS)
    op.create_index("files_by_expiry", "files", ["expires_at"])
    op.add_column("batches", sa.Column("output_file_id", sa.Text))
    op.add_column("batches", sa.Column("error_file_id", sa.Text))
    _backfill("batches", _BATCH_FIELDS)
    op.create_index("batches_by_input_file", "batches", ["input_file_id"])
    # Until when the replica that claimed the event may deliver it; past that any replica may.
    op.add_column("webhook_events", sa.Column("claimed_until", sa.Float))
