"""file idempotency keys: an upload's Idempotency-Key and the file it created

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('file_idempotency_keys',
    sa.Column('organization', sa.String(length=128), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('file_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('organization', 'key')
    )
    with op.batch_alter_table('file_idempotency_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_file_idempotency_keys_created_at'), ['created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('file_idempotency_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_file_idempotency_keys_created_at'))
    op.drop_table('file_idempotency_keys')
