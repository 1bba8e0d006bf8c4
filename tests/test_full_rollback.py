"""Full rollback against real PostgreSQL: catalog discovery, one-transaction DDL, Prisma schema and history.

Every test runs on both fixtures: ``real`` (the real application's shape: ``demo/prisma`` with Prisma 7's
``prisma.config.ts``, ``@@map``-ped snake_case tables, the seeded incident) and ``linked`` (``tests/fixtures/prisma_linked``:
model-named tables, a Prisma 6 schema with the datasource ``url``).
"""

from __future__ import annotations

import difflib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import schema_snapshot, table_checksums
from test_partial_rollback import notebook_text, seed_small
from test_prisma_edit import schema_engine_or_skip, validator_or_skip

from runbook_lib import catalog
from runbook_lib.errors import ParameterError, PolicyAbort
from runbook_lib.faults import InjectedFault
from runbook_lib.prisma import config as pconfig
from runbook_lib.prisma import history
from runbook_lib.procedures import full_rollback
from runbook_lib.run import Run
from runbook_lib.runner import run_procedure

NO_BACKUP = "test database cloned from a template: no backup needed"

ROOT = Path(__file__).resolve().parent.parent
MODELS, ENUMS = ["Voucher", "VoucherRedemption"], ["VoucherType", "VoucherStatus"]


@dataclass
class App:
    kind: str
    url: str
    root: Path  # the app's folder (schema, migrations, and for "real" prisma.config.ts + package.json)
    schema: Path
    migrations: Path
    tables: dict[str, str]  # model -> table
    major: int

    def t(self, model: str) -> str:
        """The table as pg_identify_object names it (public.vouchers, public."Voucher")."""
        name = self.tables[model]
        return f"public.{name}" if name == name.lower() else f'public."{name}"'

    def q(self, model: str) -> str:
        return f'"{self.tables[model]}"'


REAL_TABLES = {"User": "users", "Voucher": "vouchers", "VoucherRedemption": "voucher_redemptions",
               "TokenTransaction": "token_transactions", "UserTokenBalance": "user_token_balances"}


@pytest.fixture(params=["real", "linked"])
def app(request, tmp_path: Path, engine_for, target_env) -> App:
    """A copy of the app's Prisma files (the procedure edits them) and its database with an incident."""
    root = tmp_path / "app"
    if request.param == "real":
        url = request.getfixturevalue("incident_db")
        root.mkdir()
        shutil.copytree(ROOT / "demo" / "prisma", root / "prisma")
        for f in ("prisma.config.ts", "package.json"):
            shutil.copy(ROOT / "demo" / f, root / f)
        tables, major = REAL_TABLES, 7
    else:
        url = request.getfixturevalue("linked_schema_db")
        seed_small(engine_for(url))
        shutil.copytree(ROOT / "tests" / "fixtures" / "prisma_linked", root / "prisma")
        tables, major = {m: m for m in REAL_TABLES}, 6
    target_env(url)
    return App(request.param, url, root, root / "prisma" / "schema.prisma", root / "prisma" / "migrations", tables,
               major)


def fingerprint(eng: sa.engine.Engine) -> tuple[list[tuple], dict[str, str]]:
    with eng.connect() as c:
        return schema_snapshot(c, "public"), table_checksums(c, "public")


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def params_for(app: App, **more):
    return {"ledger_policy": "keep", "prisma_schema": str(app.schema), **more}


def review_then_execute(params):
    plan = Run("full-rollback", params).review()
    run = Run("full-rollback", {**params, "mode": "execute", "backup_override_reason": NO_BACKUP, "approved_plan": plan.plan_id})
    result = run.execute()
    return plan, result, run


def test_full_rollback_removes_everything_and_prisma_agrees(app, engine_for):
    eng = engine_for(app.url)
    _, sums_before = fingerprint(eng)
    schema_before = app.schema.read_text()
    plan, result, run = review_then_execute(params_for(app))
    assert result is not None and result.changed
    assert plan.summary[f"rows in {app.t('VoucherRedemption')}"] > 0
    order = [u.label for u in plan.details["discovery"].order]
    assert order.index(f"table {app.t('VoucherRedemption')}") < order.index(f"table {app.t('Voucher')}")
    assert order.index(f"table {app.t('Voucher')}") < order.index('type public."VoucherStatus"')
    assert order.index(f"table {app.t('Voucher')}") < order.index('type public."VoucherType"')
    assert plan.details["migrations_folder"] == str(app.migrations.resolve())
    written = full_rollback.write_prisma_files(run)
    with eng.connect() as c:
        seeds, _ = catalog.find_seeds(c, "public", [app.tables[m] for m in MODELS], ENUMS)
        assert seeds == {}
        assert c.execute(sa.text("select count(*) from pg_class where relname ilike '%voucher%'")).scalar() == 0
        assert c.execute(sa.text("select count(*) from pg_type where typname ilike '%voucher%'")).scalar() == 0
        entries = history.compare(c, "public", app.migrations)
        assert history.agrees(entries), entries
        row = c.execute(sa.text('select checksum, finished_at, applied_steps_count from "_prisma_migrations" '
                                "where migration_name = :n"), {"n": result.counts["migration_name"]}).one()
    _, sums_after = fingerprint(eng)
    for m in ("User", "TokenTransaction", "UserTokenBalance"):  # untouched with ledger_policy=keep
        assert sums_after[app.t(m).replace('"', '"')] == sums_before[app.t(m)]
    mfile = Path(written["migration_file"])
    assert mfile.parent.parent == app.migrations.resolve()
    assert row[0] == history.checksum(mfile.read_bytes()) and row[1] is not None and row[2] == 1
    sql = mfile.read_text()
    # schema-relative and quoted, as Prisma writes its migrations (Prisma sets the search_path from ?schema=)
    assert f"DROP TABLE {app.q('VoucherRedemption')};" in sql and 'DROP TYPE "VoucherType";' in sql
    assert "public." not in sql
    assert "sourceId names vouchers or redemptions dropped here" in sql
    schema_after = app.schema.read_text()
    assert "model Voucher " not in schema_after and "VoucherRedemption" not in schema_after
    ops = [line[0] for line in difflib.ndiff(schema_before.splitlines(True), schema_after.splitlines(True))
           if line[0] in "+-"]
    assert set(ops) == {"-"}
    assert run.verify().passed
    validator_or_skip()
    v = plan.details["schema_validation"]
    assert v is not None and v.checked and v.ok and v.major == app.major, v
    assert plan.summary["Prisma's parser on the edited schema"].startswith(f"Prisma {app.major} parser")
    after = pconfig.validate_text({"schema.prisma": schema_after}, app.major)
    assert after.ok and not set(after.enums) & set(ENUMS), after
    # Prisma's own `migrate diff` of the edit (schema engine WASM, offline) drops what migration.sql drops
    schema_engine_or_skip()
    d = plan.details["migration_diff"]
    assert d is not None and d.checked and d.agrees, d
    assert plan.summary["Prisma's migrate diff of the schema edit"].startswith(
        "agrees with the recorded migration.sql (4 statements"), plan.summary
    assert not any("migrate diff" in w for w in plan.warnings)


def test_reverse_policy_takes_tokens_back_first(app, engine_for):
    eng = engine_for(app.url)
    L, B = app.q("TokenTransaction"), app.q("UserTokenBalance")
    with eng.connect() as c:
        bal0 = pd.read_sql(f'select "userId", balance from {B} order by 1', c).set_index("userId")
        grants = pd.read_sql(f"""select "userId", sum(amount) as g from {L}
                                 where source = 'voucher_redemption' group by 1""", c).set_index("userId")["g"]
    plan, result, run = review_then_execute(params_for(app, ledger_policy="reverse"))
    assert result is not None and result.changed
    assert result.counts["rows_reversed"] == plan.summary["ledger rows to reverse"] > 0
    with eng.connect() as c:
        bal1 = pd.read_sql(f'select "userId", balance from {B} order by 1', c).set_index("userId")
    expected = bal0["balance"].sub(grants, fill_value=0)
    assert (bal1["balance"] == expected.reindex(bal1.index)).all()
    written = full_rollback.write_prisma_files(run)
    assert run.verify().passed
    sql = Path(written["migration_file"]).read_text()
    assert "reversed first here" in sql and "0 reversed by an earlier run" in sql


def test_extra_dependent_view_stops_the_rollback(app, engine_for):
    eng = engine_for(app.url)
    with eng.begin() as c:
        c.exec_driver_sql(f'create view voucher_stats as select v.code, count(r.id) as n from {app.q("Voucher")} v '
                          f'left join {app.q("VoucherRedemption")} r on r."voucherId" = v.id group by v.code')
    before = fingerprint(eng)
    files_before = tree(app.root)
    params = params_for(app)
    plan = Run("full-rollback", params).review()
    assert plan.summary["unexpected dependents not named"] == 1
    assert any("voucher_stats" in w for w in plan.warnings)
    with pytest.raises(PolicyAbort, match="voucher_stats"):
        Run("full-rollback", {**params, "mode": "execute", "backup_override_reason": NO_BACKUP,
                              "approved_plan": plan.plan_id}).execute()
    assert fingerprint(eng) == before and tree(app.root) == files_before
    params["drop_dependents"] = ["public.voucher_stats"]
    plan, result, run = review_then_execute(params)
    order = [u.label for u in plan.details["discovery"].order]
    assert order[0] == "view public.voucher_stats"
    with eng.connect() as c:
        assert c.execute(sa.text("select to_regclass('public.voucher_stats')")).scalar() is None


def test_view_with_enum_typed_columns_goes_whole(app, engine_for):
    """A view selecting the enum columns (and one over it) is one object to name and drop, not per column."""
    eng = engine_for(app.url)
    with eng.begin() as c:
        c.exec_driver_sql(f'''create view active_vouchers as select * from {app.q("Voucher")} where status = 'ACTIVE';
            create view active_codes as select code, status from active_vouchers;
            create materialized view status_list as select 'ACTIVE'::"VoucherStatus" as s''')
    params = params_for(app)
    plan = Run("full-rollback", params).review()
    assert sorted(plan.details["unacknowledged"]) == ["materialized view public.status_list",
                                                     "view public.active_codes", "view public.active_vouchers"]
    assert not [u for u in plan.details["discovery"].order if u.type.endswith("column")]
    params["drop_dependents"] = ["active_vouchers", "active_codes", "status_list"]
    plan, result, run = review_then_execute(params)
    assert result is not None and result.changed
    order = [u.label for u in plan.details["discovery"].order]
    assert order.index("view public.active_codes") < order.index("view public.active_vouchers")
    with eng.connect() as c:
        assert c.execute(sa.text("select count(*) from pg_class where relname in "
                                 "('active_vouchers', 'active_codes', 'status_list')")).scalar() == 0
    full_rollback.write_prisma_files(run)
    assert run.verify().passed


def test_rows_of_other_tables_survive_their_named_foreign_keys(app, engine_for):
    """Foreign keys from kept tables into the vouchers go before any voucher row is deleted: their ON DELETE
    actions (CASCADE, SET NULL, RESTRICT) never touch the kept tables' rows."""
    eng = engine_for(app.url)
    V, R = app.q("Voucher"), app.q("VoucherRedemption")
    with eng.begin() as c:
        vid = c.execute(sa.text(f"select id from {V} order by id limit 1")).scalar()
        rid = c.execute(sa.text(f"select id from {R} order by id limit 1")).scalar()
        c.exec_driver_sql(f'''
            create table "Order" (id text primary key, "voucherId" text references {V}(id) on delete set null);
            create table "Gift" (id text primary key, "redemptionId" text references {R}(id) on delete cascade);
            create table "Promo" (id text primary key, "voucherId" text not null references {V}(id));''')
        c.execute(sa.text('''insert into "Order" values ('o1', :v), ('o2', null); insert into "Gift" values ('g1', :r);
                             insert into "Promo" values ('p1', :v)'''), {"v": vid, "r": rid})
    with eng.connect() as c:
        kept_before = {t: c.execute(sa.text(f'select array_agg(x::text order by x::text) from "{t}" x')).scalar()
                       for t in ("Order", "Gift", "Promo")}
    params = params_for(app, drop_dependents=['"Order_voucherId_fkey" on public."Order"',
                                              '"Gift_redemptionId_fkey" on public."Gift"',
                                              '"Promo_voucherId_fkey" on public."Promo"'])
    plan = Run("full-rollback", params).review()
    assert plan.details["unacknowledged"] == [] and not any("names no object" in w for w in plan.warnings)
    _, result, _ = review_then_execute(params)
    assert result is not None and result.changed
    with eng.connect() as c:
        kept_after = {t: c.execute(sa.text(f'select array_agg(x::text order by x::text) from "{t}" x')).scalar()
                      for t in ("Order", "Gift", "Promo")}
        assert c.execute(sa.text("select count(*) from pg_constraint where contype = 'f' "
                                 "and conrelid::regclass::text in ('\"Order\"', '\"Gift\"', '\"Promo\"')")
                         ).scalar() == 0
    assert kept_after == kept_before


def test_failure_in_the_middle_of_the_ddl_leaves_everything_as_it_was(app, engine_for, monkeypatch):
    eng = engine_for(app.url)
    before = fingerprint(eng)
    files_before = tree(app.root)
    params = params_for(app)
    plan = Run("full-rollback", params).review()
    monkeypatch.setenv("RUNBOOK_FAULT", f"{full_rollback.MID_DDL}:raise")
    run = Run("full-rollback", {**params, "mode": "execute", "backup_override_reason": NO_BACKUP,
                                "approved_plan": plan.plan_id})
    with pytest.raises(InjectedFault):
        run.execute()
    assert run.state["rolled_back"]["rolled_back"] is True
    assert fingerprint(eng) == before  # catalog and every table's contents
    assert tree(app.root) == files_before  # no file written


def test_review_writes_nothing_and_second_execute_changes_nothing(app, engine_for, tmp_path):
    eng = engine_for(app.url)
    before = fingerprint(eng)
    files_before = tree(app.root)
    params = params_for(app)
    run = Run("full-rollback", params)
    plan = run.review()
    assert full_rollback.write_prisma_files(run) == {"written": False}
    assert "-model Voucher {" in plan.details["schema_edit"].diff()
    assert fingerprint(eng) == before and tree(app.root) == files_before
    _, _, run = review_then_execute(params)
    full_rollback.write_prisma_files(run)
    after = fingerprint(eng)
    files_after = tree(app.root)
    # a second execute: nothing to do, so no backup is needed (no override given, none in the incident)
    again = Run("full-rollback", {**params, "mode": "execute", "approved_plan": plan.plan_id})
    result = again.execute()
    assert result is not None and not result.changed and again.state["backup"]["not_needed"]
    assert fingerprint(eng) == after and tree(app.root) == files_after
    # and through the CLI's runner, in an incident without any backup: exit 0, "nothing to do" (its review first:
    # an execute approves a plan id a review of the incident produced)
    review = run_procedure("full-rollback", params, incident="AGAIN", evidence_root=tmp_path / "ev",
                           progress_bar=False)
    assert review.exit_code == 0, review.error
    out = run_procedure("full-rollback", {**params, "mode": "execute", "approved_plan": review.plan_id},
                        incident="AGAIN", evidence_root=tmp_path / "ev", progress_bar=False)
    assert out.exit_code == 0, out.error
    assert fingerprint(eng) == after


def test_prisma_config_gives_the_schema_and_the_migrations_folder(app, tmp_path):
    """Prisma 7: prisma.config.ts names the schema and the migrations folder; they need not sit together."""
    (app.root / "db").mkdir()
    shutil.move(app.migrations, app.root / "db" / "migrations")
    (app.root / "prisma.config.ts").write_text(
        'import path from "node:path";\nimport { defineConfig, env } from "prisma/config";\n'
        "// schema: \"commented/out.prisma\"\n"
        'export default defineConfig({\n  schema: path.join("prisma", "schema.prisma"),\n'
        '  migrations: { path: "db/migrations", seed: "tsx prisma/seed.ts" },\n'
        '  datasource: { url: env("DATABASE_URL") },\n});\n')
    cfg = pconfig.read_config(app.root / "prisma.config.ts")
    assert cfg.schema == app.schema.resolve() and cfg.migrations == (app.root / "db" / "migrations").resolve()
    by_config = Run("full-rollback", {"ledger_policy": "keep", "prisma_config": str(app.root / "prisma.config.ts")})
    assert by_config.params.prisma_schema == str(app.schema.resolve())
    for params in ({"prisma_config": str(app.root / "prisma.config.ts")}, {"prisma_schema": str(app.schema)}):
        plan = Run("full-rollback", {"ledger_policy": "keep", **params}).review()
        assert plan.details["migrations_folder"] == str((app.root / "db" / "migrations").resolve())
    with pytest.raises(ParameterError, match="prisma_config"):
        Run("full-rollback", {"ledger_policy": "keep", "prisma_config": str(tmp_path / "nope.ts")})


def test_catalog_finds_dependents_and_orders_them(linked_schema_db, engine_for):
    eng = engine_for(linked_schema_db)
    with eng.begin() as c:
        c.exec_driver_sql('''
            create view v1 as select code from "Voucher";
            create view v2 as select * from v1;
            create table "Order" (id text primary key, "voucherId" text references "Voucher"(id),
                                  kind "VoucherType" default 'TOKEN_GRANT');
            create function status_rank(s "VoucherStatus") returns int language sql as 'select 1';
            create function log_redemption() returns trigger language plpgsql as
              $$ begin insert into "VoucherRedemption" select new.*; return new; end $$;
            create trigger t_user after insert on "User" for each row execute function log_redemption();
            create table other (id int primary key, sts "VoucherStatus"[], t text default 'ACTIVE'::"VoucherStatus",
                                k text check (k::"VoucherType" is not null));
            create index other_sts on other (sts);
            create domain vs_dom as "VoucherStatus" check (value <> 'DISABLED');
            create table other2 (id int, d vs_dom);
            create type comp as (a int, s "VoucherStatus");''')
    with eng.connect() as c:
        disc = catalog.discover(c, "public", MODELS, ENUMS)
    labels = [u.label for u in disc.order]
    unexpected = set(catalog.unacknowledged(disc, []))
    assert {"view public.v1", "view public.v2", 'table column public."Order".kind',
            'table constraint "Order_voucherId_fkey" on public."Order"', "function public.log_redemption()",
            'trigger t_user on public."User"', 'function public.status_rank(public."VoucherStatus")'} <= unexpected
    assert labels.index("view public.v2") < labels.index("view public.v1") < labels.index('table public."Voucher"')
    assert labels.index('trigger t_user on public."User"') < labels.index("function public.log_redemption()")
    assert labels.index('table column public."Order".kind') < labels.index('type public."VoucherType"')
    assert {"table column public.other.sts", "default value for public.other.t", "type public.vs_dom",
            "table constraint other_k_check on public.other", "table column public.other2.d",
            "type public.comp"} <= unexpected
    assert labels.index("table column public.other2.d") < labels.index("type public.vs_dom")
    assert catalog.unacknowledged(disc, sorted(unexpected)) == []
    assert catalog.unknown_names(disc, ["public.nope"]) == ["public.nope"]
    # and they all drop, in that order, in one transaction
    with eng.begin() as c:
        for u in disc.order:
            c.exec_driver_sql(u.drop_sql)
        assert catalog.find_seeds(c, "public", MODELS, ENUMS)[0] == {}
        assert c.execute(sa.text("select to_regclass('public.\"Order\"')")).scalar() is not None
        assert c.execute(sa.text("select array_agg(attname::text order by attnum) from pg_attribute "
                                 "where attrelid = 'public.other'::regclass and attnum > 0 and not attisdropped")
                         ).scalar() == ["id", "t", "k"]


def test_parameters_are_checked(app):
    with pytest.raises(ParameterError, match="ledger_policy"):
        Run("full-rollback", {"prisma_schema": str(app.schema)})
    with pytest.raises(ParameterError, match="prisma_schema"):
        Run("full-rollback", {"ledger_policy": "keep"})
    with pytest.raises(ParameterError, match="migration_name"):
        Run("full-rollback", params_for(app, migration_name="Bad Name"))
    plan = Run("full-rollback", {"ledger_policy": "keep", "prisma_side": False}).review()
    assert any("drift" in w for w in plan.warnings)


@pytest.mark.notebook
def test_notebook_review_then_execute(app, tmp_path):
    from runbook_lib.runner import run_procedure

    if app.kind != "real":
        pytest.skip("the notebook runs on the real application's shape")
    params = params_for(app)
    files_before = tree(app.root)
    ev = tmp_path / "ev"
    review = run_procedure("full-rollback", params, incident="NB", evidence_root=ev, progress_bar=False)
    assert review.exit_code == 0, review.error
    assert tree(app.root) == files_before
    text = notebook_text(review.run_dir / "full_rollback.ipynb")
    assert "-model Voucher {" in text and "DROP TABLE" in text and "parser" in text
    out = run_procedure("full-rollback", {**params, "mode": "execute", "backup_override_reason": NO_BACKUP,
                                          "approved_plan": review.plan_id},
                        incident="NB", evidence_root=ev, progress_bar=False)
    assert out.exit_code == 0, out.error
    assert "prisma generate" in notebook_text(out.run_dir / "full_rollback.ipynb")
    assert "model Voucher " not in app.schema.read_text()


def test_after_commit_file_work_fails_the_run_with_an_evidence_error(app, tmp_path):
    """``run.after_commit()`` (the notebook's Prisma-side cell) runs the procedure's file work in its own step: a
    schema.prisma edited since the plan is not overwritten, and the run records the EvidenceError (exit 11)."""
    from runbook_lib.errors import EvidenceError

    params = {**params_for(app), "evidence_dir": str(tmp_path / "run")}
    _, result, run = review_then_execute(params)
    assert result is not None and result.changed
    edited = app.schema.read_text() + "\n// edited by someone else meanwhile\n"
    app.schema.write_text(edited)
    with pytest.raises(EvidenceError, match="changed since the plan was made"):
        run.after_commit()
    assert app.schema.read_text() == edited
    state = json.loads((tmp_path / "run" / "run-state.json").read_text())
    assert state["steps"]["after_commit"]["status"] == "failed"
    assert state["error"]["exit_code"] == 11 and state["error"]["step"] == "after_commit"
