"""Prisma's side of the database: schema.prisma parsing and editing, migrations and their history."""

from .schema import PrismaSchema, parse_schema, parse_schema_file

__all__ = ["PrismaSchema", "parse_schema", "parse_schema_file"]
