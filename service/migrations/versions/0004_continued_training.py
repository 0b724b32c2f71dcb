"""continued training: a job's base model and the adapter it starts from

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 23:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('base_model', sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column('init_adapter_key', sa.String(length=256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('init_adapter_key')
        batch_op.drop_column('base_model')
