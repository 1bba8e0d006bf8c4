"""Full rollback against real PostgreSQL: catalog discovery, one-transaction DDL, Prisma schema and history."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from test_partial_rollback import notebook_text, plan_id_of, seed_small
from test_prisma_edit import validator_or_skip

from runbook_lib import catalog
from runbook_lib.errors import ParameterError, PolicyAbort
from runbook_lib.faults import InjectedFault
from runbook_lib.prisma import history
from runbook_lib.procedures import full_rollback
from runbook_lib.run import Run

NO_BACKUP = "test database cloned from a template: no backup needed"

ROOT = Path(__file__).resolve().parent.parent
TABLES, ENUMS = ["Voucher", "VoucherRedemption"], ["VoucherType", "VoucherStatus"]


@pytest.fixture
def prisma_dir(tmp_path: Path) -> Path:
    """A copy of the demo app's prisma folder (schema + migrations): the procedure edits it."""
    dst = tmp_path / "prisma"
    shutil.copytree(ROOT / "demo" / "prisma", dst)
    return dst


@pytest.fixture
def small_db(schema_db, engine_for, target_env):
    seed_small(engine_for(schema_db))
    target_env(schema_db)
    return schema_db


def fingerprint(eng: sa.engine.Engine) -> tuple[list[tuple], dict[str, str]]:
    with eng.connect() as c:
        return catalog.schema_snapshot(c, "public"), catalog.table_checksums(c, "public")


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def params_for(prisma_dir: Path, **more):
    return {"ledger_policy": "keep", "prisma_schema": str(prisma_dir / "schema.prisma"), **more}


def review_then_execute(params):
    plan = Run("full-rollback", params).review()
    run = Run("full-rollback", {**params, "mode": "execute", "backup_override_reason": NO_BACKUP, "approved_plan": plan.plan_id})
    result = run.execute()
    return plan, result, run


def test_full_rollback_removes_everything_and_prisma_agrees(small_db, engine_for, prisma_dir):
    eng = engine_for(small_db)
    _, sums_before = fingerprint(eng)
    schema_before = (prisma_dir / "schema.prisma").read_text()
    plan, result, run = review_then_execute(params_for(prisma_dir))
    assert result is not None and result.changed
    assert plan.summary["rows in public.\"VoucherRedemption\""] == 8
    order = [u.label for u in plan.details["discovery"].order]
    assert order.index('table public."VoucherRedemption"') < order.index('table public."Voucher"')
    assert order.index('table public."Voucher"') < order.index('type public."VoucherStatus"')
    written = full_rollback.write_prisma_files(run)
    # nothing of the voucher system remains in the database
    with eng.connect() as c:
        seeds, _ = catalog.find_seeds(c, "public", TABLES, ENUMS)
        assert seeds == {}
        assert c.execute(sa.text("select count(*) from pg_class where relname ilike '%voucher%'")).scalar() == 0
        assert c.execute(sa.text("select count(*) from pg_type where typname ilike '%voucher%'")).scalar() == 0
        entries = history.compare(c, "public", prisma_dir / "migrations")
        assert history.agrees(entries), entries
        row = c.execute(sa.text('select checksum, finished_at, applied_steps_count from "_prisma_migrations" '
                                "where migration_name = :n"), {"n": result.counts["migration_name"]}).one()
    # the other tables are untouched (ledger_policy=keep)
    _, sums_after = fingerprint(eng)
    for t in ('public."User"', 'public."TokenTransaction"', 'public."UserTokenBalance"'):
        assert sums_after[t] == sums_before[t]
    # the migration file has the checksum Prisma computes, recorded as applied
    mfile = Path(written["migration_file"])
    assert mfile.parent.parent == prisma_dir / "migrations"
    assert row[0] == history.checksum(mfile.read_bytes()) and row[1] is not None and row[2] == 1
    sql = mfile.read_text()
    assert 'DROP TABLE public."VoucherRedemption";' in sql and "keep a sourceId" not in sql
    assert "sourceId names redemptions dropped here" in sql
    # the edited schema: only whole lines removed, nothing else touched
    schema_after = (prisma_dir / "schema.prisma").read_text()
    assert "Voucher" not in schema_after
    import difflib

    ops = [line[0] for line in difflib.ndiff(schema_before.splitlines(True), schema_after.splitlines(True))
           if line[0] in "+-"]
    assert set(ops) == {"-"}
    assert run.verify().passed
    validator = validator_or_skip()
    ok, out = validator(prisma_dir / "schema.prisma")
    assert ok, out


def test_reverse_policy_takes_tokens_back_first(small_db, engine_for, prisma_dir):
    eng = engine_for(small_db)
    with eng.connect() as c:
        bal0 = pd.read_sql('select "userId", balance from "UserTokenBalance" order by 1', c).set_index("userId")
        grants = pd.read_sql("""select "userId", sum(amount) as g from "TokenTransaction"
                                where source = 'voucher_redemption' group by 1""", c).set_index("userId")["g"]
    _, result, run = review_then_execute(params_for(prisma_dir, ledger_policy="reverse"))
    assert result is not None and result.counts["rows_reversed"] == 8
    with eng.connect() as c:
        bal1 = pd.read_sql('select "userId", balance from "UserTokenBalance" order by 1', c).set_index("userId")
        sums = pd.read_sql('select "userId", sum(amount) as s from "TokenTransaction" group by 1', c).set_index("userId")
    expected = bal0["balance"].sub(grants, fill_value=0)
    assert (bal1["balance"] == expected.reindex(bal1.index)).all()
    assert (sums["s"].reindex(bal1.index) == bal1["balance"]).all()  # the ledger still sums to each balance
    written = full_rollback.write_prisma_files(run)
    assert run.verify().passed
    sql = Path(written["migration_file"]).read_text()
    assert "8 voucher grants in TokenTransaction (460 tokens): 8 reversed first here" in sql
    assert "0 reversed by an earlier run" in sql


def test_extra_dependent_view_stops_the_rollback(small_db, engine_for, prisma_dir):
    eng = engine_for(small_db)
    with eng.begin() as c:
        c.exec_driver_sql('create view voucher_stats as select v.code, count(r.id) as n from "Voucher" v '
                          'left join "VoucherRedemption" r on r."voucherId" = v.id group by v.code')
    before = fingerprint(eng)
    files_before = tree(prisma_dir)
    params = params_for(prisma_dir)
    plan = Run("full-rollback", params).review()
    assert plan.summary["unexpected dependents not named"] == 1
    assert any("voucher_stats" in w for w in plan.warnings)
    with pytest.raises(PolicyAbort, match="voucher_stats"):
        Run("full-rollback", {**params, "mode": "execute", "backup_override_reason": NO_BACKUP, "approved_plan": plan.plan_id}).execute()
    assert fingerprint(eng) == before and tree(prisma_dir) == files_before
    # named by the operator: it goes first, then the tables
    params["drop_dependents"] = ["public.voucher_stats"]
    plan, result, run = review_then_execute(params)
    order = [u.label for u in plan.details["discovery"].order]
    assert order[0] == "view public.voucher_stats"
    with eng.connect() as c:
        assert c.execute(sa.text("select to_regclass('public.voucher_stats')")).scalar() is None


def test_view_with_enum_typed_columns_goes_whole(small_db, engine_for, prisma_dir):
    """A view selecting the enum columns (and one over it) is one object to name and drop, not per column."""
    eng = engine_for(small_db)
    with eng.begin() as c:
        c.exec_driver_sql('''create view active_vouchers as select * from "Voucher" where status = 'ACTIVE';
            create view active_codes as select code, status from active_vouchers;
            create materialized view status_list as select 'ACTIVE'::"VoucherStatus" as s''')
    params = params_for(prisma_dir)
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


def test_rows_of_other_tables_survive_their_named_foreign_keys(small_db, engine_for, prisma_dir):
    """Foreign keys from kept tables into the vouchers go before any voucher row is deleted: their ON DELETE
    actions (CASCADE, SET NULL, RESTRICT) never touch the kept tables' rows."""
    eng = engine_for(small_db)
    with eng.begin() as c:
        c.exec_driver_sql('''
            create table "Order" (id text primary key, "voucherId" text references "Voucher"(id) on delete set null);
            create table "Gift" (id text primary key, "redemptionId" text references "VoucherRedemption"(id)
                                 on delete cascade);
            create table "Promo" (id text primary key, "voucherId" text not null references "Voucher"(id));
            insert into "Order" values ('o1', 'v_WELCOME'), ('o2', null);
            insert into "Gift" values ('g1', 'r_WELCOME_u1');
            insert into "Promo" values ('p1', 'v_LIMITED');''')
    with eng.connect() as c:
        kept_before = {t: c.execute(sa.text(f'select array_agg(x::text order by x::text) from "{t}" x')).scalar()
                       for t in ("Order", "Gift", "Promo")}
    params = params_for(prisma_dir, drop_dependents=['"Order_voucherId_fkey" on public."Order"',
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


def test_failure_in_the_middle_of_the_ddl_leaves_everything_as_it_was(small_db, engine_for, prisma_dir, monkeypatch):
    eng = engine_for(small_db)
    before = fingerprint(eng)
    files_before = tree(prisma_dir)
    params = params_for(prisma_dir)
    plan = Run("full-rollback", params).review()
    monkeypatch.setenv("RUNBOOK_FAULT", f"{full_rollback.MID_DDL}:raise")
    run = Run("full-rollback", {**params, "mode": "execute", "backup_override_reason": NO_BACKUP, "approved_plan": plan.plan_id})
    with pytest.raises(InjectedFault):
        run.execute()
    assert run.state["rolled_back"]["rolled_back"] is True
    assert fingerprint(eng) == before  # catalog and every table's contents
    assert tree(prisma_dir) == files_before  # no file written


def test_review_writes_nothing_and_second_execute_changes_nothing(small_db, engine_for, prisma_dir):
    eng = engine_for(small_db)
    before = fingerprint(eng)
    files_before = tree(prisma_dir)
    params = params_for(prisma_dir)
    run = Run("full-rollback", params)
    plan = run.review()
    assert full_rollback.write_prisma_files(run) == {"written": False}
    assert "-model Voucher {" in plan.details["schema_edit"].diff()
    assert fingerprint(eng) == before and tree(prisma_dir) == files_before
    _, _, run = review_then_execute(params)
    full_rollback.write_prisma_files(run)
    after = fingerprint(eng)
    files_after = tree(prisma_dir)
    again = Run("full-rollback", {**params, "mode": "execute", "backup_override_reason": NO_BACKUP, "approved_plan": plan.plan_id})
    result = again.execute()
    assert result is not None and not result.changed
    assert fingerprint(eng) == after and tree(prisma_dir) == files_after


def test_catalog_finds_dependents_and_orders_them(schema_db, engine_for):
    eng = engine_for(schema_db)
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
        disc = catalog.discover(c, "public", TABLES, ENUMS)
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
        assert catalog.find_seeds(c, "public", TABLES, ENUMS)[0] == {}
        assert c.execute(sa.text("select to_regclass('public.\"Order\"')")).scalar() is not None
        assert c.execute(sa.text("select array_agg(attname::text order by attnum) from pg_attribute "
                                 "where attrelid = 'public.other'::regclass and attnum > 0 and not attisdropped")
                         ).scalar() == ["id", "t", "k"]


def test_parameters_are_checked(small_db, prisma_dir):
    with pytest.raises(ParameterError, match="ledger_policy"):
        Run("full-rollback", {"prisma_schema": str(prisma_dir / "schema.prisma")})
    with pytest.raises(ParameterError, match="prisma_schema"):
        Run("full-rollback", {"ledger_policy": "keep"})
    with pytest.raises(ParameterError, match="migration_name"):
        Run("full-rollback", params_for(prisma_dir, migration_name="Bad Name"))
    plan = Run("full-rollback", {"ledger_policy": "keep", "prisma_side": False}).review()
    assert any("drift" in w for w in plan.warnings)


@pytest.mark.notebook
def test_notebook_review_then_execute(small_db, engine_for, prisma_dir, tmp_path):
    import papermill as pm

    nb_in = ROOT / "notebooks" / "full_rollback.ipynb"
    params = params_for(prisma_dir)
    files_before = tree(prisma_dir)
    pm.execute_notebook(str(nb_in), str(tmp_path / "review.ipynb"),
                        parameters=params, progress_bar=False, kernel_name="python3")
    plan_id = plan_id_of(tmp_path / "review.ipynb")
    assert tree(prisma_dir) == files_before
    text = notebook_text(tmp_path / "review.ipynb")
    assert "-model Voucher {" in text and "DROP TABLE" in text
    pm.execute_notebook(str(nb_in), str(tmp_path / "execute.ipynb"), parameters={
        **params, "mode": "execute", "backup_override_reason": NO_BACKUP, "approved_plan": plan_id},
        progress_bar=False, kernel_name="python3")
    assert "prisma generate" in notebook_text(tmp_path / "execute.ipynb")
    assert "Voucher" not in (prisma_dir / "schema.prisma").read_text()
