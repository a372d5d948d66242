//! The classifier against SQL as real applications send it (Django, Rails, Hibernate over JDBC, Prisma, pg_dump,
//! psql's backslash commands, pgbench, drivers and job queues) plus the edge cases of every rule in DESIGN.md §3.
//!
//! Expected routes follow DESIGN.md's intent, fail closed: a statement is a read only when it surely writes nothing,
//! takes no lock and can run on a replica; everything else, including anything in doubt, is a write. Where the
//! classifier disagrees, the expectation here is kept and the classifier is what must change.
//!
//! Choices made where §3 does not spell the answer out (all on the fail-closed side):
//! - With only `billing.charge` configured, an unqualified `charge(…)` is a write: the search_path may resolve it to
//!   `billing.charge`, and a configured schema-qualified name also matches any unqualified call of its last part.
//! - `currval` / `lastval` are writes: their answer is session state that a replica does not share.
//! - `lowrite` (what pg_dump emits to restore large objects) is a large-object write like `lo_*`.
//! - Plain `EXPLAIN` of a write (no ANALYZE) is not "EXPLAIN of a read": write.
//! - `COPY … TO STDOUT`, `DECLARE … CURSOR`, `FETCH`, `CLOSE` are not in §3's read list: writes.
//! - A `BEGIN`/`START TRANSACTION` with both READ ONLY and READ WRITE is read-write (PostgreSQL applies the modes
//!   in order, the last wins): write.
//! - A SERIALIZABLE transaction cannot start on a hot standby ("cannot use serializable mode in a hot standby"), so
//!   `BEGIN … SERIALIZABLE … READ ONLY` must not be sent to a replica: write.
//! - PostgreSQL block comments nest; a statement hidden after a nested comment is judged by what PostgreSQL runs.
//! - A carriage return ends a `--` comment in PostgreSQL as a newline does; what follows it is a statement.
//! - `SET TRANSACTION … READ ONLY` first in a transaction may take it to a replica (§3), but not with SERIALIZABLE.
//!
//! Every statement is classified by one shared classifier, as in the proxy, and by a fresh one: when they differ, the
//! shared one answered from a decision it had cached for another text.
//!
//! The expectations were checked against a real PostgreSQL 15 hot standby: every expected read runs there (save the
//! hinted ones, which are meant to fail there, and psql 17's `\l`, which needs PostgreSQL 17's catalog), and the
//! surprising writes above fail there or run with side effects as described.

use pgsplit::classify::Classifier;
use pgsplit::classify::Route::{self, Read, Write};

/// (statement as sent, expected route, where it comes from)
const CASES: &[(&str, Route, &str)] = &[
    // ───────────────────────────── Django ORM (psycopg, client-side binding) ─────────────────────────────
    (
        r#"SELECT "auth_user"."id", "auth_user"."password", "auth_user"."last_login", "auth_user"."is_superuser", "auth_user"."username", "auth_user"."first_name", "auth_user"."last_name", "auth_user"."email", "auth_user"."is_staff", "auth_user"."is_active", "auth_user"."date_joined" FROM "auth_user" WHERE "auth_user"."id" = 1 LIMIT 21"#,
        Read,
        "django get()",
    ),
    (
        r#"SELECT 1 AS "a" FROM "auth_user" WHERE "auth_user"."username" = 'bob' LIMIT 1"#,
        Read,
        "django exists()",
    ),
    (
        r#"SELECT "blog_post"."id", "blog_post"."title", "blog_post"."body", "blog_post"."created", "blog_post"."author_id" FROM "blog_post" WHERE EXISTS(SELECT 1 AS "a" FROM "blog_comment" U1 WHERE U1."post_id" = ("blog_post"."id") LIMIT 1) ORDER BY "blog_post"."created" DESC LIMIT 21"#,
        Read,
        "django filter(Exists())",
    ),
    (
        r#"SELECT "blog_post"."id", (SELECT U0."body" FROM "blog_comment" U0 WHERE U0."post_id" = ("blog_post"."id") ORDER BY U0."id" DESC LIMIT 1) AS "latest_comment" FROM "blog_post""#,
        Read,
        "django annotate(Subquery())",
    ),
    (
        r#"SELECT COUNT(*) AS "__count" FROM "blog_post" WHERE "blog_post"."author_id" IN (1, 2, 3)"#,
        Read,
        "django count()",
    ),
    (
        r#"SELECT "django_session"."session_key", "django_session"."session_data", "django_session"."expire_date" FROM "django_session" WHERE ("django_session"."expire_date" > '2024-05-01T10:00:00+00:00'::timestamptz AND "django_session"."session_key" = 'q1w2e3r4t5y6u7i8o9p0') LIMIT 21"#,
        Read,
        "django session load",
    ),
    (
        r#"SELECT "django_content_type"."id", "django_content_type"."app_label", "django_content_type"."model" FROM "django_content_type" WHERE ("django_content_type"."app_label" = 'auth' AND "django_content_type"."model" = 'user') LIMIT 21"#,
        Read,
        "django contenttypes",
    ),
    (
        r#"SELECT "django_migrations"."id", "django_migrations"."app", "django_migrations"."name", "django_migrations"."applied" FROM "django_migrations""#,
        Read,
        "django migrate recorder",
    ),
    (
        r#"SELECT c.relname, CASE WHEN c.relispartition THEN 'p' WHEN c.relkind IN ('m', 'v') THEN 'v' ELSE 't' END, obj_description(c.oid, 'pg_class') FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('f', 'm', 'p', 'r', 'v') AND n.nspname NOT IN ('pg_catalog', 'pg_toast') AND pg_catalog.pg_table_is_visible(c.oid)"#,
        Read,
        "django introspection get_table_list",
    ),
    (
        r#"SELECT "shop_order"."id", "shop_order"."status", "shop_order"."total" FROM "shop_order" WHERE "shop_order"."id" = 5 LIMIT 21 FOR UPDATE"#,
        Write,
        "django select_for_update()",
    ),
    (
        r#"SELECT "shop_order"."id", "shop_order"."status" FROM "shop_order" WHERE "shop_order"."status" = 'new' FOR UPDATE NOWAIT"#,
        Write,
        "django select_for_update(nowait=True)",
    ),
    (
        r#"SELECT "shop_order"."id", "shop_order"."status" FROM "shop_order" WHERE "shop_order"."status" = 'new' ORDER BY "shop_order"."id" ASC LIMIT 10 FOR UPDATE SKIP LOCKED"#,
        Write,
        "django select_for_update(skip_locked=True)",
    ),
    (
        r#"SELECT "shop_order"."id", "shop_order"."customer_id", "auth_user"."id", "auth_user"."username" FROM "shop_order" INNER JOIN "auth_user" ON ("shop_order"."customer_id" = "auth_user"."id") WHERE "shop_order"."id" = 5 LIMIT 21 FOR UPDATE OF "shop_order""#,
        Write,
        "django select_for_update(of=('self',))",
    ),
    (
        r#"SELECT "shop_order"."id", "shop_order"."status" FROM "shop_order" WHERE "shop_order"."id" = 5 LIMIT 21 FOR NO KEY UPDATE"#,
        Write,
        "django select_for_update(no_key=True)",
    ),
    (
        r#"INSERT INTO "blog_post" ("title", "body", "created", "author_id") VALUES ('Hello', 'First post', '2024-05-01T10:00:00+00:00'::timestamptz, 1) RETURNING "blog_post"."id""#,
        Write,
        "django create()",
    ),
    (
        r#"INSERT INTO "blog_tag" ("name") VALUES ('rust'), ('postgres') ON CONFLICT DO NOTHING"#,
        Write,
        "django bulk_create(ignore_conflicts=True)",
    ),
    (
        r#"INSERT INTO "blog_tag" ("name") SELECT * FROM UNNEST(('{rust,postgres}')::varchar(50)[]) RETURNING "blog_tag"."id""#,
        Write,
        "django 5.2 bulk_create via UNNEST",
    ),
    (
        r#"UPDATE "blog_post" SET "views" = ("blog_post"."views" + 1) WHERE "blog_post"."id" = 1"#,
        Write,
        "django update(F()+1)",
    ),
    (
        r#"DELETE FROM "blog_comment" WHERE "blog_comment"."post_id" IN (1, 2, 3)"#,
        Write,
        "django delete() cascade",
    ),
    (
        r#"SAVEPOINT "s140328166567744_x1""#,
        Write,
        "django atomic() savepoint",
    ),
    (
        r#"RELEASE SAVEPOINT "s140328166567744_x1""#,
        Write,
        "django atomic() release",
    ),
    (
        r#"ROLLBACK TO SAVEPOINT "s140328166567744_x1""#,
        Write,
        "django atomic() rollback to",
    ),
    ("SET TIME ZONE 'UTC'", Write, "django (older) connection init"),
    (
        "SELECT set_config('TimeZone', 'UTC', false)",
        Write,
        "django connection init",
    ),
    (
        r#"SELECT setval(pg_get_serial_sequence('"blog_post"','id'), coalesce(max("id"), 1), max("id") IS NOT null) FROM "blog_post";"#,
        Write,
        "django sqlsequencereset",
    ),
    (
        r#"CREATE TABLE "blog_post" ("id" bigint NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, "title" varchar(200) NOT NULL, "created" timestamp with time zone NOT NULL)"#,
        Write,
        "django migration",
    ),
    (
        r#"ALTER TABLE "blog_post" ADD COLUMN "views" integer DEFAULT 0 NOT NULL CHECK ("views" >= 0)"#,
        Write,
        "django migration",
    ),
    (
        r#"CREATE INDEX "blog_post_title_5b7bcb_idx" ON "blog_post" ("title")"#,
        Write,
        "django migration",
    ),
    (
        r#"INSERT INTO "django_migrations" ("app", "name", "applied") VALUES ('blog', '0001_initial', '2024-05-01T10:00:00+00:00'::timestamptz) RETURNING "django_migrations"."id""#,
        Write,
        "django migration recorder",
    ),
    (
        r#"DECLARE "_django_curs_140328166567744_sync_1" NO SCROLL CURSOR WITH HOLD FOR SELECT "blog_post"."id", "blog_post"."title" FROM "blog_post""#,
        Write,
        "django iterator() server-side cursor",
    ),
    (
        r#"FETCH FORWARD 2000 FROM "_django_curs_140328166567744_sync_1""#,
        Write,
        "django iterator() fetch",
    ),
    (
        r#"CLOSE "_django_curs_140328166567744_sync_1""#,
        Write,
        "django iterator() close",
    ),
    // ───────────────────────────── Rails / ActiveRecord (prepared statements) ─────────────────────────────
    (
        r#"SELECT "users".* FROM "users" WHERE "users"."id" = $1 LIMIT $2"#,
        Read,
        "rails find",
    ),
    (
        r#"SELECT 1 AS one FROM "users" WHERE "users"."email" = $1 LIMIT $2"#,
        Read,
        "rails exists?",
    ),
    (
        r#"SELECT COUNT(*) FROM "users" WHERE "users"."active" = $1"#,
        Read,
        "rails count",
    ),
    (
        r#"SELECT "users"."id" FROM "users" WHERE "users"."id" > $1 ORDER BY "users"."id" ASC LIMIT $2"#,
        Read,
        "rails in_batches",
    ),
    (
        r#"SELECT "posts".* FROM "posts" WHERE "posts"."user_id" IN ($1, $2, $3)"#,
        Read,
        "rails includes",
    ),
    (
        r#"SELECT "users".* FROM "users" WHERE "users"."id" = $1 LIMIT $2 /*application='Blog',controller='users',action='show'*/"#,
        Read,
        "rails query log tags (trailing comment)",
    ),
    (
        r#"SELECT "schema_migrations"."version" FROM "schema_migrations" ORDER BY "schema_migrations"."version" ASC"#,
        Read,
        "rails migration check",
    ),
    (
        r#"SELECT "ar_internal_metadata"."value" FROM "ar_internal_metadata" WHERE "ar_internal_metadata"."key" = $1 LIMIT $2"#,
        Read,
        "rails internal metadata",
    ),
    (
        r#"SELECT t.oid, t.typname, t.typelem, t.typdelim, t.typinput, r.rngsubtype, t.typtype, t.typbasetype FROM pg_type as t LEFT JOIN pg_range as r ON oid = rngtypid WHERE t.typname IN ('int2', 'int4', 'int8', 'oid', 'float4', 'float8', 'numeric', 'bool', 'timestamp', 'timestamptz')"#,
        Read,
        "rails type map load",
    ),
    (
        r#"SELECT a.attname, format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid), a.attnotnull, a.atttypid, a.atttypmod, c.collname, col_description(a.attrelid, a.attnum) AS comment, attidentity AS identity, attgenerated as attgenerated FROM pg_attribute a LEFT JOIN pg_attrdef d ON a.attrelid = d.adrelid AND a.attnum = d.adnum LEFT JOIN pg_type t ON a.atttypid = t.oid LEFT JOIN pg_collation c ON a.attcollation = c.oid AND a.attcollation <> t.typcollation WHERE a.attrelid = '"users"'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"#,
        Read,
        "rails column introspection",
    ),
    (
        r#"SELECT c.relname FROM pg_class c LEFT JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY (current_schemas(false)) AND c.relname = 'users' AND c.relkind IN ('r','p')"#,
        Read,
        "rails table_exists?",
    ),
    ("SHOW search_path", Read, "rails schema search path"),
    (
        "SELECT pg_try_advisory_lock(5967931011372346080)",
        Write,
        "rails migration lock",
    ),
    (
        "SELECT pg_advisory_unlock(5967931011372346080)",
        Write,
        "rails migration unlock",
    ),
    (
        "SELECT pg_advisory_lock(5967931011372346080)",
        Write,
        "rails (older) migration lock",
    ),
    (
        "SET client_min_messages TO 'warning'",
        Write,
        "rails connection init",
    ),
    (
        "SET standard_conforming_strings = on",
        Write,
        "rails connection init",
    ),
    ("SET intervalstyle = iso_8601", Write, "rails connection init"),
    (
        "SET SESSION timezone TO 'UTC'",
        Write,
        "rails connection init",
    ),
    ("BEGIN", Write, "rails transaction"),
    ("COMMIT", Write, "rails transaction"),
    ("ROLLBACK", Write, "rails transaction"),
    ("SAVEPOINT active_record_1", Write, "rails nested transaction"),
    (
        "RELEASE SAVEPOINT active_record_1",
        Write,
        "rails nested transaction",
    ),
    (
        "ROLLBACK TO SAVEPOINT active_record_1",
        Write,
        "rails nested transaction",
    ),
    (
        r#"INSERT INTO "users" ("email", "created_at", "updated_at") VALUES ($1, $2, $3) RETURNING "id""#,
        Write,
        "rails create",
    ),
    (
        r#"INSERT INTO "books" ("id","title","updated_at") VALUES (1, 'Rework', CURRENT_TIMESTAMP), (2, 'Remote', CURRENT_TIMESTAMP) ON CONFLICT ("id") DO UPDATE SET updated_at=(CASE WHEN ("books"."title" IS NOT DISTINCT FROM excluded."title") THEN "books".updated_at ELSE CURRENT_TIMESTAMP END),"title"=excluded."title" RETURNING "id""#,
        Write,
        "rails upsert_all",
    ),
    (
        r#"INSERT INTO "books" ("id","title") VALUES (1, 'Rework'), (2, 'Remote') ON CONFLICT  DO NOTHING RETURNING "id""#,
        Write,
        "rails insert_all",
    ),
    (
        r#"UPDATE "users" SET "name" = $1, "updated_at" = $2 WHERE "users"."id" = $3"#,
        Write,
        "rails update",
    ),
    (
        r#"DELETE FROM "users" WHERE "users"."id" = $1"#,
        Write,
        "rails destroy",
    ),
    (
        r#"SELECT "accounts".* FROM "accounts" WHERE "accounts"."id" = $1 LIMIT $2 FOR UPDATE"#,
        Write,
        "rails lock!",
    ),
    (
        r#"SELECT "accounts".* FROM "accounts" WHERE "accounts"."id" = $1 LIMIT $2 FOR SHARE"#,
        Write,
        "rails lock('FOR SHARE')",
    ),
    (
        r#"CREATE TABLE "schema_migrations" ("version" character varying NOT NULL PRIMARY KEY)"#,
        Write,
        "rails schema_migrations",
    ),
    (
        r#"INSERT INTO "schema_migrations" ("version") VALUES ($1) RETURNING "version""#,
        Write,
        "rails schema_migrations",
    ),
    // ───────────────────────────── Hibernate 6 over pgjdbc ─────────────────────────────
    (
        "select u1_0.id,u1_0.email,u1_0.name from users u1_0 where u1_0.id=$1",
        Read,
        "hibernate find",
    ),
    (
        "select u1_0.id,u1_0.email,u1_0.name from users u1_0 order by u1_0.name offset $1 rows fetch first $2 rows only",
        Read,
        "hibernate pagination",
    ),
    (
        "select o1_0.id,o1_0.customer,i1_0.order_id,i1_0.id,i1_0.sku from orders o1_0 left join order_items i1_0 on o1_0.id=i1_0.order_id where o1_0.id=$1",
        Read,
        "hibernate join fetch",
    ),
    (
        "select count(u1_0.id) from users u1_0 where u1_0.name like $1",
        Read,
        "hibernate count",
    ),
    (
        "select u1_0.id,u1_0.name from users u1_0 where u1_0.id in ($1,$2,$3)",
        Read,
        "hibernate multiLoad",
    ),
    ("select nextval('users_seq')", Write, "hibernate sequence"),
    (
        "select u1_0.id,u1_0.email,u1_0.name from users u1_0 where u1_0.id=$1 for no key update",
        Write,
        "hibernate PESSIMISTIC_WRITE",
    ),
    (
        "select u1_0.id,u1_0.email,u1_0.name from users u1_0 where u1_0.id=$1 for share",
        Write,
        "hibernate PESSIMISTIC_READ",
    ),
    (
        "select u1_0.id,u1_0.name from users u1_0 where u1_0.id=$1 for no key update nowait",
        Write,
        "hibernate lock timeout 0",
    ),
    (
        "select u1_0.id,u1_0.name from users u1_0 where u1_0.name=$1 for update skip locked",
        Write,
        "hibernate SKIP_LOCKED",
    ),
    (
        "select o1_0.id,i1_0.id from orders o1_0 join order_items i1_0 on o1_0.id=i1_0.order_id where o1_0.id=$1 for no key update of o1_0",
        Write,
        "hibernate lock with join",
    ),
    (
        "insert into users (email,name,id) values ($1,$2,$3)",
        Write,
        "hibernate persist",
    ),
    (
        "update users set email=$1,name=$2 where id=$3",
        Write,
        "hibernate merge",
    ),
    ("delete from users where id=$1", Write, "hibernate remove"),
    (
        "create sequence users_seq start with 1 increment by 50",
        Write,
        "hibernate hbm2ddl",
    ),
    (
        "create table users (id bigint not null, email varchar(255), name varchar(255), primary key (id))",
        Write,
        "hibernate hbm2ddl",
    ),
    (
        "alter table if exists order_items add constraint FKbioxgbv59vetrxe0ejfubep1w foreign key (order_id) references orders",
        Write,
        "hibernate hbm2ddl",
    ),
    ("SET extra_float_digits = 3", Write, "pgjdbc startup"),
    (
        "SET application_name = 'PostgreSQL JDBC Driver'",
        Write,
        "pgjdbc startup",
    ),
    (
        "SHOW TRANSACTION ISOLATION LEVEL",
        Read,
        "pgjdbc getTransactionIsolation",
    ),
    ("BEGIN READ ONLY", Read, "pgjdbc readOnlyMode=transaction"),
    (
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        Write,
        "pgjdbc readOnlyMode=always",
    ),
    // ───────────────────────────── Prisma ─────────────────────────────
    (
        r#"SELECT "public"."User"."id", "public"."User"."email", "public"."User"."name" FROM "public"."User" WHERE "public"."User"."email" = $1 LIMIT $2 OFFSET $3"#,
        Read,
        "prisma findUnique",
    ),
    (
        r#"SELECT "public"."Post"."id", "public"."Post"."title", "public"."Post"."authorId" FROM "public"."Post" WHERE ("public"."Post"."published" = $1 AND "public"."Post"."authorId" IN ($2,$3)) ORDER BY "public"."Post"."id" ASC OFFSET $4"#,
        Read,
        "prisma findMany include",
    ),
    (
        r#"SELECT COUNT(*) AS "_count._all" FROM (SELECT "public"."User"."id" FROM "public"."User" WHERE 1=1 OFFSET $1) AS "sub""#,
        Read,
        "prisma count",
    ),
    ("SELECT 1", Read, "prisma health check"),
    (
        r#"SELECT EXISTS(SELECT 1 FROM "pg_namespace" WHERE "nspname" = $1), version(), current_setting('server_version_num')::integer as numeric_version"#,
        Read,
        "prisma schema engine probe",
    ),
    (
        r#"SELECT "id", "checksum", "finished_at", "migration_name", "logs", "rolled_back_at", "started_at", "applied_steps_count" FROM "_prisma_migrations" ORDER BY "started_at" ASC"#,
        Read,
        "prisma migrate status",
    ),
    (
        r#"INSERT INTO "public"."Post" ("title","content","published","authorId") VALUES ($1,$2,$3,$4) RETURNING "public"."Post"."id", "public"."Post"."title", "public"."Post"."content", "public"."Post"."published", "public"."Post"."authorId""#,
        Write,
        "prisma create",
    ),
    (
        r#"UPDATE "public"."User" SET "name" = $1 WHERE ("public"."User"."id" = $2 AND 1=1) RETURNING "public"."User"."id", "public"."User"."email", "public"."User"."name""#,
        Write,
        "prisma update",
    ),
    (
        r#"DELETE FROM "public"."Post" WHERE ("public"."Post"."id" = $1 AND 1=1)"#,
        Write,
        "prisma delete",
    ),
    (
        r#"INSERT INTO "public"."User" ("email","name") VALUES ($1,$2) ON CONFLICT ("email") DO UPDATE SET "name" = $3 WHERE ("public"."User"."email" = $4 AND 1=1) RETURNING "public"."User"."id", "public"."User"."email", "public"."User"."name""#,
        Write,
        "prisma native upsert",
    ),
    (
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        Write,
        "prisma $transaction isolationLevel",
    ),
    (
        "SELECT pg_advisory_lock(72707369)",
        Write,
        "prisma migrate lock",
    ),
    (
        "SELECT pg_advisory_unlock(72707369)",
        Write,
        "prisma migrate unlock",
    ),
    (
        r#"CREATE TABLE IF NOT EXISTS "_prisma_migrations" ("id" VARCHAR(36) PRIMARY KEY NOT NULL, "checksum" VARCHAR(64) NOT NULL, "finished_at" TIMESTAMPTZ, "migration_name" VARCHAR(255) NOT NULL, "logs" TEXT, "rolled_back_at" TIMESTAMPTZ, "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(), "applied_steps_count" INTEGER NOT NULL DEFAULT 0)"#,
        Write,
        "prisma migrate",
    ),
    // ───────────────────────────── pg_dump (source side) and its script (restore side) ─────────────────────
    ("SET statement_timeout = 0;", Write, "pg_dump script"),
    ("SET lock_timeout = 0;", Write, "pg_dump script"),
    (
        "SET idle_in_transaction_session_timeout = 0;",
        Write,
        "pg_dump script",
    ),
    ("SET client_encoding = 'UTF8';", Write, "pg_dump script"),
    (
        "SELECT pg_catalog.set_config('search_path', '', false);",
        Write,
        "pg_dump script / source",
    ),
    ("SET check_function_bodies = false;", Write, "pg_dump script"),
    ("SET xmloption = content;", Write, "pg_dump script"),
    ("SET row_security = off;", Write, "pg_dump script"),
    ("SET default_tablespace = '';", Write, "pg_dump script"),
    (
        "SET default_table_access_method = heap;",
        Write,
        "pg_dump script",
    ),
    (
        "CREATE TABLE public.t (\n    a integer NOT NULL,\n    b text\n);",
        Write,
        "pg_dump script",
    ),
    ("ALTER TABLE public.t OWNER TO app;", Write, "pg_dump script"),
    (
        "CREATE SEQUENCE public.t_a_seq\n    AS integer\n    START WITH 1\n    INCREMENT BY 1\n    NO MINVALUE\n    NO MAXVALUE\n    CACHE 1;",
        Write,
        "pg_dump script",
    ),
    (
        "ALTER SEQUENCE public.t_a_seq OWNED BY public.t.a;",
        Write,
        "pg_dump script",
    ),
    (
        "ALTER TABLE ONLY public.t ALTER COLUMN a SET DEFAULT nextval('public.t_a_seq'::regclass);",
        Write,
        "pg_dump script",
    ),
    ("COPY public.t (a, b) FROM stdin;", Write, "pg_dump script"),
    (
        "SELECT pg_catalog.setval('public.t_a_seq', 42, true);",
        Write,
        "pg_dump script",
    ),
    (
        "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (a);",
        Write,
        "pg_dump script",
    ),
    (
        "CREATE INDEX t_b_idx ON public.t USING btree (b);",
        Write,
        "pg_dump script",
    ),
    (
        "COMMENT ON TABLE public.t IS 'the table';",
        Write,
        "pg_dump script",
    ),
    (
        "GRANT SELECT ON TABLE public.t TO reader;",
        Write,
        "pg_dump script",
    ),
    (
        "REVOKE ALL ON SCHEMA public FROM PUBLIC;",
        Write,
        "pg_dump script",
    ),
    (
        "CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;",
        Write,
        "pg_dump script",
    ),
    (
        "CREATE FUNCTION public.touch() RETURNS trigger\n    LANGUAGE plpgsql\n    AS $$ BEGIN NEW.b := now()::text; RETURN NEW; END; $$;",
        Write,
        "pg_dump script",
    ),
    (
        "SELECT pg_catalog.lo_create('16500');",
        Write,
        "pg_dump script (large objects)",
    ),
    (
        "SELECT pg_catalog.lo_open('16500', 131072);",
        Write,
        "pg_dump script (large objects)",
    ),
    (
        r"SELECT pg_catalog.lowrite(0, '\x48656c6c6f');",
        Write,
        "pg_dump script (large objects): lowrite writes",
    ),
    (
        "SELECT pg_catalog.lo_close(0);",
        Write,
        "pg_dump script (large objects)",
    ),
    (
        "LOCK TABLE public.t IN ACCESS SHARE MODE",
        Write,
        "pg_dump source: locks",
    ),
    (
        "COPY public.t (a, b) TO stdout;",
        Write,
        "pg_dump source: COPY is not in the read list",
    ),
    (
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        Read,
        "pg_dump source: first statement of its transaction",
    ),
    (
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
        Write,
        "pg_dump --serializable-deferrable: serializable cannot run on a hot standby",
    ),
    (
        "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
        Write,
        "pg_dump -j worker: imports the primary's snapshot",
    ),
    (
        "SELECT tableoid, oid, nspname, (SELECT rolname FROM pg_catalog.pg_roles WHERE oid = nspowner) AS rolname, nspacl, acldefault('n', nspowner) AS acldefault FROM pg_namespace",
        Read,
        "pg_dump source catalog",
    ),
    (
        r#"SELECT c.tableoid, c.oid, c.relname, c.relnamespace, c.relkind, c.reltype, c.relowner, c.relchecks, c.relhasindex, c.relhasrules, c.relpages, c.relhastriggers, c.relpersistence, c.reloftype, c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's'::"char" ELSE 'r'::"char" END, c.relowner) AS acldefault, CASE WHEN c.relkind = 'f' THEN (SELECT ftserver FROM pg_catalog.pg_foreign_table WHERE ftrelid = c.oid) ELSE 0 END AS foreignserver, c.relfrozenxid, tc.relfrozenxid AS tfrozenxid, tc.oid AS toid, tc.relpages AS toastpages, tc.reloptions AS toast_reloptions, d.refobjid AS owning_tab, d.refobjsubid AS owning_col, tsp.spcname AS reltablespace FROM pg_class c LEFT JOIN pg_depend d ON (c.relkind = 'S' AND d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.objsubid = 0 AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')) LEFT JOIN pg_tablespace tsp ON (tsp.oid = c.reltablespace) LEFT JOIN pg_class tc ON (c.reltoastrelid = tc.oid AND c.relkind <> 'p') WHERE c.relkind IN ('r', 'S', 'v', 'c', 'm', 'f', 'p') ORDER BY c.oid"#,
        Read,
        "pg_dump source getTables",
    ),
    (
        "SELECT pg_catalog.pg_get_viewdef('16401'::pg_catalog.oid) AS viewdef",
        Read,
        "pg_dump source view",
    ),
    (
        "SELECT last_value, is_called FROM public.t_a_seq",
        Read,
        "pg_dump source sequence state",
    ),
    // ───────────────────────────── psql backslash commands ─────────────────────────────
    (
        r#"SELECT n.nspname as "Schema",
  c.relname as "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as "Type",
  pg_catalog.pg_get_userbyid(c.relowner) as "Owner"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
WHERE c.relkind IN ('r','p','')
      AND n.nspname <> 'pg_catalog'
      AND n.nspname !~ '^pg_toast'
      AND n.nspname <> 'information_schema'
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1,2;"#,
        Read,
        r"psql \dt",
    ),
    (
        r#"SELECT c.oid,
  n.nspname,
  c.relname
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname OPERATOR(pg_catalog.~) '^(users)$' COLLATE pg_catalog.default
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 2, 3;"#,
        Read,
        r"psql \d users (lookup)",
    ),
    (
        r#"SELECT a.attname,
  pg_catalog.format_type(a.atttypid, a.atttypmod),
  (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true)
   FROM pg_catalog.pg_attrdef d
   WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef),
  a.attnotnull,
  (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t
   WHERE c.oid = a.attcollation AND t.oid = a.atttypid AND a.attcollation <> t.typcollation) AS attcollation,
  a.attidentity,
  a.attgenerated
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = '16385' AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;"#,
        Read,
        r"psql \d users (columns)",
    ),
    (
        r#"SELECT c2.relname, i.indisprimary, i.indisunique, i.indisclustered, i.indisvalid, pg_catalog.pg_get_indexdef(i.indexrelid, 0, true),
  pg_catalog.pg_get_constraintdef(con.oid, true), contype, condeferrable, condeferred, i.indisreplident, c2.reltablespace
FROM pg_catalog.pg_class c, pg_catalog.pg_class c2, pg_catalog.pg_index i
  LEFT JOIN pg_catalog.pg_constraint con ON (conrelid = i.indrelid AND conindid = i.indexrelid AND contype IN ('p','u','x'))
WHERE c.oid = '16385' AND c.oid = i.indrelid AND i.indexrelid = c2.oid
ORDER BY i.indisprimary DESC, c2.relname;"#,
        Read,
        r"psql \d users (indexes)",
    ),
    (
        r#"SELECT
  d.datname as "Name",
  pg_catalog.pg_get_userbyid(d.datdba) as "Owner",
  pg_catalog.pg_encoding_to_char(d.encoding) as "Encoding",
  CASE d.datlocprovider WHEN 'b' THEN 'builtin' WHEN 'c' THEN 'libc' WHEN 'i' THEN 'icu' END AS "Locale Provider",
  d.datcollate as "Collate",
  d.datctype as "Ctype",
  d.datlocale as "Locale",
  d.daticurules as "ICU Rules",
  pg_catalog.array_to_string(d.datacl, E'\n') AS "Access privileges"
FROM pg_catalog.pg_database d
ORDER BY 1;"#,
        Read,
        r"psql \l",
    ),
    (
        r#"SELECT r.rolname, r.rolsuper, r.rolinherit,
  r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
  r.rolconnlimit, r.rolvaliduntil,
  ARRAY(SELECT b.rolname
        FROM pg_catalog.pg_auth_members m
        JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid)
        WHERE m.member = r.oid) as memberof
, r.rolreplication
, r.rolbypassrls
FROM pg_catalog.pg_roles r
WHERE r.rolname !~ '^pg_'
ORDER BY 1;"#,
        Read,
        r"psql \du",
    ),
    (
        r#"SELECT n.nspname AS "Name",
  pg_catalog.pg_get_userbyid(n.nspowner) AS "Owner"
FROM pg_catalog.pg_namespace n
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
ORDER BY 1;"#,
        Read,
        r"psql \dn",
    ),
    (
        r#"SELECT n.nspname as "Schema",
  p.proname as "Name",
  pg_catalog.pg_get_function_result(p.oid) as "Result data type",
  pg_catalog.pg_get_function_arguments(p.oid) as "Argument data types",
 CASE p.prokind
  WHEN 'a' THEN 'agg'
  WHEN 'w' THEN 'window'
  WHEN 'p' THEN 'proc'
  ELSE 'func'
 END as "Type"
FROM pg_catalog.pg_proc p
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE pg_catalog.pg_function_is_visible(p.oid)
      AND n.nspname <> 'pg_catalog'
      AND n.nspname <> 'information_schema'
ORDER BY 1, 2, 4;"#,
        Read,
        r"psql \df",
    ),
    (
        r#"SELECT e.extname AS "Name", e.extversion AS "Version", n.nspname AS "Schema", c.description AS "Description"
FROM pg_catalog.pg_extension e LEFT JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace LEFT JOIN pg_catalog.pg_description c ON c.objoid = e.oid AND c.classoid = 'pg_catalog.pg_extension'::pg_catalog.regclass
ORDER BY 1;"#,
        Read,
        r"psql \dx",
    ),
    (
        r#"SELECT n.nspname as "Schema",
  c.relname as "Name",
  pg_catalog.array_to_string(c.relacl, E'\n') AS "Access privileges"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r','v','m','S','f','p')
  AND c.relname OPERATOR(pg_catalog.~) '^(users)$' COLLATE pg_catalog.default
  AND n.nspname OPERATOR(pg_catalog.~) '^(public)$' COLLATE pg_catalog.default
ORDER BY 1, 2;"#,
        Read,
        r"psql \dp public.users",
    ),
    // ───────────────────────────── pgbench ─────────────────────────────
    (
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1234;",
        Read,
        "pgbench -S / tpcb",
    ),
    (
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
        Read,
        "pgbench -M prepared",
    ),
    ("BEGIN;", Write, "pgbench tpcb"),
    (
        "UPDATE pgbench_accounts SET abalance = abalance + -2731 WHERE aid = 1234;",
        Write,
        "pgbench tpcb",
    ),
    (
        "UPDATE pgbench_tellers SET tbalance = tbalance + -2731 WHERE tid = 7;",
        Write,
        "pgbench tpcb",
    ),
    (
        "UPDATE pgbench_branches SET bbalance = bbalance + -2731 WHERE bid = 1;",
        Write,
        "pgbench tpcb",
    ),
    (
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 1234, -2731, CURRENT_TIMESTAMP);",
        Write,
        "pgbench tpcb",
    ),
    ("END;", Write, "pgbench tpcb"),
    (
        "select count(*) from pgbench_branches",
        Read,
        "pgbench scale check",
    ),
    (
        "select o.n, p.partstrat, pg_catalog.count(i.inhparent) from pg_catalog.pg_class as c join pg_catalog.pg_namespace as n on (n.oid = c.relnamespace) cross join lateral (select pg_catalog.array_position(pg_catalog.current_schemas(true), n.nspname)) as o(n) left join pg_catalog.pg_partitioned_table as p on (p.partrelid = c.oid) left join pg_catalog.pg_inherits as i on (c.oid = i.inhparent) where c.relname = 'pgbench_accounts' and o.n is not null group by 1, 2 order by 1 asc limit 1",
        Read,
        "pgbench partition probe",
    ),
    (
        "drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
        Write,
        "pgbench -i",
    ),
    (
        "create table pgbench_history(tid int,bid int,aid    int,delta int,mtime timestamp,filler char(22))",
        Write,
        "pgbench -i",
    ),
    (
        "truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
        Write,
        "pgbench -i",
    ),
    (
        "copy pgbench_accounts from stdin with (freeze on)",
        Write,
        "pgbench -i",
    ),
    (
        "insert into pgbench_accounts(aid,bid,abalance,filler) select aid, (aid - 1) / 100000 + 1, 0, '' from generate_series(1, 100000) as aid",
        Write,
        "pgbench -i -I G",
    ),
    (
        "vacuum analyze pgbench_branches",
        Write,
        "pgbench -i / vacuum",
    ),
    (
        "alter table pgbench_branches add primary key (bid)",
        Write,
        "pgbench -i",
    ),
    // ───────────────────────────── other drivers and job queues ─────────────────────────────
    (
        "select pg_catalog.version()",
        Read,
        "sqlalchemy first connect",
    ),
    ("select current_schema()", Read, "sqlalchemy first connect"),
    (
        "show standard_conforming_strings",
        Read,
        "sqlalchemy first connect",
    ),
    (
        "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
        Write,
        "asyncpg connection reset",
    ),
    (
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        Read,
        "psycopg3 transaction(read_only)",
    ),
    ("DISCARD ALL", Write, "pool reset"),
    (
        r#"UPDATE "public"."oban_jobs" AS o1 SET "state" = 'executing', "attempted_at" = $1 FROM (SELECT so0."id" AS "id", so0."state" AS "state" FROM "public"."oban_jobs" AS so0 WHERE (so0."state" = 'available') AND (so0."queue" = $2) ORDER BY so0."priority", so0."scheduled_at", so0."id" LIMIT $3 FOR UPDATE SKIP LOCKED) AS s1 WHERE (o1."id" = s1."id") RETURNING o1."id", o1."args""#,
        Write,
        "oban fetch jobs",
    ),
    (
        r#"SELECT "good_jobs".* FROM "good_jobs" WHERE "good_jobs"."finished_at" IS NULL AND pg_try_advisory_lock(('x' || substr(md5('good_jobs' || '-' || "good_jobs"."active_job_id"::text), 1, 16))::bit(64)::bigint) ORDER BY "good_jobs"."priority" DESC LIMIT $1"#,
        Write,
        "good_job dequeue (advisory lock in WHERE)",
    ),
    (
        "SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
        Write,
        "hand-written queue",
    ),
    // ───────────────────────────── locking clauses anywhere ─────────────────────────────
    (
        "SELECT * FROM t FOR KEY SHARE",
        Write,
        "edge:lock key share",
    ),
    (
        "SELECT * FROM a JOIN b ON b.a_id = a.id FOR UPDATE OF a FOR SHARE OF b",
        Write,
        "edge:lock two clauses",
    ),
    (
        "SELECT * FROM (SELECT id FROM t WHERE a > 1 FOR UPDATE) s",
        Write,
        "edge:lock in FROM subquery",
    ),
    (
        "SELECT * FROM t WHERE id IN (SELECT id FROM t WHERE x = 1 FOR UPDATE SKIP LOCKED)",
        Write,
        "edge:lock in IN subquery",
    ),
    (
        "SELECT EXISTS (SELECT 1 FROM t WHERE id = 1 FOR KEY SHARE)",
        Write,
        "edge:lock in EXISTS",
    ),
    (
        "SELECT (SELECT id FROM t ORDER BY id LIMIT 1 FOR UPDATE) AS next_id",
        Write,
        "edge:lock in scalar subquery",
    ),
    (
        "WITH c AS (SELECT * FROM t WHERE a = 1 FOR UPDATE) SELECT * FROM c",
        Write,
        "edge:lock in CTE",
    ),
    (
        "SELECT * FROM a, LATERAL (SELECT * FROM b WHERE b.a_id = a.id LIMIT 1 FOR SHARE) x",
        Write,
        "edge:lock in LATERAL",
    ),
    (
        "SELECT 1 UNION ALL SELECT id FROM (SELECT id FROM t FOR NO KEY UPDATE) s",
        Write,
        "edge:lock under UNION",
    ),
    (
        "(SELECT * FROM t WHERE id = 1 FOR UPDATE)",
        Write,
        "edge:lock in parenthesized query",
    ),
    (
        "SELECT * FROM t WHERE a = 1 FOR UPDATE LIMIT 1",
        Write,
        "edge:lock before LIMIT",
    ),
    (
        "TABLE t FOR UPDATE",
        Write,
        "edge:lock on TABLE",
    ),
    (
        "TABLE jobs FOR KEY SHARE SKIP LOCKED",
        Write,
        "edge:lock on TABLE skip locked",
    ),
    (
        "SELECT * FROM t WHERE note = 'FOR UPDATE' AND a IS NOT NULL",
        Read,
        "edge:lock words in a literal",
    ),
    (
        r#"SELECT "update", "delete", "lock" FROM "for""#,
        Read,
        "edge:keywords as quoted identifiers",
    ),
    // ───────────────────────────── data-modifying CTEs at any depth ─────────────────────────────
    (
        "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT count(*) FROM d",
        Write,
        "edge:cte delete",
    ),
    (
        "WITH u AS (UPDATE t SET a = 1 WHERE id = 2 RETURNING id) SELECT * FROM u",
        Write,
        "edge:cte update",
    ),
    (
        "WITH i AS (INSERT INTO t (a) VALUES (1) RETURNING id) SELECT id FROM i",
        Write,
        "edge:cte insert",
    ),
    (
        "WITH r AS (SELECT 1 AS x), d AS (DELETE FROM t RETURNING 1) SELECT * FROM r",
        Write,
        "edge:cte unreferenced delete still runs",
    ),
    (
        "WITH a AS (WITH d AS (DELETE FROM t RETURNING id) SELECT id FROM d) SELECT * FROM a",
        Write,
        "edge:cte nested 2",
    ),
    (
        "WITH a AS (WITH b AS (WITH c AS (UPDATE t SET x = 1 RETURNING id) SELECT id FROM c) SELECT id FROM b) SELECT * FROM a",
        Write,
        "edge:cte nested 3",
    ),
    (
        "SELECT * FROM (WITH d AS (DELETE FROM t RETURNING id) SELECT id FROM d) s",
        Write,
        "edge:cte in FROM subquery",
    ),
    (
        "SELECT * FROM t WHERE id IN (WITH i AS (INSERT INTO u (a) VALUES (1) RETURNING a) SELECT a FROM i)",
        Write,
        "edge:cte in WHERE subquery",
    ),
    (
        "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING id) SELECT * FROM (SELECT * FROM (SELECT id FROM d) x) y",
        Write,
        "edge:cte read through nested subqueries",
    ),
    (
        "WITH x AS (SELECT 1 AS a) INSERT INTO t (a) SELECT a FROM x",
        Write,
        "edge:cte feeding insert",
    ),
    (
        "WITH moved AS (DELETE FROM queue WHERE id IN (SELECT id FROM queue ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED) RETURNING *) INSERT INTO done SELECT * FROM moved",
        Write,
        "edge:cte move rows",
    ),
    (
        "WITH m AS (MERGE INTO t USING staging s ON t.id = s.id WHEN MATCHED THEN DELETE RETURNING t.id) SELECT * FROM m",
        Write,
        "edge:cte merge (pg17)",
    ),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r",
        Read,
        "edge:recursive read cte",
    ),
    (
        "WITH x AS MATERIALIZED (SELECT * FROM t), y AS NOT MATERIALIZED (SELECT * FROM x) SELECT * FROM y",
        Read,
        "edge:materialized read cte",
    ),
    // ───────────────────────────── SELECT INTO ─────────────────────────────
    ("SELECT * INTO t2 FROM t", Write, "edge:select into"),
    (
        "SELECT a, b INTO TEMP tmp_t FROM t WHERE a > 1",
        Write,
        "edge:select into temp",
    ),
    (
        "SELECT * INTO TEMPORARY TABLE tmp2 FROM t",
        Write,
        "edge:select into temporary table",
    ),
    (
        "SELECT * INTO UNLOGGED t3 FROM t",
        Write,
        "edge:select into unlogged",
    ),
    (
        "WITH x AS (SELECT 1 AS a) SELECT a INTO t4 FROM x",
        Write,
        "edge:select into after cte",
    ),
    (
        "CREATE TEMP TABLE tmp AS SELECT * FROM t",
        Write,
        "edge:create table as",
    ),
    // ───────────────────────────── write functions anywhere ─────────────────────────────
    ("SELECT nextval('s')", Write, "edge:func select list"),
    (
        "SELECT * FROM t WHERE id = nextval('s')",
        Write,
        "edge:func WHERE",
    ),
    ("SELECT * FROM nextval('s')", Write, "edge:func FROM"),
    (
        "SELECT * FROM pg_catalog.set_config('app.user', '42', false)",
        Write,
        "edge:func FROM qualified",
    ),
    (
        "SELECT * FROM generate_series(1, nextval('s')) g",
        Write,
        "edge:func inside table-function args",
    ),
    (
        "SELECT coalesce(max(id), nextval('s')) FROM t",
        Write,
        "edge:func nested",
    ),
    (
        "SELECT abs(pg_catalog.nextval('s'))",
        Write,
        "edge:func nested qualified",
    ),
    ("SELECT NextVal('s')", Write, "edge:func mixed case"),
    ("SELECT NEXTVAL('S')", Write, "edge:func upper case"),
    (r#"SELECT "nextval"('s')"#, Write, "edge:func quoted"),
    (
        r#"SELECT "pg_catalog"."nextval"('s')"#,
        Write,
        "edge:func quoted qualified",
    ),
    (
        "SELECT nextval('s')::int AS id",
        Write,
        "edge:func under cast",
    ),
    (
        "SELECT CAST(nextval('s') AS text)",
        Write,
        "edge:func under CAST",
    ),
    (
        "SELECT CASE WHEN a > 0 THEN nextval('s') ELSE 0 END FROM t",
        Write,
        "edge:func in CASE",
    ),
    ("SELECT (SELECT nextval('s'))", Write, "edge:func in subquery"),
    (
        "SELECT ARRAY[nextval('s'), nextval('s')]",
        Write,
        "edge:func in ARRAY[]",
    ),
    (
        "SELECT 1 UNION ALL SELECT nextval('s')",
        Write,
        "edge:func under UNION",
    ),
    (
        "WITH s AS (SELECT nextval('s') AS id) SELECT * FROM s",
        Write,
        "edge:func in CTE",
    ),
    (
        "SELECT * FROM t, LATERAL (SELECT setval('s', t.id)) x",
        Write,
        "edge:func in LATERAL",
    ),
    (
        "SELECT * FROM t ORDER BY setval('s', 1)",
        Write,
        "edge:func ORDER BY",
    ),
    (
        "SELECT a FROM t GROUP BY a HAVING max(x) > currval('s')",
        Write,
        "edge:func HAVING currval",
    ),
    (
        "SELECT * FROM t WHERE id IN (lastval())",
        Write,
        "edge:func lastval",
    ),
    (
        "SELECT count(*) FILTER (WHERE pg_try_advisory_xact_lock(id)) FROM t",
        Write,
        "edge:func in FILTER",
    ),
    (
        "SELECT * FROM a JOIN b ON b.a_id = a.id AND pg_try_advisory_lock(a.id)",
        Write,
        "edge:func in JOIN ON",
    ),
    (
        "SELECT * FROM t LIMIT nextval('s')",
        Write,
        "edge:func in LIMIT",
    ),
    (
        "SELECT * FROM ROWS FROM (nextval('s')) AS x(id)",
        Write,
        "edge:func in ROWS FROM",
    ),
    (
        "SELECT pg_try_advisory_lock((j).id) FROM jobs j",
        Write,
        "que-style advisory lock on a composite field",
    ),
    ("VALUES (nextval('s'), 1)", Write, "edge:func in VALUES"),
    (
        "SELECT pg_advisory_xact_lock(42)",
        Write,
        "edge:func advisory xact",
    ),
    (
        "SELECT pg_advisory_lock_shared(42)",
        Write,
        "edge:func advisory shared",
    ),
    (
        "SELECT pg_advisory_xact_lock_shared(1, 2)",
        Write,
        "edge:func advisory xact shared",
    ),
    (
        "SELECT pg_try_advisory_xact_lock(42)",
        Write,
        "edge:func try advisory xact",
    ),
    (
        "SELECT pg_try_advisory_lock_shared(42)",
        Write,
        "edge:func try advisory shared",
    ),
    (
        "SELECT pg_advisory_unlock_shared(42)",
        Write,
        "edge:func advisory unlock shared",
    ),
    (
        "SELECT pg_notify('events', '{\"id\": 1}')",
        Write,
        "edge:func pg_notify",
    ),
    ("SELECT txid_current()", Write, "edge:func txid_current"),
    (
        "SELECT pg_current_xact_id()",
        Write,
        "edge:func pg_current_xact_id",
    ),
    (
        "SELECT lo_import('/tmp/photo.jpg')",
        Write,
        "edge:func lo_import",
    ),
    ("SELECT lo_unlink(16401)", Write, "edge:func lo_unlink"),
    (
        r"SELECT lo_from_bytea(0, '\x00ff')",
        Write,
        "edge:func lo_from_bytea",
    ),
    (
        "SELECT dblink_exec('dbname=other', 'DELETE FROM t')",
        Write,
        "edge:func dblink_exec",
    ),
    (
        "SELECT set_config('statement_timeout', '5s', true)",
        Write,
        "edge:func set_config local",
    ),
    (
        "SELECT nextval_count, lo_name, setval_at FROM t",
        Read,
        "edge:func-like column names",
    ),
    (
        "SELECT 'nextval(''s'')' AS txt, 'pg_advisory_lock' AS other",
        Read,
        "edge:func names in literals",
    ),
    (
        "SELECT lower(name), length(note), log(2, 8) FROM t",
        Read,
        "edge:func lo-prefixed reads",
    ),
    (
        "SELECT currval_at, lastval_cache FROM t",
        Read,
        "edge:func-like columns 2",
    ),
    (
        "SELECT pg_catalog.pg_get_serial_sequence('t', 'id'), current_setting('search_path'), pg_is_in_recovery(), now()",
        Read,
        "edge:read-only builtin calls",
    ),
    (
        "SELECT txid_current_snapshot(), pg_current_snapshot()",
        Read,
        "edge:snapshot functions read",
    ),
    (
        "SELECT * FROM pg_locks WHERE locktype = 'advisory'",
        Read,
        "edge:advisory in data only",
    ),
    // ───────────────────────────── user-configured write functions ─────────────────────────────
    ("SELECT audit_log(1)", Write, "edge:user func"),
    ("SELECT AUDIT_LOG(1)", Write, "edge:user func upper"),
    (
        "SELECT public.audit_log(1)",
        Write,
        "edge:user func qualified",
    ),
    (
        "SELECT * FROM t WHERE audit_log(t.id) IS NOT NULL",
        Write,
        "edge:user func in WHERE",
    ),
    (
        "SELECT billing.charge(1)",
        Write,
        "edge:user func schema-qualified config",
    ),
    (
        r#"SELECT "billing"."charge"(1)"#,
        Write,
        "edge:user func quoted qualified",
    ),
    (
        "SELECT * FROM billing.charge(42)",
        Write,
        "edge:user func in FROM",
    ),
    (
        "SELECT charge(1)",
        Write,
        "edge:user func unqualified (fail closed: search_path may resolve to billing.charge)",
    ),
    (
        "SELECT count(*) FROM audit_log",
        Read,
        "edge:user func name as table",
    ),
    // ───────────────────────────── EXPLAIN ─────────────────────────────
    (
        "EXPLAIN SELECT * FROM t WHERE id = 1",
        Read,
        "edge:explain read",
    ),
    (
        "EXPLAIN ANALYZE SELECT * FROM t WHERE id = 1",
        Read,
        "edge:explain analyze read",
    ),
    (
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT count(*) FROM t",
        Read,
        "edge:explain options read",
    ),
    (
        "EXPLAIN ANALYZE DELETE FROM t WHERE id = 1",
        Write,
        "edge:explain analyze delete",
    ),
    (
        "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t WHERE id = 1",
        Write,
        "edge:explain (analyze) delete",
    ),
    (
        "EXPLAIN ANALYZE VERBOSE UPDATE t SET a = 1",
        Write,
        "edge:explain analyze update",
    ),
    (
        "EXPLAIN (ANALYZE) INSERT INTO t (a) VALUES (1)",
        Write,
        "edge:explain analyze insert",
    ),
    (
        "EXPLAIN ANALYZE SELECT nextval('s')",
        Write,
        "edge:explain analyze write function",
    ),
    (
        "EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE",
        Write,
        "edge:explain analyze locking",
    ),
    (
        "EXPLAIN ANALYZE WITH d AS (DELETE FROM t RETURNING id) SELECT * FROM d",
        Write,
        "edge:explain analyze data-modifying cte",
    ),
    (
        "EXPLAIN DELETE FROM t WHERE id = 1",
        Write,
        "edge:explain (no analyze) of a write is not EXPLAIN of a read",
    ),
    // ───────────────────────────── multi-statement strings ─────────────────────────────
    (
        "SELECT 1; SELECT 2",
        Read,
        "edge:multi all reads",
    ),
    (
        "SELECT * FROM t WHERE id = 1; SELECT count(*) FROM u;",
        Read,
        "edge:multi reads trailing ;",
    ),
    (
        "SHOW search_path; SHOW TimeZone",
        Read,
        "edge:multi shows",
    ),
    // sqlparser cannot parse TABLE inside a multi-statement string: it goes to the primary (a missed read, safe).
    (
        "VALUES (1); TABLE t",
        Write,
        "edge:multi values + table",
    ),
    (
        "SELECT 1; DELETE FROM t",
        Write,
        "edge:multi read then write",
    ),
    (
        "DELETE FROM t; SELECT 1",
        Write,
        "edge:multi write then read",
    ),
    (
        "SHOW search_path; DELETE FROM t",
        Write,
        "edge:multi show then write",
    ),
    (
        "SELECT 1; SELECT nextval('s')",
        Write,
        "edge:multi write function",
    ),
    (
        "SELECT 1; SET search_path TO app",
        Write,
        "edge:multi set",
    ),
    (
        "SELECT 1;\n-- then\nUPDATE t SET a = 2",
        Write,
        "edge:multi write after comment",
    ),
    (
        "BEGIN; SELECT 1; COMMIT;",
        Write,
        "edge:multi transaction",
    ),
    (
        "SELECT 1; /* pgsplit:replica */ DELETE FROM t",
        Write,
        "edge:multi hint not leading",
    ),
    (
        "/* pgsplit:primary */ SELECT 1; SELECT 2",
        Write,
        "edge:multi primary hint",
    ),
    // ───────────────────────────── VALUES / TABLE / SHOW ─────────────────────────────
    ("VALUES (1, 'a'), (2, 'b')", Read, "edge:values"),
    (
        "VALUES (1), (2) ORDER BY 1 DESC LIMIT 1",
        Read,
        "edge:values order limit",
    ),
    ("TABLE users", Read, "edge:table"),
    ("TABLE public.users", Read, "edge:table qualified"),
    ("SHOW ALL", Read, "edge:show all"),
    ("SHOW TIME ZONE", Read, "edge:show time zone"),
    ("SHOW server_version_num", Read, "edge:show"),
    // ───────────────────────────── transactions ─────────────────────────────
    ("BEGIN TRANSACTION", Write, "edge:txn"),
    ("BEGIN WORK", Write, "edge:txn"),
    ("START TRANSACTION", Write, "edge:txn"),
    (
        "BEGIN ISOLATION LEVEL REPEATABLE READ",
        Write,
        "edge:txn isolation only",
    ),
    ("BEGIN READ WRITE", Write, "edge:txn read write"),
    (
        "START TRANSACTION READ WRITE, ISOLATION LEVEL READ COMMITTED",
        Write,
        "edge:txn read write 2",
    ),
    ("begin read only", Read, "edge:txn read only lower case"),
    ("BEGIN TRANSACTION READ ONLY", Read, "edge:txn read only"),
    ("START TRANSACTION READ ONLY", Read, "edge:txn read only"),
    (
        "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        Read,
        "edge:txn repeatable read read only",
    ),
    (
        "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY",
        Read,
        "edge:txn read committed read only",
    ),
    (
        "BEGIN READ ONLY DEFERRABLE",
        Read,
        "edge:txn read only deferrable (pgx TxOptions)",
    ),
    (
        "SET TRANSACTION READ ONLY",
        Read,
        "edge:txn SET TRANSACTION READ ONLY (first statement)",
    ),
    (
        "BEGIN READ ONLY, READ WRITE",
        Write,
        "edge:txn conflicting modes: last wins, read-write",
    ),
    (
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
        Write,
        "edge:txn serializable cannot start on a hot standby",
    ),
    (
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
        Write,
        "edge:txn serializable deferrable (asyncpg/pgx) cannot start on a hot standby",
    ),
    ("END", Write, "edge:txn end"),
    ("ABORT", Write, "edge:txn abort"),
    ("COMMIT AND CHAIN", Write, "edge:txn commit and chain"),
    ("PREPARE TRANSACTION 'tx1'", Write, "edge:txn 2pc"),
    ("COMMIT PREPARED 'tx1'", Write, "edge:txn 2pc"),
    // ───────────────────────────── what sqlparser may not parse, utilities ─────────────────────────────
    (
        "DO $$ BEGIN PERFORM pg_sleep(0); END $$",
        Write,
        "edge:unparseable DO",
    ),
    (
        "DO LANGUAGE plpgsql $body$ BEGIN UPDATE t SET a = a + 1; END $body$",
        Write,
        "edge:unparseable DO language",
    ),
    ("VACUUM (VERBOSE, ANALYZE) t", Write, "edge:vacuum"),
    ("VACUUM FULL t", Write, "edge:vacuum full"),
    ("ANALYZE t", Write, "edge:analyze"),
    ("ANALYZE VERBOSE", Write, "edge:analyze verbose"),
    ("CHECKPOINT", Write, "edge:checkpoint"),
    (
        "REFRESH MATERIALIZED VIEW CONCURRENTLY mv",
        Write,
        "edge:refresh mv",
    ),
    (
        "ALTER SYSTEM SET work_mem = '64MB'",
        Write,
        "edge:alter system",
    ),
    ("CLUSTER t USING t_pkey", Write, "edge:cluster"),
    ("REINDEX INDEX CONCURRENTLY t_pkey", Write, "edge:reindex"),
    (
        "CREATE INDEX CONCURRENTLY t_note_idx ON t (note)",
        Write,
        "edge:create index concurrently",
    ),
    ("LOAD 'auto_explain'", Write, "edge:load"),
    ("TRUNCATE t", Write, "edge:truncate"),
    (
        "TRUNCATE TABLE a, b RESTART IDENTITY CASCADE",
        Write,
        "edge:truncate many",
    ),
    ("LOCK t", Write, "edge:lock"),
    ("LOCK TABLE t IN SHARE MODE NOWAIT", Write, "edge:lock"),
    (
        "MERGE INTO t USING staging s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a WHEN NOT MATCHED THEN INSERT (id, a) VALUES (s.id, s.a)",
        Write,
        "edge:merge",
    ),
    ("LISTEN events", Write, "edge:listen"),
    ("NOTIFY events, 'payload'", Write, "edge:notify"),
    ("UNLISTEN *", Write, "edge:unlisten"),
    (
        "PREPARE get_user(int) AS SELECT * FROM users WHERE id = $1",
        Write,
        "edge:prepare (SQL level)",
    ),
    ("EXECUTE get_user(1)", Write, "edge:execute"),
    ("DEALLOCATE get_user", Write, "edge:deallocate"),
    ("DEALLOCATE PREPARE ALL", Write, "edge:deallocate all"),
    ("CALL process_orders(10)", Write, "edge:call"),
    (
        "COPY t (a, b) FROM STDIN WITH (FORMAT csv, HEADER true)",
        Write,
        "edge:copy from stdin",
    ),
    (
        "COPY t FROM '/tmp/data.csv' WITH (FORMAT csv)",
        Write,
        "edge:copy from file",
    ),
    ("RESET ALL", Write, "edge:reset"),
    ("RESET search_path", Write, "edge:reset one"),
    ("SET LOCAL statement_timeout = '5s'", Write, "edge:set local"),
    ("SET search_path TO app, public", Write, "edge:set"),
    ("CREATE VIEW v AS SELECT * FROM t", Write, "edge:ddl view"),
    ("DROP TABLE IF EXISTS t2", Write, "edge:ddl drop"),
    ("CREATE SCHEMA IF NOT EXISTS app", Write, "edge:ddl schema"),
    // ───────────────────────────── hints ─────────────────────────────
    ("/* pgsplit:primary */ SELECT 1", Write, "edge:hint primary"),
    (
        "/* pgsplit:primary */ SHOW search_path",
        Write,
        "edge:hint primary over show",
    ),
    (
        "/* pgsplit:replica */ SELECT * FROM t FOR UPDATE",
        Read,
        "edge:hint replica over lock",
    ),
    (
        "/* pgsplit:replica */ INSERT INTO t (a) VALUES (1)",
        Read,
        "edge:hint replica over insert (fails there, never moved)",
    ),
    (
        "/*pgsplit:replica*/ SELECT nextval('s')",
        Read,
        "edge:hint replica no spaces",
    ),
    (
        "/* pgsplit:replica */\nSELECT pg_advisory_lock(1)",
        Read,
        "edge:hint replica then newline",
    ),
    (
        "-- request 42\n/* pgsplit:primary */ SELECT 1",
        Write,
        "edge:hint primary after line comment",
    ),
    (
        "SELECT 1 /* pgsplit:primary */",
        Read,
        "edge:hint trailing is no hint",
    ),
    (
        "SELECT nextval('s') /* pgsplit:replica */",
        Write,
        "edge:hint trailing replica is no hint",
    ),
    (
        "SELECT '/* pgsplit:replica */', nextval('s')",
        Write,
        "edge:hint inside a literal",
    ),
    (
        "/* pgsplit:replicas */ SELECT nextval('s')",
        Write,
        "edge:hint near miss",
    ),
    (
        "-- pgsplit:replica\nDELETE FROM t",
        Write,
        "edge:hint as line comment is not the hint form",
    ),
    // ───────────────────────────── comments that are not hints, lexical traps ─────────────────────────────
    (
        "-- load the user\nSELECT * FROM users WHERE id = 1",
        Read,
        "edge:comment line",
    ),
    (
        "/* controller='users',action='index' */ SELECT * FROM users",
        Read,
        "edge:comment block (marginalia)",
    ),
    (
        "/* DELETE FROM t */ SELECT 1",
        Read,
        "edge:comment mentioning a write",
    ),
    (
        "SELECT 1 /* ; DELETE FROM t */",
        Read,
        "edge:comment hiding a semicolon",
    ),
    (
        "-- note\nINSERT INTO t (a) VALUES (1)",
        Write,
        "edge:comment before write",
    ),
    (
        "/* note */ UPDATE t SET a = 1",
        Write,
        "edge:block comment before write",
    ),
    (
        "/* audit */ SHOW search_path; DELETE FROM t",
        Write,
        "edge:comment then show then write",
    ),
    (
        "/* outer /* inner */ still a comment */ SELECT 1",
        Read,
        "edge:nested comment before read",
    ),
    (
        "/* outer /* inner */ SHOW search_path */ DELETE FROM t",
        Write,
        "edge:nested comment hides SHOW; PostgreSQL runs the DELETE",
    ),
    (
        "-- note\rDELETE FROM t;\nSHOW search_path",
        Write,
        "edge:a CR ends a -- comment in PostgreSQL; the DELETE runs",
    ),
    (
        "/* /* */ ' */ SELECT 1 AS one -- '",
        Read,
        "edge:quote inside a nested comment, read",
    ),
    (
        "/* /* */ ' */ DELETE FROM t -- '",
        Write,
        "edge:quote inside a nested comment, write (must not share the read's cache entry)",
    ),
    (
        "SELECT $função$ it's $função$, 1 -- '",
        Read,
        "edge:quote inside a non-ASCII dollar tag, read",
    ),
    (
        "SELECT $função$ it's $função$, (SELECT 1 FROM t FOR UPDATE) -- '",
        Write,
        "edge:quote inside a non-ASCII dollar tag, lock (must not share the read's cache entry)",
    ),
    (
        "SELECT $$; DELETE FROM t; $$ AS body",
        Read,
        "edge:dollar-quoted semicolons",
    ),
    (
        "SELECT $tag$ FOR UPDATE $tag$",
        Read,
        "edge:dollar-quoted lock words",
    ),
    ("SELECT 'a;b', 'it''s'", Read, "edge:quoted semicolon"),
    (
        r"SELECT '\'; DELETE FROM t; --'",
        Write,
        "edge:standard strings: backslash does not escape, DELETE runs",
    ),
    // ───────────────────────────── everyday reads ─────────────────────────────
    (
        "SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b DESC",
        Read,
        "edge:read distinct on",
    ),
    (
        "SELECT id, row_number() OVER (PARTITION BY a ORDER BY b) FROM t",
        Read,
        "edge:read window",
    ),
    (
        r#"SELECT data->>'name' FROM t WHERE data @> '{"active": true}'"#,
        Read,
        "edge:read jsonb",
    ),
    (
        "SELECT * FROM t WHERE ts > now() - interval '1 day' AND note ~* 'x'",
        Read,
        "edge:read interval regex",
    ),
    (
        "SELECT * FROM t WHERE id = ANY($1::bigint[])",
        Read,
        "edge:read any array param",
    ),
    ("SELECT * FROM ONLY t", Read, "edge:read only-table"),
    (
        "SELECT a.id, b.id FROM a LEFT JOIN LATERAL (SELECT id FROM b WHERE b.a_id = a.id ORDER BY id DESC LIMIT 1) b ON true",
        Read,
        "edge:read lateral",
    ),
    (
        "SELECT xmin, ctid, * FROM t WHERE id = 1",
        Read,
        "edge:read system columns",
    ),
    (
        "SELECT generate_series(1, 10) AS n",
        Read,
        "edge:read set-returning",
    ),
    // ───────────────────────────── garbage ─────────────────────────────
    ("hello world", Write, "garbage"),
    ("SELEKT * FROM t", Write, "garbage typo"),
    ("SELECT * FROM", Write, "garbage truncated"),
    ("SELECT (((1", Write, "garbage unbalanced"),
    ("SELECT 'unterminated", Write, "garbage unterminated string"),
    ("SELECT $$unterminated", Write, "garbage unterminated dollar"),
    (
        "/* unterminated comment SELECT 1",
        Write,
        "garbage unterminated comment",
    ),
    (
        "/* pgsplit:replica",
        Write,
        "garbage unterminated hint",
    ),
    (r"\dt", Write, "garbage psql meta-command sent raw"),
    (r#"{"query": "SELECT 1"}"#, Write, "garbage json"),
    (
        "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        Write,
        "garbage http",
    ),
    ("SELECT 1 2 3", Write, "garbage extra tokens"),
    ("\u{1F600}", Write, "garbage emoji"),
    ("\0\0\0\0", Write, "garbage nul bytes"),
];

#[test]
fn corpus_routes_as_designed() {
    let write_functions = ["audit_log".to_string(), "billing.charge".to_string()];
    let classifier = Classifier::new(&write_functions);

    let mut seen = std::collections::HashSet::new();
    let duplicates: Vec<&str> = CASES
        .iter()
        .map(|(sql, _, _)| *sql)
        .filter(|sql| !seen.insert(*sql))
        .collect();
    assert!(
        duplicates.is_empty(),
        "duplicate corpus entries: {duplicates:?}"
    );

    // Every statement goes through one shared classifier, as in the proxy, so a cached decision can leak from one
    // text to another; a fresh classifier per statement tells such a leak from a wrong rule.
    let mut mismatches = Vec::new();
    for &(sql, expected, source) in CASES {
        let got = classifier.classify(sql);
        let fresh = Classifier::new(&write_functions).classify(sql);
        if got.route != expected || fresh.route != expected {
            let cache = if fresh.route != got.route {
                format!(
                    "; a fresh classifier says {:?} ({}): cached decision of another text",
                    fresh.route,
                    fresh.reason.label()
                )
            } else {
                String::new()
            };
            mismatches.push(format!(
                "  [{source}] expected {expected:?}, got {:?} (reason {}){cache}:\n      {}",
                got.route,
                got.reason.label(),
                printable(sql)
            ));
        }
    }

    let reads = CASES.iter().filter(|c| c.1 == Read).count();
    let writes = CASES.iter().filter(|c| c.1 == Write).count();
    println!(
        "corpus: {} statements, {reads} expected reads, {writes} expected writes, {} mismatches",
        CASES.len(),
        mismatches.len()
    );
    assert!(CASES.len() >= 180, "corpus too small: {}", CASES.len());
    assert!(reads >= 60, "too few reads in the corpus: {reads}");
    assert!(writes >= 80, "too few writes in the corpus: {writes}");

    if !mismatches.is_empty() {
        eprintln!(
            "{} of {} statements routed against DESIGN.md §3:",
            mismatches.len(),
            CASES.len()
        );
        for m in &mismatches {
            eprintln!("{m}");
        }
        panic!("{} misrouted statements (listed above)", mismatches.len());
    }
}

/// The statement with control characters escaped, quotes left alone.
fn printable(sql: &str) -> String {
    sql.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// xorshift64*: deterministic, no crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const FRAGMENTS: &[&str] = &[
    "SELECT",
    "INSERT",
    "INTO",
    "UPDATE",
    "DELETE",
    "FROM",
    "WHERE",
    "WITH",
    "RECURSIVE",
    "AS",
    "FOR",
    "NO KEY",
    "SHARE",
    "NOWAIT",
    "SKIP LOCKED",
    "OF",
    "VALUES",
    "TABLE",
    "SHOW",
    "SET",
    "LOCAL",
    "RESET",
    "BEGIN",
    "START TRANSACTION",
    "READ ONLY",
    "READ WRITE",
    "ISOLATION LEVEL",
    "SERIALIZABLE",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "EXPLAIN",
    "ANALYZE",
    "VERBOSE",
    "(ANALYZE, BUFFERS)",
    "COPY",
    "STDIN",
    "TO",
    "STDOUT",
    "DO",
    "CALL",
    "LISTEN",
    "NOTIFY",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "LOCK",
    "IN",
    "MODE",
    "UNION",
    "ALL",
    "EXCEPT",
    "INTERSECT",
    "JOIN",
    "LEFT",
    "LATERAL",
    "ON",
    "USING",
    "ORDER BY",
    "GROUP BY",
    "HAVING",
    "LIMIT",
    "OFFSET",
    "FETCH FIRST",
    "ROWS ONLY",
    "RETURNING",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "AND",
    "OR",
    "NOT",
    "NULL",
    "IS",
    "DISTINCT",
    "ARRAY",
    "CAST",
    "OPERATOR(pg_catalog.~)",
    "COLLATE",
    "MERGE",
    "MATCHED",
    "TEMP",
    "nextval('s')",
    "setval('s', 1)",
    "pg_advisory_lock(1)",
    "pg_catalog.set_config('a', 'b', false)",
    "lo_import('x')",
    "audit_log(1)",
    "billing.charge(2)",
    "count(*)",
    "t",
    "\"t\"",
    "\"public\".\"User\"",
    "u1_0.id",
    "$1",
    "$2",
    "1",
    "0.5",
    "-7",
    "'x'",
    "'it''s'",
    "E'\\n'",
    "$$body$$",
    "$q$ ; $q$",
    "*",
    ",",
    ";",
    "(",
    ")",
    "[",
    "]",
    "::",
    "::int",
    "=",
    "<>",
    "!~",
    "~*",
    "@>",
    "->>",
    "||",
    ".",
    "'",
    "\"",
    "$",
    "$$",
    "$a$",
    "--",
    "\n",
    "/*",
    "*/",
    "/* pgsplit:replica */",
    "/* pgsplit:primary */",
    "-- pgsplit:replica\n",
    "\\",
    "\t",
    "\r\n",
    "\r",
    "é",
    "日本語",
    "\u{1F600}",
    "\u{0}",
    "\u{FEFF}",
    "\u{202E}",
    "ß",
    "Ω",
];

/// Middles for sibling texts: reads, writes and locks of the same shape.
const SIBLING_MIDDLES: &[&str] = &[
    " SELECT 1 ",
    " DELETE FROM t ",
    " SELECT 1 FOR UPDATE ",
    " SELECT nextval('s') ",
    " 1 ",
];

/// What makes lexers disagree: quotes, comment marks (block comments nest in PostgreSQL), line ends.
const LEXICAL: &[&str] = &[
    "'", "''", "E'", "\\", "\"", "$$", "$a$", "$é$", "$1", "--", "/*", "*/", "\n", "\r", " ",
    "SELECT", "x", ";",
];

fn lexical_text(rng: &mut Rng) -> String {
    let parts = rng.below(8);
    (0..parts).map(|_| rng.pick(LEXICAL)).collect()
}

fn random_text(rng: &mut Rng) -> String {
    let mut s = String::new();
    let parts = 1 + rng.below(24);
    for _ in 0..parts {
        match rng.below(10) {
            // Random bytes, lossily decoded.
            0 => {
                let len = rng.below(12);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                s.push_str(&String::from_utf8_lossy(&bytes));
            }
            // A random char anywhere in Unicode.
            1 => {
                let c = char::from_u32(rng.next() as u32 % 0x11_0000).unwrap_or('\u{FFFD}');
                s.push(c);
            }
            // A prefix of a fragment, cut on a char boundary.
            2 => {
                let f = rng.pick(FRAGMENTS);
                let mut cut = rng.below(f.len() + 1);
                while !f.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.push_str(&f[..cut]);
            }
            _ => s.push_str(rng.pick(FRAGMENTS)),
        }
        if rng.below(3) > 0 {
            s.push(' ');
        }
    }
    s
}

/// Set in a child run of this test binary: the stress case it classifies.
const STRESS_CASE_ENV: &str = "PGSPLIT_CLASSIFY_STRESS_CASE";

/// Deep nesting and very long text: (name, statement).
fn stress_cases() -> Vec<(&'static str, String)> {
    const MB: usize = 1 << 20;
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    vec![
        ("2000 open parens", "(".repeat(2000)),
        (
            "2000 balanced parens",
            format!("SELECT {}1{}", "(".repeat(2000), ")".repeat(2000)),
        ),
        (
            "2000 nested subqueries",
            format!(
                "{}SELECT 1{}",
                "SELECT * FROM (".repeat(2000),
                ") s".repeat(2000)
            ),
        ),
        (
            "2000 nested calls",
            format!("SELECT {}1{}", "abs(".repeat(2000), ")".repeat(2000)),
        ),
        (
            "2000 nested CTEs",
            format!(
                "{}SELECT 1{}",
                "WITH a AS (".repeat(2000),
                ") SELECT 1".repeat(2000)
            ),
        ),
        ("2000 ARRAY[", format!("SELECT {}", "ARRAY[".repeat(2000))),
        ("100k NOT", format!("SELECT {}true", "NOT ".repeat(100_000))),
        (
            "100k unary minus",
            format!("SELECT {}1", "- ".repeat(100_000)),
        ),
        (
            "1 MB of + terms",
            format!("SELECT 1{}", "+1".repeat(MB / 2)),
        ),
        (
            "1 MB of AND terms",
            format!("SELECT * FROM t WHERE a{}", " AND a".repeat(MB / 6)),
        ),
        (
            "1 MB of casts",
            format!("SELECT 1{}", "::int".repeat(MB / 5)),
        ),
        (
            "1 MB of OR terms (an ORM filter over many ids)",
            format!(
                "SELECT * FROM t WHERE {}id = 0",
                "id = 1 OR ".repeat(MB / 10)
            ),
        ),
        (
            "1 MB of || concatenations",
            format!("SELECT 'a'{}", " || 'a'".repeat(MB / 7)),
        ),
        (
            "100k UNION ALL arms",
            format!("SELECT 1{}", " UNION ALL SELECT 1".repeat(100_000)),
        ),
        (
            "1 MB IN list",
            format!("SELECT * FROM t WHERE id IN (1{})", ",1".repeat(MB / 2)),
        ),
        (
            "1 MB string literal",
            format!("SELECT '{}'", "x".repeat(MB)),
        ),
        ("1 MB comment", format!("/*{}*/ SELECT 1", " ".repeat(MB))),
        (
            "1 MB unterminated comment",
            format!("/*{}", "/*".repeat(MB / 2)),
        ),
        ("1 MB of semicolons", ";".repeat(MB)),
        ("1 MB of statements", "SELECT 1; ".repeat(MB / 10)),
        (
            "1 MB of random text",
            (0..)
                .map(|_| random_text(&mut rng))
                .take_while({
                    let mut total = 0;
                    move |s| {
                        total += s.len();
                        total <= MB
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ]
}

/// Classifies on a thread with tokio's default worker stack (2 MiB), as the proxy does, so that recursion that
/// only fits a bigger main-thread stack is caught. A stack overflow aborts the process, naming this thread.
fn classify_on_worker_stack(name: &'static str, sql: String) {
    std::thread::Builder::new()
        .name(format!("classify {name}"))
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let classifier = Classifier::new(&["audit_log".to_string()]);
            let first = classifier.classify(&sql);
            let again = classifier.classify(&sql);
            assert!(matches!(first.route, Read | Write));
            assert_eq!(first, again, "a cached decision differs for {name}");
        })
        .expect("spawn classifier thread")
        .join()
        .unwrap_or_else(|_| panic!("the classifier panicked on {name}"));
}

#[test]
fn classifier_never_panics_on_arbitrary_text() {
    if let Ok(name) = std::env::var(STRESS_CASE_ENV) {
        // A child run for one stress case (see below).
        let (name, sql) = stress_cases()
            .into_iter()
            .find(|(n, _)| *n == name)
            .expect("a known stress case");
        classify_on_worker_stack(name, sql);
        return;
    }
    let write_functions = ["audit_log".to_string(), "billing.charge".to_string()];
    let classifier = Classifier::new(&write_functions);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut panicked = Vec::new();
    let mut leaked = Vec::new();
    let mut check = |label: String, sql: &str| {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let first = classifier.classify(sql);
            let again = classifier.classify(sql);
            assert!(matches!(first.route, Read | Write));
            assert_eq!(first, again, "a cached decision differs");
            first.route
        }));
        let shown = sql.chars().take(300).collect::<String>();
        match result {
            Err(_) => panicked.push(format!("  {label}: {shown:?}")),
            Ok(route) => {
                // A fresh classifier has no cache: a different route means a decision cached for another text.
                // A cached Write where a fresh parse says Read only loses a replica read (sqlparser accepts or
                // rejects some literals in odd positions, e.g. as aliases, that PostgreSQL rejects anyway); a
                // cached Read where a fresh parse says Write would be a misrouted write.
                let fresh = Classifier::new(&write_functions).classify(sql).route;
                if fresh == Write && route == Read {
                    leaked.push(format!(
                        "  {label}: shared {route:?}, fresh {fresh:?}: {shown:?}"
                    ));
                }
            }
        }
    };
    for i in 0..20_000 {
        let sql = random_text(&mut rng);
        check(format!("random #{i}"), &sql);
    }
    // Siblings that differ only in their middle: if the cache key mistakes the middle for a literal, a read and a
    // write end up sharing one cached decision.
    for i in 0..2_000 {
        let (prefix, suffix) = (lexical_text(&mut rng), lexical_text(&mut rng));
        for middle in SIBLING_MIDDLES {
            check(
                format!("sibling #{i}"),
                &format!("{prefix}{middle}{suffix}"),
            );
        }
    }
    // Deep nesting and very long text. Each runs in a child process (this test binary, filtered to this test),
    // because a stack overflow aborts the whole process instead of panicking.
    let exe = std::env::current_exe().expect("test binary path");
    let mut overflowed = Vec::new();
    for (name, _) in stress_cases() {
        let out = std::process::Command::new(&exe)
            .args([
                "classify_corpus::classifier_never_panics_on_arbitrary_text",
                "--exact",
                "--test-threads=1",
            ])
            .env(STRESS_CASE_ENV, name)
            .output()
            .expect("run the test binary for one stress case");
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr
                .lines()
                .find(|l| l.contains("overflowed its stack") || l.contains("panicked"))
                .unwrap_or("failed")
                .to_string();
            overflowed.push(format!("  {name}: {} ({why})", out.status));
        }
    }

    let mut report = String::new();
    for (what, list) in [
        ("the classifier panicked on", &panicked),
        (
            "the shared classifier answered with a decision cached for another text on",
            &leaked,
        ),
        (
            "the classifier crashed (on a 2 MiB stack, as a tokio worker has) on",
            &overflowed,
        ),
    ] {
        if !list.is_empty() {
            report.push_str(&format!(
                "{what} {} inputs:\n{}\n",
                list.len(),
                list.join("\n")
            ));
        }
    }
    assert!(report.is_empty(), "{report}");
}
