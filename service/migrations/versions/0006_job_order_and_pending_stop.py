"""jobs: a creation order finer than seconds, and a run stop still owed to Ray

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 12:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('created_seq', sa.BigInteger(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('run_stop_pending', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    # Jobs from before keep their order: whole seconds, then (as before) their ids.
    op.execute("UPDATE jobs SET created_seq = created_at * 1000000000")
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_org_created_seq', ['organization', 'created_seq'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_org_created_seq')
        batch_op.drop_column('run_stop_pending')
        batch_op.drop_column('created_seq')
