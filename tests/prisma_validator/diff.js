#!/usr/bin/env node
// Prisma's own `migrate diff --from-schema OLD --to-schema NEW --script`, offline: the schema engine's WASM build
// (@prisma/schema-engine-wasm of Prisma 7.3.0, installed as the npm alias schema-engine-wasm-7).
// Usage: node diff.js OLD_SCHEMA_FILE NEW_SCHEMA_FILE
// Prints one JSON line: {"ok": true, "version": "...", "script": "-- DropTable\nDROP TABLE ...;\n..."} or
// {"ok": false, "error": "..."}; exits 0 on a diff, 1 when the engine refused, 2 on a usage error, 3 when the
// engine is not installed.
//
// No database is used. The WASM engine only runs with a driver adapter (Prisma 7 passes @prisma/adapter-pg) and
// connects once when it starts, to ask the server's version (a single `SELECT EXISTS(... pg_namespace ...),
// version(), current_setting('server_version_num')` query). A datamodel-to-datamodel diff needs nothing else, so
// a stub connection answers that probe (PostgreSQL 16) and refuses every other query: if the engine ever asked
// the database anything more, the diff fails loudly instead of inventing an answer.
// The diff is Prisma 7's: a Prisma 6 schema's datasource `url`/`directUrl`/`shadowDatabaseUrl` lines (rejected by
// Prisma 7, meaningless to a datamodel diff) are left out first.
"use strict";
const fs = require("fs");
const path = require("path");
const { pathToFileURL } = require("url");

const STUB_VERSION = "PostgreSQL 16.0 (offline stub: no database)";

function out(obj, code) {
  process.stdout.write(JSON.stringify(obj) + "\n");
  process.exit(code);
}

function forPrisma7(text) {
  return text.replace(/(^|\n)([ \t]*datasource\s+\w+\s*\{)([\s\S]*?)(\n[ \t]*\})/g, (m, pre, head, body, tail) =>
    pre + head + body.replace(/\n[ \t]*(url|directUrl|shadowDatabaseUrl)\s*=[^\n]*/g, "") + tail);
}

async function main() {
  const args = process.argv.slice(2);
  if (args.length !== 2) {
    process.stderr.write("usage: node diff.js OLD_SCHEMA_FILE NEW_SCHEMA_FILE\n");
    process.exit(2);
  }
  let dir;
  try {
    dir = path.dirname(require.resolve("schema-engine-wasm-7"));
  } catch (err) {
    out({ ok: false, error: "schema engine for Prisma 7 not installed" }, 3);
  }
  const bg = await import(pathToFileURL(path.join(dir, "schema_engine_bg.js")).href);
  const bytes = fs.readFileSync(path.join(dir, "schema_engine_bg.wasm"));
  const { instance } = await WebAssembly.instantiate(bytes, { "./schema_engine_bg.js": bg });
  bg.__wbg_set_wasm(instance.exports);
  instance.exports.__wbindgen_start();
  const version = bg.version();

  const [oldText, newText] = args.map((f) => forPrisma7(fs.readFileSync(f, "utf8")));
  const providers = [...(oldText + newText).matchAll(/datasource\s+\w+\s*\{[^}]*\bprovider\s*=\s*"([^"]*)"/g)].map((m) => m[1]);
  if (providers.some((p) => p !== "postgresql" && p !== "postgres")) {
    out({ ok: false, version, error: `only PostgreSQL schemas are diffed here (datasource provider ${providers.join(", ")})` }, 1);
  }
  const queries = [];
  const refuse = () => ({ ok: false, error: { kind: "GenericJs", id: 0 } });
  const conn = {
    provider: "postgres",
    adapterName: "@prisma/adapter-pg",
    queryRaw: async (q) => {
      queries.push(q.sql);
      if (/pg_namespace/.test(q.sql) && /server_version_num/.test(q.sql) && queries.length === 1) {
        return { ok: true, value: { columnNames: ["exists", "version", "numeric_version"], columnTypes: [5, 7, 0],
                                    rows: [[true, STUB_VERSION, 160000]] } };
      }
      return refuse();
    },
    executeRaw: async (q) => { queries.push(q.sql); return refuse(); },
    executeScript: async (s) => { queries.push(s); return refuse(); },
    startTransaction: async () => { queries.push("BEGIN"); return refuse(); },
    getConnectionInfo: () => ({ ok: true, value: { schemaName: "public", supportsRelationJoins: true } }),
    dispose: async () => ({ ok: true, value: undefined }),
  };
  const adapter = {
    provider: "postgres",
    adapterName: "@prisma/adapter-pg",
    connect: async () => ({ ok: true, value: conn }),
    connectToShadowDb: async () => refuse(),
  };
  const files = (text) => [{ path: "schema.prisma", content: text }];
  try {
    const engine = await bg.SchemaEngine.new({ datamodels: [["schema.prisma", oldText]] }, () => {}, adapter);
    const res = await engine.diff({
      from: { tag: "schemaDatamodel", files: files(oldText) },
      to: { tag: "schemaDatamodel", files: files(newText) },
      shadowDatabaseUrl: null, script: true, exitCode: null,
      filters: { externalTables: [], externalEnums: [] },
    });
    if (queries.length > 1) {
      out({ ok: false, version, error: "the engine asked the database more than its version: " + queries.slice(1).join("; ").slice(0, 300) }, 1);
    }
    out({ ok: true, version, script: res.stdout || "" }, 0);
  } catch (err) {
    out({ ok: false, version, error: String(err && err.message ? err.message : err).slice(0, 2000) }, 1);
  }
}

main().catch((err) => out({ ok: false, error: String(err && err.stack ? err.stack : err).slice(0, 2000) }, 1));
