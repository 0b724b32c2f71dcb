"""files: a creation order finer than seconds

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 13:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('created_seq', sa.BigInteger(), nullable=False,
                                      server_default='0'))
    # Files from before keep their order: whole seconds, then (as before) their ids.
    op.execute("UPDATE files SET created_seq = created_at * 1000000000")
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.create_index('ix_files_org_created_seq', ['organization', 'created_seq'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index('ix_files_org_created_seq')
        batch_op.drop_column('created_seq')
