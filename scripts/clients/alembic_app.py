"""Alembic migrations with ALTER TABLE, run against Eddy and against PostgreSQL: the output
must be the same on both.

Writes an Alembic environment with four revisions, as `alembic revision` would make them,
then upgrades to head (twice: the second is a no-op), prints the reflected schema and the
recorded version, downgrades one step and back, and finally downgrades to base.

Usage: alembic_app.py '<libpq connection string>'
"""

import os
import sys
import tempfile
import textwrap

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect, text

conninfo = sys.argv[1]
engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo))

ENV = """
from alembic import context

connectable = context.config.attributes["connection"]
context.configure(connection=connectable, target_metadata=None, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
"""

REVISIONS = [
    (
        "0001",
        None,
        """
        op.create_table(
            "account",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(50), nullable=False),
            sa.Column("description", sa.Unicode(200)),
        )
        op.create_table(
            "invoice",
            sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
            sa.Column("account_id", sa.Integer, sa.ForeignKey("account.id"), nullable=False),
            sa.Column("amount", sa.Numeric(10, 2), nullable=False, server_default="0"),
        )
        """,
        """
        op.drop_table("invoice")
        op.drop_table("account")
        """,
    ),
    (
        "0002",
        "0001",
        """
        op.add_column("account", sa.Column("email", sa.String(120), nullable=True))
        op.add_column(
            "account",
            sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        )
        op.create_index("ix_account_email", "account", ["email"], unique=True)
        op.execute("INSERT INTO account (name, email) VALUES ('acme', 'ops@acme.example')")
        """,
        """
        op.drop_index("ix_account_email", table_name="account")
        op.drop_column("account", "active")
        op.drop_column("account", "email")
        """,
    ),
    (
        "0003",
        "0002",
        """
        op.alter_column("account", "name", new_column_name="title")
        op.alter_column("account", "description", type_=sa.Text, existing_type=sa.Unicode(200))
        op.alter_column("account", "email", nullable=False, existing_type=sa.String(120))
        op.create_check_constraint("amount_not_negative", "invoice", "amount >= 0")
        """,
        """
        op.drop_constraint("amount_not_negative", "invoice", type_="check")
        op.alter_column("account", "email", nullable=True, existing_type=sa.String(120))
        op.alter_column("account", "description", type_=sa.Unicode(200), existing_type=sa.Text)
        op.alter_column("account", "title", new_column_name="name")
        """,
    ),
    (
        "0004",
        "0003",
        """
        op.rename_table("invoice", "bill")
        op.create_unique_constraint("uq_account_title", "account", ["title"])
        op.alter_column("account", "active", server_default=None, existing_type=sa.Boolean)
        """,
        """
        op.alter_column("account", "active", server_default=sa.true(), existing_type=sa.Boolean)
        op.drop_constraint("uq_account_title", "account", type_="unique")
        op.rename_table("bill", "invoice")
        """,
    ),
]


def write_environment(root):
    versions = os.path.join(root, "versions")
    os.makedirs(versions)
    with open(os.path.join(root, "env.py"), "w") as f:
        f.write(ENV)
    with open(os.path.join(root, "script.py.mako"), "w") as f:
        f.write("")
    for rev, down, upgrade, downgrade in REVISIONS:
        body = f"""
import sqlalchemy as sa
from alembic import op

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
{textwrap.indent(textwrap.dedent(upgrade), "    ")}

def downgrade():
{textwrap.indent(textwrap.dedent(downgrade), "    ")}
"""
        with open(os.path.join(versions, f"{rev}.py"), "w") as f:
            f.write(body)


def out(*items):
    print(*items, flush=True)


def schema(connection, label):
    insp = inspect(connection)
    tables = sorted(t for t in insp.get_table_names() if t != "alembic_version")
    out(label, "tables", tables)
    for t in tables:
        for c in insp.get_columns(t):
            out(label, t, c["name"], c["type"], c["nullable"], c["default"])
        out(label, t, "pk", insp.get_pk_constraint(t)["constrained_columns"])
        out(label, t, "fk", [(f["name"], f["referred_table"]) for f in insp.get_foreign_keys(t)])
        out(label, t, "unique", sorted(u["name"] for u in insp.get_unique_constraints(t)))
        out(label, t, "checks", sorted(c["name"] for c in insp.get_check_constraints(t)))
        out(label, t, "indexes", sorted((i["name"], i["unique"]) for i in insp.get_indexes(t)))
    version = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    out(label, "version", version)


with tempfile.TemporaryDirectory() as root:
    write_environment(root)
    config = Config()
    config.set_main_option("script_location", root)
    with engine.begin() as c:
        c.execute(text("DROP TABLE IF EXISTS alembic_version"))
        c.execute(text("DROP TABLE IF EXISTS bill"))
        c.execute(text("DROP TABLE IF EXISTS invoice"))
        c.execute(text("DROP TABLE IF EXISTS account"))

    def run(step, *args):
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            step(config, *args)
        with engine.connect() as connection:
            schema(connection, f"{step.__name__} {' '.join(args)}")

    run(command.upgrade, "head")
    run(command.upgrade, "head")
    with engine.connect() as c:
        out("rows", c.execute(text("SELECT title, email, active FROM account")).all())
    run(command.downgrade, "-1")
    run(command.upgrade, "head")
    run(command.downgrade, "base")
