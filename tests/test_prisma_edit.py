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

from runbook_lib.prisma import edit, history
from runbook_lib.prisma.migrate import checksum

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = ROOT / "tests" / "prisma_validator"
MODELS, ENUMS = ["Voucher", "VoucherRedemption"], ["VoucherType", "VoucherStatus"]


def validator_or_skip() -> Callable[[Path], tuple[bool, dict]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: Prisma's schema validator cannot run")
    if not (VALIDATOR / "node_modules" / "@prisma" / "prisma-schema-wasm").is_dir():
        pytest.skip("Prisma's schema validator is not installed: run `cd tests/prisma_validator && npm install` "
                    "(or `make validator`)")

    def run(path: Path) -> tuple[bool, dict]:
        proc = subprocess.run([node, str(VALIDATOR / "validate.js"), str(path)], capture_output=True, text=True,
                              timeout=120, check=False)
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


def test_demo_schema_edit_is_minimal():
    old = (ROOT / "demo" / "prisma" / "schema.prisma").read_text()
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


@pytest.mark.parametrize("source", ["demo", "tricky"])
def test_prisma_accepts_the_edited_schema(tmp_path, source):
    validate = validator_or_skip()
    old = (ROOT / "demo" / "prisma" / "schema.prisma").read_text() if source == "demo" else TRICKY
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
    script = history.render_sql([("DropTable", 'DROP TABLE public."VoucherRedemption"')], header=["note"])
    assert script == '-- note\n\n-- DropTable\nDROP TABLE public."VoucherRedemption";\n'
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


def test_validator_is_the_schemas_prisma_major():
    """The demo schemas are Prisma 6 schemas (the datasource `url` lives in schema.prisma, which Prisma 7 moved to
    prisma.config.ts): the pinned validator must be Prisma 6's, or it would judge them by another major's rules."""
    pinned = json.loads((VALIDATOR / "package.json").read_text())["dependencies"]["@prisma/prisma-schema-wasm"]
    locked = json.loads((VALIDATOR / "package-lock.json").read_text())["packages"][
        "node_modules/@prisma/prisma-schema-wasm"]["version"]
    assert pinned == locked and pinned.split(".")[0] == "6"
    for schema in ("prisma", "prisma_mapped"):
        assert 'url      = env("DATABASE_URL")' in (ROOT / "demo" / schema / "schema.prisma").read_text()
