"""schema.prisma editing: only the voucher definitions go, byte-for-byte otherwise, and Prisma accepts the result.

The acceptance check runs Prisma's own validator (@prisma/prisma-schema-wasm, pinned in
tests/prisma_validator/package.json) under Node; install it with
``cd tests/prisma_validator && npm install`` (the Makefile's ``validator`` target does this).
"""

from __future__ import annotations

import difflib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from runbook_lib.prisma import config as pconfig
from runbook_lib.prisma import diff as pdiff
from runbook_lib.prisma import edit, history
from runbook_lib.prisma.migrate import checksum

ROOT = Path(__file__).resolve().parent.parent
#: the real application's shape (the demo) and the second fixture (tests/fixtures: model-named tables, a link column)
SCHEMA_DIRS = {"prisma": ROOT / "demo" / "prisma", "prisma_linked": ROOT / "tests" / "fixtures" / "prisma_linked"}
VALIDATOR = ROOT / "tests" / "prisma_validator"
MODELS, ENUMS = ["Voucher", "VoucherRedemption"], ["VoucherType", "VoucherStatus"]


def schema_engine_or_skip() -> None:
    """Skip unless Node and Prisma 7's schema engine (WASM, ``schema-engine-wasm-7``) are installed."""
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: Prisma's migrate diff cannot run")
    if not (VALIDATOR / "node_modules" / pdiff.PACKAGE).is_dir():
        pytest.skip("Prisma 7's schema engine is not installed: run `cd tests/prisma_validator && npm install` "
                    "(or `make validator`)")


def validator_or_skip(major: int = 6) -> Callable[[Path], tuple[bool, dict]]:
    """Prisma's own parser of ``major`` (6 or 7), or skip when Node or that validator is not installed."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: Prisma's schema validator cannot run")
    if not (VALIDATOR / "node_modules" / f"prisma-schema-wasm-{major}").is_dir():
        pytest.skip(f"Prisma {major}'s schema validator is not installed: run `cd tests/prisma_validator && "
                    "npm install` (or `make validator`)")

    def run(path: Path) -> tuple[bool, dict]:
        proc = subprocess.run([node, str(VALIDATOR / "validate.js"), "--major", str(major), str(path)],
                              capture_output=True, text=True, timeout=120, check=False)
        out = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {"error": proc.stderr}
        return proc.returncode == 0 and out.get("ok") is True, out

    return run


def only_removed_lines(old: str, new: str) -> list[str]:
    """The lines the edit removed; fails if any line was added or changed."""
    diff = list(difflib.ndiff(old.splitlines(True), new.splitlines(True)))
    assert not [d for d in diff if d.startswith("+ ")], "the edit added or changed lines"
    return [d[2:] for d in diff if d.startswith("- ")]


TRICKY = """\
// header comment { with a brace }
generator client {
  provider = "prisma-client-js"
}

datasource db {
  provider = "postgresql"
  url      = env("DATABASE_URL")
}

/// A user
model User {
  id                 String              @id @default(cuid())
  /// the redemptions (removed with the voucher models)
  voucherRedemptions VoucherRedemption[]
  name               String?             @default("model Voucher {")
}

model Order {
  id        String       @id
  voucherId String?
  voucher   Voucher?     @relation(fields: [voucherId], references: [id])
  kind      VoucherType? // typed with a removed enum
  total     Int

  @@map("orders")
}

/// Voucher codes
model Voucher {
  id          String              @id
  status      VoucherStatus       @default(ACTIVE)
  redemptions VoucherRedemption[]
  orders      Order[]

  @@map("vouchers")
}

enum VoucherStatus {
  ACTIVE
  DISABLED
}

model VoucherRedemption {
  id        String  @id
  voucherId String
  userId    String
  voucher   Voucher @relation(fields: [voucherId], references: [id])
  user      User    @relation(fields: [userId], references: [id])
}

enum VoucherType {
  TOKEN_GRANT
}

// trailing comment
"""


@pytest.mark.parametrize("demo", ["prisma", "prisma_linked"])
def test_demo_schema_edit_is_minimal(demo):
    old = (SCHEMA_DIRS[demo] / "schema.prisma").read_text()
    e = edit.remove_definitions(old, MODELS, ENUMS)
    removed = only_removed_lines(old, e.new_text)
    assert "  voucherRedemptions VoucherRedemption[]\n" in removed
    assert sorted(e.removed_blocks) == ["enum VoucherStatus", "enum VoucherType", "model Voucher",
                                        "model VoucherRedemption"]
    assert e.removed_fields == ["User.voucherRedemptions"]
    assert e.new_text.endswith("}\n") and "\n\n\n" not in e.new_text
    assert not e.not_found
    # every kept line is the same, in the same order
    assert [x for x in old.splitlines(True) if x not in removed or x.strip() == ""][:5] == old.splitlines(True)[:5]
    assert "-model Voucher {" in e.diff()


def test_tricky_schema_keeps_everything_else():
    e = edit.remove_definitions(TRICKY, MODELS, ENUMS)
    only_removed_lines(TRICKY, e.new_text)
    new = e.new_text
    assert "/// Voucher codes" not in new and "/// the redemptions" not in new
    assert 'name               String?             @default("model Voucher {")' in new  # a string, not a block
    assert "// header comment { with a brace }" in new and "// trailing comment" in new
    assert "  voucherId String?\n" in new  # the scalar stays; the relation field goes
    assert "voucher   Voucher?" not in new and "kind      VoucherType?" not in new
    assert sorted(e.removed_fields) == ["Order.kind", "Order.voucher", "User.voucherRedemptions"]
    again = edit.remove_definitions(new, MODELS, ENUMS)
    assert not again.changed and sorted(again.not_found) == sorted(MODELS + ENUMS)


def test_warns_when_a_block_attribute_names_a_removed_field():
    text = TRICKY.replace('  @@map("orders")', '  @@index([kind])\n  @@map("orders")')
    e = edit.remove_definitions(text, MODELS, ENUMS)
    assert any("'kind'" in w for w in e.warnings)


def test_crlf_file_stays_crlf():
    old = TRICKY.replace("\n", "\r\n")
    e = edit.remove_definitions(old, MODELS, ENUMS)
    assert e.new_text == edit.remove_definitions(TRICKY, MODELS, ENUMS).new_text.replace("\n", "\r\n")


@pytest.mark.parametrize(("source", "major"), [("prisma", 7), ("prisma_linked", 6), ("tricky", 6)])
def test_prisma_accepts_the_edited_schema(tmp_path, source, major):
    validate = validator_or_skip(major)
    old = (SCHEMA_DIRS[source] / "schema.prisma").read_text() if source != "tricky" else TRICKY
    before = tmp_path / "before.prisma"
    before.write_text(old)
    ok, out = validate(before)
    assert ok, out
    after = tmp_path / "schema.prisma"
    after.write_text(edit.remove_definitions(old, MODELS, ENUMS).new_text)
    ok, out = validate(after)
    assert ok, out
    assert not {m["name"] for m in out["models"]} & set(MODELS) and not set(out["enums"]) & set(ENUMS)
    assert {"User"} <= {m["name"] for m in out["models"]}


def test_validator_rejects_a_dangling_relation(tmp_path):
    validate = validator_or_skip()
    bad = tmp_path / "bad.prisma"
    bad.write_text(TRICKY.split("/// Voucher codes")[0])  # the voucher models gone, the fields to them left
    ok, out = validate(bad)
    assert not ok and "Voucher" in out["error"]


def test_history_files_and_checksums(tmp_path):
    folder = tmp_path / "migrations"
    name = history.next_migration_name(folder, "remove_vouchers")
    script = history.render_sql([("DropTable", 'DROP TABLE "VoucherRedemption"')], header=["note"])
    assert script == '-- note\n\n-- DropTable\nDROP TABLE "VoucherRedemption";\n'
    path = history.write_migration(folder, name, script)
    assert checksum(path.read_bytes()) == checksum(script)
    assert (folder / "migration_lock.toml").read_text().endswith('provider = "postgresql"\n')
    later = history.next_migration_name(folder, "x")
    assert later > name
    # Prisma's comparison: CRLF/LF variants and old unpadded checksums match
    assert history.prisma_checksum_matches(script.replace("\n", "\r\n"), checksum(script))
    assert not history.prisma_checksum_matches(script + "x", checksum(script))
    with pytest.raises(Exception, match="already exists"):
        history.write_migration(folder, name, script)


def test_both_validators_are_pinned_and_each_judges_its_major(tmp_path):
    """Both majors side by side (npm aliases): Prisma 6 rejects a datasource without url ("url is missing"),
    Prisma 7 rejects one with it (the URL moved to prisma.config.ts); each demo schema is its major's."""
    deps = json.loads((VALIDATOR / "package.json").read_text())["dependencies"]
    lock = json.loads((VALIDATOR / "package-lock.json").read_text())["packages"]
    for major, prefix in ((6, "6.19.0-"), (7, "7.3.0-")):
        spec = deps[f"prisma-schema-wasm-{major}"]
        assert spec.startswith("npm:@prisma/prisma-schema-wasm@" + prefix)
        assert lock[f"node_modules/prisma-schema-wasm-{major}"]["version"] == spec.split("@")[-1]
    assert pconfig.prisma_major(ROOT / "demo" / "prisma" / "schema.prisma")[0] == 7  # demo/package.json
    shutil.copy(SCHEMA_DIRS["prisma_linked"] / "schema.prisma", tmp_path / "schema.prisma")
    assert pconfig.prisma_major(tmp_path / "schema.prisma")[0] == 6  # no package.json: the datasource has url
    v6, v7 = validator_or_skip(6), validator_or_skip(7)
    real, linked = ROOT / "demo" / "prisma" / "schema.prisma", SCHEMA_DIRS["prisma_linked"] / "schema.prisma"
    ok, out = v6(real)
    assert not ok and "url" in out["error"] and "missing" in out["error"]
    assert v7(real)[0] and v6(linked)[0]
    ok, out = v7(linked)
    assert not ok and "url" in out["error"]
    # the library's check says so plainly, or says it was not checked
    assert pconfig.validate_text({"s.prisma": real.read_text()}, 7).ok is True
    assert pconfig.validate_text({"s.prisma": real.read_text()}, 6).ok is False


def test_validation_not_checked_without_node(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    v = pconfig.validate_text({"s.prisma": "model A { id Int @id }"}, 7)
    assert not v.checked and v.ok is None and "not checked: Node/validator not installed" in v.line()


def test_prisma_major_and_config_parsing(tmp_path):
    (tmp_path / "prisma").mkdir()
    schema = tmp_path / "prisma" / "schema.prisma"
    schema.write_text('datasource db {\n  provider = "postgresql"\n}\n')
    assert pconfig.prisma_major(schema)[0] == 7
    schema.write_text('datasource db {\n  provider = "postgresql"\n  url = env("DATABASE_URL")\n}\n')
    assert pconfig.prisma_major(schema)[0] == 6
    (tmp_path / "package.json").write_text('{"devDependencies": {"prisma": "^7.3.0"}}')
    assert pconfig.prisma_major(schema)[0] == 7
    assert pconfig.migrations_dir(schema) == (tmp_path / "prisma" / "migrations").resolve()
    (tmp_path / "prisma.config.ts").write_text(
        "/* schema: 'nope' */ export default { schema: 'prisma', migrations: { path: `prisma/mig` },\n"
        "  datasource: { url: 'postgresql://u@h/db' } }  // trailing\n")
    cfg = pconfig.read_config(tmp_path / "prisma.config.ts")
    assert cfg.schema == (tmp_path / "prisma").resolve() and cfg.has_datasource_url
    assert pconfig.migrations_dir(schema) == (tmp_path / "prisma" / "mig").resolve()
    assert pconfig.schema_files(tmp_path / "prisma") == [schema]
    (tmp_path / "prisma.config.ts").write_text("export default defineConfig({ schema: getSchema() })\n")
    cfg = pconfig.read_config(tmp_path / "prisma.config.ts")
    assert cfg.schema is None and cfg.notes and pconfig.migrations_dir(schema) == (tmp_path / "prisma" / "migrations"
                                                                                    ).resolve()


@pytest.mark.parametrize("demo", ["prisma", "prisma_linked"])
def test_prisma_migrate_diff_of_the_edit_offline(demo):
    """Prisma's own ``migrate diff --from-schema --to-schema --script`` (schema engine WASM, no database) of the
    demo edit: its foreign-key drops fold into the table drops, and the four drops match a Prisma-style
    migration in any order; a missing statement is reported as a difference."""
    schema_engine_or_skip()
    old = (SCHEMA_DIRS[demo] / "schema.prisma").read_text()
    new = edit.remove_definitions(old, MODELS, ENUMS).new_text
    t = {"prisma": ("voucher_redemptions", "vouchers"), "prisma_linked": ("VoucherRedemption", "Voucher")}[demo]
    recorded = history.render_sql([("DropTable", f'DROP TABLE "{t[0]}"'), ("DropTable", f'DROP TABLE "{t[1]}"'),
                                   ("DropEnum", 'DROP TYPE "VoucherStatus"'), ("DropEnum", 'DROP TYPE "VoucherType"'),
                                   ("DropView", 'DROP VIEW "voucher_stats"')], header=["a note"])
    d = pdiff.check_migration(old, new, recorded)
    assert d.checked and d.agrees, d
    assert d.line().startswith("agrees with the recorded migration.sql (4 statements"), d.line()
    assert sum(s.startswith("ALTER TABLE") and "DROP CONSTRAINT" in s for s in d.prisma) == 2, d.prisma
    assert d.not_compared == ['DROP VIEW voucher_stats']
    worse = pdiff.check_migration(old, new, recorded.replace('DROP TYPE "VoucherType";', ""))
    assert worse.checked and not worse.agrees and worse.only_in_prisma == ['DROP TYPE "VoucherType"'], worse
    assert "differs" in worse.line()


def test_migrate_diff_not_checked_without_node(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    d = pdiff.check_migration("model A { id Int @id }", "", "DROP TABLE a;")
    assert not d.checked and d.agrees is None and d.line().startswith("not checked: Node/schema engine not installed")
