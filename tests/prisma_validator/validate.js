#!/usr/bin/env node
// Validate a schema.prisma with Prisma's own schema engine (the WASM build used by Prisma's tooling).
// Usage: node validate.js path/to/schema.prisma
// Prints one JSON line: {"ok": true, "models": [...], "enums": [...]} or {"ok": false, "error": "..."}
// and exits 0 when the schema is valid, 1 when it is not, 2 on a usage error.
"use strict";
const fs = require("fs");

const path = process.argv[2];
if (!path) {
  process.stderr.write("usage: node validate.js SCHEMA_FILE\n");
  process.exit(2);
}
const wasm = require("@prisma/prisma-schema-wasm");
const params = JSON.stringify({ prismaSchema: [[path, fs.readFileSync(path, "utf8")]], noColor: true });
try {
  wasm.validate(params);
  const dmmf = JSON.parse(wasm.get_dmmf(params));
  const dm = dmmf.datamodel;
  process.stdout.write(JSON.stringify({
    ok: true,
    models: dm.models.map((m) => ({ name: m.name, fields: m.fields.map((f) => f.name) })),
    enums: dm.enums.map((e) => e.name),
  }) + "\n");
} catch (err) {
  process.stdout.write(JSON.stringify({ ok: false, error: String(err && err.message ? err.message : err) }) + "\n");
  process.exit(1);
}
