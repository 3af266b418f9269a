"""A plain SQLAlchemy 2 application, run against Eddy and against PostgreSQL: its output must
be the same on both.

It does what an ORM application does on its first day: creates its tables (SERIAL keys, a
unique email, server defaults, a foreign key with ON DELETE CASCADE, an index), adds rows
through the session (INSERT ... RETURNING), uses savepoints (one kept, one rolled back
after a unique violation), queries with LIMIT, updates, deletes with cascades, and then
reflects the schema with inspect().

Usage: sqlalchemy_app.py '<libpq connection string>'
"""

import sys

import psycopg
from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    String,
    create_engine,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

conninfo = sys.argv[1]
engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo))


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(100), server_default="anon")
    created = mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)
    posts: Mapped[list["Post"]] = relationship(
        back_populates="author", cascade="all, delete-orphan", passive_deletes=True
    )


class Post(Base):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    author: Mapped[User] = relationship(back_populates="posts")
    __table_args__ = (Index("ix_posts_title", "title"),)


def out(*items):
    print(*items, flush=True)


with engine.connect() as c:
    out("connected", c.execute(text("SELECT 1")).scalar())

Base.metadata.drop_all(engine)
Base.metadata.create_all(engine)

with Session(engine) as s:
    ada = User(email="ada@example.com")
    ada.posts.append(Post(title="first"))
    ada.posts.append(Post(title="second"))
    s.add(ada)
    s.commit()
    out("ada", ada.id, ada.name, ada.created is not None, [p.id for p in ada.posts])

    with s.begin_nested():
        s.add(User(email="bob@example.com", name="Bob"))
    try:
        with s.begin_nested():
            s.add(User(email="ada@example.com"))
    except IntegrityError as e:
        out("duplicate refused", e.orig.sqlstate, e.orig.diag.constraint_name)
    s.add(User(email="cy@example.com", name="Cy"))
    s.commit()

    out("users", [(u.id, u.email, u.name) for u in s.scalars(select(User).order_by(User.id))])
    bob = s.scalars(select(User).where(User.email == "bob@example.com").limit(1)).first()
    out("bob", bob.id, bob.name)
    bob.name = "Robert"
    bob.posts.append(Post(title="hello"))
    s.commit()
    out("renamed", s.scalar(select(User.name).where(User.id == bob.id)))

    s.delete(s.get(User, ada.id))
    s.commit()
    out("posts left", s.scalars(select(Post.title).order_by(Post.id)).all())
    out("count", s.scalar(select(func.count()).select_from(User)))

try:
    with engine.begin() as c:
        c.execute(text("INSERT INTO posts (user_id, title) VALUES (999, 'orphan')"))
except IntegrityError as e:
    out("orphan refused", e.orig.sqlstate, e.orig.diag.constraint_name)

insp = inspect(engine)
out("tables", sorted(insp.get_table_names()))
for table in ["users", "posts"]:
    for col in insp.get_columns(table):
        out(table, col["name"], col["type"], col["nullable"], col["default"], col["autoincrement"])
    out(table, "pk", insp.get_pk_constraint(table))
    out(table, "fk", insp.get_foreign_keys(table))
    out(table, "unique", insp.get_unique_constraints(table))
    out(table, "indexes", insp.get_indexes(table))
