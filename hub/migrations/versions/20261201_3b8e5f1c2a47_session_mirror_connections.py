"""session mirror_connections: the count of a session's mirror connections

Revision ID: 3b8e5f1c2a47
Revises: 7d2e4c9a1f60
Create Date: 2026-12-01 10:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "3b8e5f1c2a47"
down_revision: str | Sequence[str] | None = "7d2e4c9a1f60"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing sessions keep NULL (not counted: their report says so); new ones start at 0.
    # Adding a nullable column and then a default rewrites no row of an existing table.
    op.add_column("sessions", sa.Column("mirror_connections", sa.Integer(), nullable=True))
    op.alter_column("sessions", "mirror_connections", server_default=sa.text("0"))


def downgrade() -> None:
    op.drop_column("sessions", "mirror_connections")
