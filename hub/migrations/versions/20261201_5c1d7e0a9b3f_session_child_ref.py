"""session child_ref: a pseudonymous reference to the child, for progress across sessions

Revision ID: 5c1d7e0a9b3f
Revises: cbbb60ac2e3c
Create Date: 2026-12-01 02:20:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "5c1d7e0a9b3f"
down_revision: str | Sequence[str] | None = "cbbb60ac2e3c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: adding it rewrites no row of an existing sessions table.
    op.add_column("sessions", sa.Column("child_ref", sa.String(length=64), nullable=True))
    op.create_check_constraint(
        op.f("ck_sessions_child_ref_length"), "sessions", "length(child_ref) BETWEEN 1 AND 64"
    )
    op.create_index(
        "ix_sessions_child_ref_created_at", "sessions", ["child_ref", "created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_child_ref_created_at", table_name="sessions")
    op.drop_constraint(op.f("ck_sessions_child_ref_length"), "sessions", type_="check")
    op.drop_column("sessions", "child_ref")
