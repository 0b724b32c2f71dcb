"""jobs: the base model's validation loss and the best checkpoint by full validation loss

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 18:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('base_valid_loss', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('best_checkpoint', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('best_checkpoint')
        batch_op.drop_column('base_valid_loss')
