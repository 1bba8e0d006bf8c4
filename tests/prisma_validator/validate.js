#!/usr/bin/env node
// Validate a Prisma schema with Prisma's own schema parser (the WASM build used by Prisma's tooling), offline.
// Usage: node validate.js [--major 6|7] SCHEMA_FILE_OR_FOLDER [MORE_FILES...]
//   --major picks the validator of that Prisma major (installed side by side as npm aliases
//   prisma-schema-wasm-6 / prisma-schema-wasm-7); default 6. A folder means every .prisma file in it
//   (Prisma's multi-file schema, `prismaSchemaFolder`).
// Prints one JSON line: {"ok": true, "major": 7, "version": "...", "models": [...], "enums": [...]} or
// {"ok": false, "major": 7, "error": "..."}; exits 0 when the schema is valid, 1 when it is not, 2 on a usage
// error (3 when the validator of that major is not installed).
"use strict";
const fs = require("fs");
const path = require("path");

const args = process.argv.slice(2);
let major = "6";
if (args[0] === "--major") {
  major = String(args[1] || "");
  args.splice(0, 2);
}
if (!args.length || !["6", "7"].includes(major)) {
  process.stderr.write("usage: node validate.js [--major 6|7] SCHEMA_FILE_OR_FOLDER [MORE_FILES...]\n");
  process.exit(2);
}
let wasm;
let version = null;
try {
  wasm = require(`prisma-schema-wasm-${major}`);
  version = require(`prisma-schema-wasm-${major}/package.json`).version;
} catch (err) {
  process.stdout.write(JSON.stringify({ ok: false, major: Number(major), error: `validator for Prisma ${major} not installed` }) + "\n");
  process.exit(3);
}

function collect(p, out) {
  const st = fs.statSync(p);
  if (st.isDirectory()) {
    for (const name of fs.readdirSync(p).sort()) collect(path.join(p, name), out);
  } else if (st.isFile() && (p.endsWith(".prisma") || out.length === 0)) {
    out.push([p, fs.readFileSync(p, "utf8")]);
  }
  return out;
}

const files = [];
for (const a of args) collect(a, files);
const params = JSON.stringify({ prismaSchema: files, noColor: true });
try {
  wasm.validate(params);
  const dmmf = JSON.parse(wasm.get_dmmf(params));
  const dm = dmmf.datamodel;
  process.stdout.write(JSON.stringify({
    ok: true,
    major: Number(major),
    version,
    files: files.map((f) => f[0]),
    models: dm.models.map((m) => ({ name: m.name, fields: m.fields.map((f) => f.name) })),
    enums: dm.enums.map((e) => e.name),
  }) + "\n");
} catch (err) {
  process.stdout.write(JSON.stringify({ ok: false, major: Number(major), version, error: String(err && err.message ? err.message : err) }) + "\n");
  process.exit(1);
}
