/*
 * Unit tests of svc/db.h. Every case runs against SQLite in a temporary directory, then again
 * against MariaDB when TEST_MYSQL_DSN is set (e.g. mysql://app:apppw@127.0.0.1:3307/appdb; the
 * tests create and drop tables named tdb_*). Without TEST_MYSQL_DSN the SQLite half runs and the
 * file exits TEST_SKIP_CODE, which ctest reports as skipped, not passed; with TEST_REQUIRE_MYSQL=1
 * (scripts/with-servers --mariadb) a missing DSN fails instead.
 */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "svc/db.h"
#include "svc/err.h"
#include "test.h"

/* ctest's SKIP_RETURN_CODE for this file (tests/CMakeLists.txt). */
#define TEST_SKIP_CODE 77

/* The DSN parser is internal; its tests read the parsed struct directly. */
#include "../../common/db_int.h"

static const char *cur_dsn; /* DSN of the back end under test ("" = SQLite default file) */
static const char *cur_dir; /* data directory */
static int cur_dialect;     /* enum svc_db_dialect */
static char tmp_root[256];

#define IS_MY (cur_dialect == SVC_DB_MYSQL)
#define PICK(sqlite_sql, mysql_sql) (IS_MY ? (mysql_sql) : (sqlite_sql))

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static struct svc_db *db_open(const struct svc_db_opts *o)
{
    struct svc_db *db = NULL;
    char err[256];
    int rc = svc_db_create(&db, cur_dsn, cur_dir, o, err, sizeof(err));

    if (rc != SVC_OK)
        T_FAIL("svc_db_create: %s (%s)", err, svc_strerror(rc));
    T_ASSERT(db != NULL);
    return db;
}

static struct svc_db_conn *conn_get(struct svc_db *db)
{
    struct svc_db_conn *c = NULL;
    int rc = svc_db_conn_get(db, &c, 5000);

    if (rc != SVC_OK)
        T_FAIL("svc_db_conn_get: %s", svc_strerror(rc));
    return c;
}

static void exec_ok(struct svc_db_conn *c, const char *sql)
{
    int rc = svc_db_exec(c, sql, NULL, 0, NULL, NULL);

    if (rc != SVC_OK)
        T_FAIL("exec %s: %s [%s]", sql, svc_strerror(rc), svc__db_last_error(c));
}

static void exec_p(struct svc_db_conn *c, const char *sql, const struct svc_db_param *p, size_t n,
                   uint64_t *affected)
{
    int rc = svc_db_exec(c, sql, p, n, affected, NULL);

    if (rc != SVC_OK)
        T_FAIL("exec %s: %s [%s]", sql, svc_strerror(rc), svc__db_last_error(c));
}

/* First column of the first row as an integer (-999 when there is no row). */
static int64_t q_i64(struct svc_db_conn *c, const char *sql, const struct svc_db_param *p, size_t n)
{
    struct svc_db_rows *rows = NULL;
    int64_t v = -999;
    int rc = svc_db_query(c, sql, p, n, &rows);

    if (rc != SVC_OK)
        T_FAIL("query %s: %s [%s]", sql, svc_strerror(rc), svc__db_last_error(c));
    if (svc_db_rows_count(rows) > 0)
        v = svc_db_rows_i64(rows, 0, 0);
    svc_db_rows_destroy(&rows);
    return v;
}

static void drop_tables(struct svc_db_conn *c)
{
    static const char *const tables[] = {
        "tdb_items",   "tdb_b_t",   "tdb_c_ok", "tdb_conc1", "tdb_conc2",    "tdb_conc3",
        "tdb_params",  "tdb_names", "tdb_pair", "tdb_acct",  "tdb_auto",     "tdb_tx",
        "tdb_counter", "tdb_lock",  "tdb_big",  "tdb_group", "tdb_group_log"};
    char sql[128];

    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
        snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS %s", tables[i]);
        exec_ok(c, sql);
    }
    /* schema_migrations may not exist yet: ignore the error */
    int rc = svc_db_exec(c, "DELETE FROM schema_migrations WHERE component LIKE 'tdb%'", NULL, 0,
                         NULL, NULL);
    (void)rc;
}

/* ---- DSN parsing (no database needed) ----------------------------------------------------- */

static void dsn_ok(const char *dsn, const char *dir, struct svc__db_dsn *d)
{
    char err[256];
    int rc = svc__db_dsn_parse(d, dsn, dir, err, sizeof(err));

    if (rc != SVC_OK)
        T_FAIL("parse \"%s\": %s", dsn, err);
}

static void dsn_bad(const char *dsn, const char *dir, const char *want_in_msg, const char *secret)
{
    struct svc__db_dsn d;
    char err[256];
    int rc = svc__db_dsn_parse(&d, dsn, dir, err, sizeof(err));

    if (rc != SVC_EINVAL)
        T_FAIL("parse \"%s\": want SVC_EINVAL, got %d", dsn, rc);
    if (strstr(err, want_in_msg) == NULL)
        T_FAIL("parse \"%s\": message \"%s\" lacks \"%s\"", dsn, err, want_in_msg);
    if (secret != NULL && strstr(err, secret) != NULL)
        T_FAIL("parse \"%s\": message \"%s\" leaks the password", dsn, err);
}

static void test_dsn_url(void)
{
    struct svc__db_dsn d;
    char buf[512];

    dsn_ok("mysql://app:p%40ss%3Aw%2Fx@127.0.0.1:3307/appdb?charset=utf8mb4", NULL, &d);
    T_EQ_INT(d.dialect, SVC_DB_MYSQL);
    T_EQ_STR(d.user, "app");
    T_EQ_STR(d.pass, "p@ss:w/x");
    T_EQ_STR(d.host, "127.0.0.1");
    T_EQ_INT(d.port, 3307);
    T_EQ_STR(d.dbname, "appdb");
    T_EQ_STR(d.socket, "");
    svc__db_dsn_describe(&d, buf, sizeof(buf));
    T_EQ_STR(buf, "mysql://app:***@127.0.0.1:3307/appdb");

    dsn_ok("mariadb://us%20er@db.example/chat", NULL, &d);
    T_EQ_STR(d.user, "us er");
    T_EQ_STR(d.pass, "");
    T_EQ_STR(d.host, "db.example");
    T_EQ_INT(d.port, 3306);
    svc__db_dsn_describe(&d, buf, sizeof(buf));
    T_EQ_STR(buf, "mysql://us er@db.example:3306/chat");

    dsn_ok("mysql://app:pw@[::1]:3310/appdb", NULL, &d);
    T_EQ_STR(d.host, "::1");
    T_EQ_INT(d.port, 3310);
    svc__db_dsn_describe(&d, buf, sizeof(buf));
    T_EQ_STR(buf, "mysql://app:***@[::1]:3310/appdb");

    dsn_ok("mysql://app:pw@unix(/run/mysqld/mysqld.sock)/appdb", NULL, &d);
    T_EQ_STR(d.socket, "/run/mysqld/mysqld.sock");
    T_EQ_STR(d.host, "");
    svc__db_dsn_describe(&d, buf, sizeof(buf));
    T_EQ_STR(buf, "mysql://app:***@unix(/run/mysqld/mysqld.sock)/appdb");

    dsn_ok("mysql://app:pw@localhost/appdb?socket=%2Ftmp%2Fm.sock&timeout=1500ms&"
           "readTimeout=1m30s&writeTimeout=2s&tls=skip-verify",
           NULL, &d);
    T_EQ_STR(d.socket, "/tmp/m.sock");
    T_EQ_INT(d.connect_timeout_ms, 1500);
    T_EQ_INT(d.read_timeout_ms, 90000);
    T_EQ_INT(d.write_timeout_ms, 2000);
    T_EQ_INT(d.tls, SVC__DB_TLS_SKIP_VERIFY);

    /* a password with an '@' unencoded still parses: the last '@' ends it */
    dsn_ok("mysql://app:a@b@h/db", NULL, &d);
    T_EQ_STR(d.pass, "a@b");
    T_EQ_STR(d.host, "h");
}

static void test_dsn_go(void)
{
    struct svc__db_dsn d;

    dsn_ok("app:pw@tcp(127.0.0.1:3307)/appdb?charset=utf8mb4&parseTime=True&loc=Local", NULL, &d);
    T_EQ_INT(d.dialect, SVC_DB_MYSQL);
    T_EQ_STR(d.user, "app");
    T_EQ_STR(d.pass, "pw");
    T_EQ_STR(d.host, "127.0.0.1");
    T_EQ_INT(d.port, 3307);
    T_EQ_STR(d.dbname, "appdb");

    /* go-sql-driver takes user:pass verbatim and ends the password at the last '@' */
    dsn_ok("app:p@ss:w%41rd@tcp(db:3306)/chat", NULL, &d);
    T_EQ_STR(d.user, "app");
    T_EQ_STR(d.pass, "p@ss:w%41rd");
    T_EQ_STR(d.host, "db");

    dsn_ok("app:pw@unix(/var/run/mysqld/mysqld.sock)/appdb?charset=utf8mb4,utf8", NULL, &d);
    T_EQ_STR(d.socket, "/var/run/mysqld/mysqld.sock");

    dsn_ok("app@tcp([fe80::1]:3308)/appdb", NULL, &d);
    T_EQ_STR(d.host, "fe80::1");
    T_EQ_INT(d.port, 3308);
    T_EQ_STR(d.pass, "");

    dsn_ok("app:pw@/appdb", NULL, &d); /* go default: tcp 127.0.0.1:3306 */
    T_EQ_STR(d.host, "127.0.0.1");
    T_EQ_INT(d.port, 3306);
    dsn_ok("app:pw@tcp()/appdb", NULL, &d); /* so is an empty tcp() (fuzz_config) */
    T_EQ_STR(d.host, "127.0.0.1");
    T_EQ_INT(d.port, 3306);

    dsn_ok("app:pw@tcp(h)/appdb?loc=America%2FNew_York&timeout=5s", NULL, &d);
    T_EQ_INT(d.port, 3306);
    T_EQ_INT(d.connect_timeout_ms, 5000);
}

static void test_dsn_sqlite(void)
{
    struct svc__db_dsn d;

    dsn_ok("", "/data/x/", &d);
    T_EQ_INT(d.dialect, SVC_DB_SQLITE);
    T_EQ_STR(d.path, "/data/x/chatweb.db");
    T_EQ_INT(d.use_data_dir, 1);
    dsn_ok(NULL, "/data", &d);
    T_EQ_STR(d.path, "/data/chatweb.db");
    dsn_ok("sqlite:///abs/path.db", "/data", &d);
    T_EQ_STR(d.path, "/abs/path.db");
    T_EQ_INT(d.use_data_dir, 0);
    dsn_ok("sqlite:/abs/p2.db", NULL, &d);
    T_EQ_STR(d.path, "/abs/p2.db");
    dsn_ok("sqlite:rel.db", "/data", &d);
    T_EQ_STR(d.path, "/data/rel.db");
    dsn_ok("sqlite:rel.db", NULL, &d);
    T_EQ_STR(d.path, "rel.db");
    dsn_ok("sqlite::memory:", NULL, &d);
    T_EQ_INT(d.memory, 1);
    /* SQLite opens a path of ":memory:" in memory, also when it was written sqlite://:memory:
     * (fuzz_config) */
    dsn_ok("sqlite://:memory:", "/data", &d);
    T_EQ_INT(d.memory, 1);
    T_EQ_STR(d.path, ":memory:");
    T_EQ_INT(d.use_data_dir, 0);
}

static void test_dsn_bad(void)
{
    dsn_bad("postgres://u:hunter2@h/db", NULL, "unsupported DSN scheme 'postgres'", "hunter2");
    dsn_bad("", NULL, "no DSN given", NULL);
    dsn_bad("mysql://app:hunter2@h:99999/db", NULL, "port", "hunter2");
    dsn_bad("mysql://app:hunter2@h:33a/db", NULL, "port", "hunter2");
    dsn_bad("mysql://app:hunter2@h/", NULL, "no database name", "hunter2");
    dsn_bad("mysql://app:hunter2@h", NULL, "no database name", "hunter2");
    dsn_bad("mysql://:hunter2@h/db", NULL, "no user name", "hunter2");
    dsn_bad("mysql://app:hun%zzter2@h/db", NULL, "password has a bad", "hunter2");
    dsn_bad("mysql://app:hunter2@h/db?bogus=1", NULL, "unknown DSN option 'bogus'", "hunter2");
    dsn_bad("mysql://app:hunter2@h/db?charset=latin1", NULL, "only utf8mb4", "hunter2");
    dsn_bad("mysql://app:hunter2@h/db?timeout=5", NULL, "duration", "hunter2");
    dsn_bad("mysql://app:hunter2@h/db?tls=maybe", NULL, "tls=maybe", "hunter2");
    dsn_bad("mysql://app:hunter2@h/db?clientFoundRows=false", NULL, "clientFoundRows", "hunter2");
    dsn_bad("mysql://app:hunter2@[::1/db", NULL, "']'", "hunter2");
    dsn_bad("app:hunter2@tcp(h:3306/db", NULL, "tcp(host:port)", "hunter2");
    dsn_bad("app:hunter2@udp(h:3306)/db", NULL, "tcp(host:port)", "hunter2");
    dsn_bad("app:hunter2@unix(relative.sock)/db", NULL, "absolute", "hunter2");
    dsn_bad("just-a-word", NULL, "unrecognised DSN", NULL);
    dsn_bad("sqlite:", NULL, "no file name", NULL);
    dsn_bad("sqlite:x.db?mode=ro", NULL, "not supported", NULL);
}

/* Opening with a bad DSN or an unreachable server: a clean message, no password in it. */
static void test_open_errors(void)
{
    struct svc_db *db = NULL;
    char err[256];
    int rc;

    rc = svc_db_create(&db, "redis://u:hunter2@h/0", NULL, NULL, err, sizeof(err));
    T_EQ_INT(rc, SVC_EINVAL);
    T_ASSERT(db == NULL);
    T_ASSERT(strstr(err, "redis") != NULL);
    T_ASSERT(strstr(err, "hunter2") == NULL);

    /* port 1 on loopback: connection refused at once */
    rc = svc_db_create(&db, "mysql://app:hunter2@127.0.0.1:1/appdb", NULL, NULL, err, sizeof(err));
    T_EQ_INT(rc, SVC_EUNAVAIL);
    T_ASSERT(db == NULL);
    T_ASSERT(strstr(err, "cannot connect to mysql://app:***@127.0.0.1:1/appdb") != NULL);
    T_ASSERT(strstr(err, "hunter2") == NULL);

    struct svc_db_opts o = {.pool_size = SVC_DB_POOL_MAX + 1};
    rc = svc_db_create(&db, "sqlite::memory:", NULL, &o, NULL, 0);
    T_EQ_INT(rc, SVC_EINVAL);

    /* destroy and the rows/conn helpers accept NULL */
    svc_db_destroy(NULL);
    svc_db_destroy(&db);
    svc_db_rows_destroy(NULL);
    svc_db_conn_put(NULL, NULL);
}

static void test_memory(void)
{
    struct svc_db *db = NULL;
    struct svc_db_conn *c;
    char buf[256];

    T_EQ_INT(svc_db_create(&db, "sqlite::memory:", NULL, NULL, NULL, 0), SVC_OK);
    svc_db_describe(db, buf, sizeof(buf));
    T_EQ_STR(buf, "sqlite::memory: (pool 1)");
    c = conn_get(db);
    exec_ok(c, "CREATE TABLE m (x INTEGER)");
    exec_ok(c, "INSERT INTO m VALUES (42)");
    T_EQ_INT(q_i64(c, "SELECT x FROM m", NULL, 0), 42);
    svc_db_conn_put(db, &c);
    T_ASSERT(c == NULL);
    svc_db_destroy(&db);
    T_ASSERT(db == NULL);
}

/* ---- cases run on every back end ---------------------------------------------------------- */

static void test_open_describe(void)
{
    struct svc_db *db = db_open(NULL);
    char buf[512], path[512];
    struct stat st;

    T_EQ_INT(svc_db_dialect(db), cur_dialect);
    svc_db_describe(db, buf, sizeof(buf));
    fprintf(stderr, "   describe: %s\n", buf);
    if (IS_MY) {
        struct svc__db_dsn d;
        dsn_ok(cur_dsn, NULL, &d);
        T_ASSERT(strncmp(buf, "mysql://", 8) == 0);
        if (d.pass[0] != '\0') {
            T_ASSERT(strstr(buf, ":***@") != NULL);
            T_ASSERT(strstr(buf, d.pass) == NULL);
        }
        T_ASSERT(strstr(buf, "(pool 8)") != NULL);
    } else {
        snprintf(path, sizeof(path), "%s/chatweb.db", cur_dir);
        T_EQ_INT(stat(path, &st), 0); /* the nested data dir was created */
        T_ASSERT(strstr(buf, path) != NULL);
        T_ASSERT(strstr(buf, "(pool 4, wal)") != NULL);
    }
    T_EQ_INT(svc_db_ping(db), SVC_OK);
    svc_db_destroy(&db);
}

static const struct svc_db_migration migs_v1[] = {
    {"tdb_a", 1, "CREATE TABLE tdb_items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
     "CREATE TABLE tdb_items (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL)"},
    {"tdb_b", 1, "-- b's own table\nCREATE TABLE tdb_b_t (k INTEGER);\n",
     "-- b's own table\nCREATE TABLE tdb_b_t (k BIGINT);\n"},
};

/* v2 of tdb_a needs v1's table: applied in order, two statements, blank pieces and comments. */
static const struct svc_db_migration migs_v2[] = {
    {"tdb_a", 1, "CREATE TABLE tdb_items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
     "CREATE TABLE tdb_items (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL)"},
    {"tdb_b", 1, "-- b's own table\nCREATE TABLE tdb_b_t (k INTEGER);\n",
     "-- b's own table\nCREATE TABLE tdb_b_t (k BIGINT);\n"},
    {"tdb_a", 2,
     "ALTER TABLE tdb_items ADD COLUMN note TEXT;  \n"
     "\n-- an index too\n"
     "CREATE UNIQUE INDEX tdb_items_name ON tdb_items (name);\n;\n",
     "ALTER TABLE tdb_items ADD COLUMN note TEXT;\r\n"
     "/* an index too */\n"
     "CREATE UNIQUE INDEX tdb_items_name ON tdb_items (name);"},
    {"tdb_a", 3, NULL, NULL}, /* nothing to do, still recorded */
};

static void test_migrations(void)
{
    struct svc_db *db = db_open(NULL);
    struct svc_db_conn *c;
    struct svc_db_param p[3];

    T_EQ_INT(svc_db_migrate(db, migs_v1, 2), SVC_OK);
    T_EQ_INT(svc_db_migrate(db, migs_v1, 2), SVC_OK); /* idempotent */
    T_EQ_INT(svc_db_migrate(db, migs_v2, 4), SVC_OK); /* adds a/2 and a/3 */
    T_EQ_INT(svc_db_migrate(db, migs_v2, 4), SVC_OK);
    /* an older binary (knows tdb_a up to 1) refuses the newer database and applies nothing,
     * not even its own new component listed before it */
    static const struct svc_db_migration older[] = {
        {"tdb_d", 1, "CREATE TABLE tdb_d_t (k INTEGER)", "CREATE TABLE tdb_d_t (k BIGINT)"},
        {"tdb_a", 1, "SELECT 1", "SELECT 1"},
    };
    T_EQ_INT(svc_db_migrate(db, older, 2), SVC_ECONFLICT);
    T_EQ_INT(svc_db_migrate(db, migs_v1, 2), SVC_ECONFLICT);

    c = conn_get(db);
    T_EQ_INT(
        q_i64(c, "SELECT COUNT(*) FROM schema_migrations WHERE component LIKE 'tdb%'", NULL, 0), 4);
    p[0] = SVC_DB_TEXT("tdb_a");
    T_EQ_INT(q_i64(c, "SELECT MAX(version) FROM schema_migrations WHERE component = ?", p, 1), 3);
    T_ASSERT(q_i64(c, "SELECT MIN(applied_at) FROM schema_migrations WHERE component = ?", p, 1) >
             1700000000);
    /* v2's column and unique index exist */
    p[0] = SVC_DB_I64(1), p[1] = SVC_DB_TEXT("one"), p[2] = SVC_DB_TEXT("a note");
    exec_p(c, "INSERT INTO tdb_items (id, name, note) VALUES (?, ?, ?)", p, 3, NULL);
    p[0] = SVC_DB_I64(2);
    T_EQ_INT(
        svc_db_exec(c, "INSERT INTO tdb_items (id, name, note) VALUES (?, ?, ?)", p, 3, NULL, NULL),
        SVC_EEXIST);
    svc_db_conn_put(db, &c);

    /* versions out of order within a component */
    static const struct svc_db_migration bad_order[] = {
        {"tdb_x", 2, "SELECT 1", "SELECT 1"},
        {"tdb_x", 1, "SELECT 1", "SELECT 1"},
    };
    T_EQ_INT(svc_db_migrate(db, bad_order, 2), SVC_EINVAL);
    static const struct svc_db_migration bad_version[] = {{"tdb_x", 0, "SELECT 1", "SELECT 1"}};
    T_EQ_INT(svc_db_migrate(db, bad_version, 1), SVC_EINVAL);
    static const struct svc_db_migration bad_comp[] = {{"", 1, "SELECT 1", "SELECT 1"}};
    T_EQ_INT(svc_db_migrate(db, bad_comp, 1), SVC_EINVAL);

    /* a failing migration: not recorded; on SQLite its first statement is rolled back too, on
     * MariaDB the DDL before the failure stays (implicit commit) */
    static const struct svc_db_migration failing[] = {
        {"tdb_c", 1, "CREATE TABLE tdb_c_ok (x INTEGER);\nTHIS IS NOT SQL;\n",
         "CREATE TABLE tdb_c_ok (x INTEGER);\nTHIS IS NOT SQL;\n"},
    };
    T_EQ_INT(svc_db_migrate(db, failing, 1), SVC_EIO);
    c = conn_get(db);
    p[0] = SVC_DB_TEXT("tdb_c");
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM schema_migrations WHERE component = ?", p, 1), 0);
    struct svc_db_rows *rows = NULL;
    int rc = svc_db_query(c, "SELECT COUNT(*) FROM tdb_c_ok", NULL, 0, &rows);
    svc_db_rows_destroy(&rows);
    T_EQ_INT(rc, IS_MY ? SVC_OK : SVC_EIO);
    exec_ok(c, "DROP TABLE IF EXISTS tdb_c_ok");
    svc_db_conn_put(db, &c);
    svc_db_destroy(&db);
}

/* Several "replicas" (separate handles) migrating at once: every version applied exactly once
 * (a second CREATE TABLE without IF NOT EXISTS would fail). */
static const struct svc_db_migration migs_conc[] = {
    {"tdb_conc", 1, "CREATE TABLE tdb_conc1 (x INTEGER)", "CREATE TABLE tdb_conc1 (x INTEGER)"},
    {"tdb_conc", 2, "CREATE TABLE tdb_conc2 (x INTEGER)", "CREATE TABLE tdb_conc2 (x INTEGER)"},
    {"tdb_conc", 3, "CREATE TABLE tdb_conc3 (x INTEGER);\nINSERT INTO tdb_conc3 VALUES (7);",
     "CREATE TABLE tdb_conc3 (x INTEGER);\nINSERT INTO tdb_conc3 VALUES (7);"},
};

static void *migrate_thread(void *arg)
{
    struct svc_db *db = db_open(NULL);

    *(int *)arg = svc_db_migrate(db, migs_conc, 3);
    svc_db_destroy(&db);
    svc_db_thread_end();
    return NULL;
}

static void test_migrations_concurrent(void)
{
    pthread_t th[4];
    int rcs[4];
    struct svc_db *db;
    struct svc_db_conn *c;

    for (int i = 0; i < 4; i++)
        T_EQ_INT(pthread_create(&th[i], NULL, migrate_thread, &rcs[i]), 0);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        T_EQ_INT(rcs[i], SVC_OK);
    }
    db = db_open(NULL);
    c = conn_get(db);
    struct svc_db_param p[] = {SVC_DB_TEXT("tdb_conc")};
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM schema_migrations WHERE component = ?", p, 1), 3);
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_conc3", NULL, 0), 1);
    svc_db_conn_put(db, &c);
    svc_db_destroy(&db);
}

/* SQLite: several handles creating the same fresh file at once (the switch to WAL needs the
 * exclusive lock; the others must wait on busy_timeout, not fail). */
static char fresh_dir[512];

static void *fresh_open_thread(void *arg)
{
    struct svc_db *db = NULL;
    char err[256];
    int rc = svc_db_create(&db, "", fresh_dir, NULL, err, sizeof(err));

    if (rc == SVC_OK)
        rc = svc_db_migrate(db, migs_conc, 3);
    *(int *)arg = rc;
    if (rc != SVC_OK)
        fprintf(stderr, "   open: %s\n", err);
    svc_db_destroy(&db);
    return NULL;
}

static void test_sqlite_fresh_concurrent(void)
{
    pthread_t th[8];
    int rcs[8];

    snprintf(fresh_dir, sizeof(fresh_dir), "%s/fresh", tmp_root);
    for (int i = 0; i < 8; i++)
        T_EQ_INT(pthread_create(&th[i], NULL, fresh_open_thread, &rcs[i]), 0);
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        T_EQ_INT(rcs[i], SVC_OK);
    }
}

/*
 * Another process on the same SQLite file while this one holds pooled connections: the sqlite3
 * shell an operator runs, or a second replica. POSIX locks belong to the process, and closing
 * any descriptor of the file drops all of them; with its locks gone, the other process took the
 * EXCLUSIVE lock when it closed, believed itself the file's last user, checkpointed and deleted
 * the WAL, and from then on this process wrote to the deleted WAL and the other read without it
 * (web.test's admin chart and ledger saw one file, the sqlite3 shell another). The child is this
 * binary again (main's --other-process), so it shares no SQLite state with the parent.
 */
static int other_process(const char *sql)
{
    char self[512];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    pid_t pid;
    int status = 0;

    T_ASSERT(n > 0);
    self[n] = '\0';
    pid = fork();
    T_ASSERT(pid >= 0);
    if (pid == 0) {
        execl(self, self, "--other-process", cur_dir, sql, (char *)NULL);
        _exit(127);
    }
    T_ASSERT(waitpid(pid, &status, 0) == pid);
    T_ASSERT(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* The child: opens its own pool on dir, runs sql and exits with the first column (0-200). */
static int other_process_main(const char *dir, const char *sql)
{
    struct svc_db *db = NULL;
    struct svc_db_conn *c = NULL;
    struct svc_db_rows *rows = NULL;
    char err[256];
    int64_t v = 0;

    if (svc_db_create(&db, "", dir, NULL, err, sizeof(err)) != SVC_OK ||
        svc_db_conn_get(db, &c, 5000) != SVC_OK || svc_db_query(c, sql, NULL, 0, &rows) != SVC_OK)
        return 255;
    if (svc_db_rows_count(rows) > 0)
        v = svc_db_rows_i64(rows, 0, 0);
    svc_db_rows_destroy(&rows);
    svc_db_conn_put(db, &c);
    svc_db_destroy(&db); /* its last connection closes: the moment it would delete the WAL */
    svc_db_teardown();
    return v >= 0 && v <= 200 ? (int)v : 254;
}

static void test_sqlite_other_process(void)
{
    struct svc_db *db = db_open(NULL);
    struct svc_db_conn *a = conn_get(db), *b;
    char wal[600];
    struct stat st;

    exec_ok(a, "CREATE TABLE tdb_xproc (v INTEGER)");
    exec_ok(a, "INSERT INTO tdb_xproc (v) VALUES (1)");
    b = conn_get(db); /* a second connection opens while a holds its locks */
    svc_db_conn_put(db, &b);
    T_EQ_INT(other_process("SELECT count(*) FROM tdb_xproc"), 1);
    snprintf(wal, sizeof(wal), "%s/chatweb.db-wal", cur_dir);
    T_ASSERT(stat(wal, &st) == 0); /* still ours: the child did not think itself the last */
    exec_ok(a, "INSERT INTO tdb_xproc (v) VALUES (2)");
    T_EQ_INT(other_process("SELECT count(*) FROM tdb_xproc"), 2);
    T_EQ_INT(other_process("INSERT INTO tdb_xproc (v) VALUES (3) RETURNING 3"), 3);
    T_EQ_INT(q_i64(a, "SELECT count(*) FROM tdb_xproc", NULL, 0), 3);
    exec_ok(a, "DROP TABLE tdb_xproc");
    svc_db_conn_put(db, &a);
    svc_db_destroy(&db);
}

static void test_params(void)
{
    struct svc_db *db = db_open(NULL);
    struct svc_db_conn *c = conn_get(db);
    static const char blob[] = {'a', 0, 'b', 0, 0, (char)0xff, (char)0x80, 'z'};
    const char *utf8 = "h\xc3\xa9llo \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e "
                       "\xf0\x9f\x9a\x80"; /* héllo ✓ 日本語 🚀 */
    struct svc_db_rows *rows = NULL;
    const void *bp;
    size_t blen = 0;
    int64_t id1 = 0, id2 = 0;

    exec_ok(c, PICK("CREATE TABLE tdb_params (id INTEGER PRIMARY KEY AUTOINCREMENT, i INTEGER, "
                    "t TEXT, b BLOB, n INTEGER)",
                    "CREATE TABLE tdb_params (id BIGINT AUTO_INCREMENT PRIMARY KEY, i BIGINT, "
                    "t TEXT, b LONGBLOB, n BIGINT) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"));
    struct svc_db_param p1[] = {SVC_DB_I64(INT64_MIN), SVC_DB_TEXT(utf8),
                                SVC_DB_BLOB(blob, sizeof(blob)), SVC_DB_NULL};
    T_EQ_INT(svc_db_exec(c, "INSERT INTO tdb_params (i, t, b, n) VALUES (?, ?, ?, ?)", p1, 4, NULL,
                         &id1),
             SVC_OK);
    /* empty text and empty blob are not NULL; TEXTN takes a length; TEXT(NULL) is NULL */
    struct svc_db_param p2[] = {SVC_DB_I64(INT64_MAX), SVC_DB_TEXTN("abcdef", 3),
                                SVC_DB_BLOB(NULL, 0), SVC_DB_TEXT(NULL)};
    T_EQ_INT(svc_db_exec(c, "INSERT INTO tdb_params (i, t, b, n) VALUES (?, ?, ?, ?)", p2, 4, NULL,
                         &id2),
             SVC_OK);
    T_ASSERT(id1 > 0);
    T_EQ_INT(id2, id1 + 1);
    struct svc_db_param p3[] = {SVC_DB_I64(INT64_MAX), SVC_DB_TEXT(""), SVC_DB_BOOL(1)};
    exec_p(c, "INSERT INTO tdb_params (i, t, n) VALUES (?, ?, ?)", p3, 3, NULL);

    T_EQ_INT(svc_db_query(c, "SELECT id, i, t, b, n AS the_n FROM tdb_params ORDER BY id", NULL, 0,
                          &rows),
             SVC_OK);
    T_EQ_INT(svc_db_rows_count(rows), 3);
    T_EQ_INT(svc_db_rows_columns(rows), 5);
    T_EQ_STR(svc_db_rows_name(rows, 1), "i");
    T_EQ_STR(svc_db_rows_name(rows, 4), "the_n");
    T_ASSERT(svc_db_rows_name(rows, 5) == NULL);
    T_EQ_INT(svc_db_rows_i64(rows, 0, 0), id1);
    T_ASSERT(svc_db_rows_i64(rows, 0, 1) == INT64_MIN);
    T_EQ_STR(svc_db_rows_text(rows, 0, 1), "-9223372036854775808");
    T_EQ_STR(svc_db_rows_text(rows, 0, 2), utf8);
    T_EQ_INT(svc_db_rows_len(rows, 0, 2), strlen(utf8));
    bp = svc_db_rows_blob(rows, 0, 3, &blen);
    T_EQ_INT(blen, sizeof(blob));
    T_ASSERT(memcmp(bp, blob, sizeof(blob)) == 0);
    T_ASSERT(svc_db_rows_is_null(rows, 0, 4));
    T_ASSERT(svc_db_rows_text(rows, 0, 4) == NULL);
    T_EQ_INT(svc_db_rows_i64(rows, 0, 4), 0);
    T_ASSERT(svc_db_rows_i64(rows, 1, 1) == INT64_MAX);
    T_EQ_STR(svc_db_rows_text(rows, 1, 2), "abc");
    T_ASSERT(!svc_db_rows_is_null(rows, 1, 3));
    T_EQ_INT(svc_db_rows_len(rows, 1, 3), 0);
    T_ASSERT(svc_db_rows_is_null(rows, 1, 4));
    T_ASSERT(!svc_db_rows_is_null(rows, 2, 2));
    T_EQ_STR(svc_db_rows_text(rows, 2, 2), "");
    T_ASSERT(svc_db_rows_is_null(rows, 2, 3));
    T_EQ_INT(svc_db_rows_i64(rows, 2, 4), 1);
    /* out of range reads as NULL */
    T_ASSERT(svc_db_rows_is_null(rows, 3, 0));
    T_ASSERT(svc_db_rows_text(rows, 0, 9) == NULL);
    T_ASSERT(svc_db_rows_blob(rows, 9, 0, &blen) == NULL && blen == 0);
    svc_db_rows_destroy(&rows);
    T_ASSERT(rows == NULL);

    /* text that is an integer reads as one; other text as 0 */
    struct svc_db_param p4[] = {SVC_DB_TEXT("12345"), SVC_DB_TEXT("12x"), SVC_DB_TEXT(" 1")};
    T_EQ_INT(svc_db_query(c, "SELECT ?, ?, ?", p4, 3, &rows), SVC_OK);
    T_EQ_INT(svc_db_rows_i64(rows, 0, 0), 12345);
    T_EQ_INT(svc_db_rows_i64(rows, 0, 1), 0);
    T_EQ_INT(svc_db_rows_i64(rows, 0, 2), 0);
    svc_db_rows_destroy(&rows);

    /* big values: a 1 MiB blob and a 300-byte text (past the inline fetch buffer) */
    size_t big_n = 1024 * 1024;
    unsigned char *big = malloc(big_n);
    char longtext[301];
    T_ASSERT(big != NULL);
    for (size_t i = 0; i < big_n; i++)
        big[i] = (unsigned char)(i * 7 + (i >> 9));
    memset(longtext, 'L', 300);
    longtext[300] = '\0';
    struct svc_db_param p5[] = {SVC_DB_I64(5), SVC_DB_TEXT(longtext), SVC_DB_BLOB(big, big_n)};
    exec_p(c, "INSERT INTO tdb_params (i, t, b) VALUES (?, ?, ?)", p5, 3, NULL);
    struct svc_db_param p6[] = {SVC_DB_I64(5)};
    T_EQ_INT(svc_db_query(c, "SELECT t, b, i FROM tdb_params WHERE i = ?", p6, 1, &rows), SVC_OK);
    T_EQ_INT(svc_db_rows_count(rows), 1);
    T_EQ_STR(svc_db_rows_text(rows, 0, 0), longtext);
    bp = svc_db_rows_blob(rows, 0, 1, &blen);
    T_EQ_INT(blen, big_n);
    T_ASSERT(memcmp(bp, big, big_n) == 0);
    T_EQ_INT(svc_db_rows_i64(rows, 0, 2), 5);
    svc_db_rows_destroy(&rows);
    free(big);

    /* doubles come back as text */
    T_EQ_INT(svc_db_query(c, "SELECT 1.5 * 2, 0.25", NULL, 0, &rows), SVC_OK);
    /* SQLite: REAL 3.0 prints as "3"; MariaDB: DECIMAL "3.0" is not integer text */
    T_EQ_STR(svc_db_rows_text(rows, 0, 0), IS_MY ? "3.0" : "3");
    T_EQ_INT(svc_db_rows_i64(rows, 0, 0), IS_MY ? 0 : 3);
    T_ASSERT(strncmp(svc_db_rows_text(rows, 0, 1), "0.25", 4) == 0);
    svc_db_rows_destroy(&rows);

    /* argument errors */
    T_EQ_INT(svc_db_exec(c, "INSERT INTO tdb_params (i) VALUES (?)", p6, 0, NULL, NULL),
             SVC_EINVAL);
    T_ASSERT(strstr(svc__db_last_error(c), "placeholders") != NULL);
    T_EQ_INT(svc_db_exec(c, "INSERT INTO tdb_params (i) VALUES (?)", NULL, 1, NULL, NULL),
             SVC_EINVAL);
    T_EQ_INT(svc_db_exec(c, "SELECT 1; SELECT 2", NULL, 0, NULL, NULL),
             IS_MY ? SVC_EIO : SVC_EINVAL);
    T_EQ_INT(svc_db_exec(c, "SELECT 1;  -- trailing comment", NULL, 0, NULL, NULL),
             IS_MY ? SVC_OK : SVC_OK);
    struct svc_db_param bad = {.type = 99};
    T_EQ_INT(svc_db_exec(c, "SELECT ?", &bad, 1, NULL, NULL), SVC_EINVAL);
    T_EQ_INT(svc_db_exec(c, "SELEKT 1", NULL, 0, NULL, NULL), SVC_EIO);
    T_ASSERT(svc__db_last_error(c)[0] != '\0');
    T_EQ_INT(svc_db_query(c, "SELECT 1", NULL, 0, NULL), SVC_EINVAL);
    T_EQ_INT(svc_db_exec(NULL, "SELECT 1", NULL, 0, NULL, NULL), SVC_EINVAL);
    /* a successful call clears the last error */
    exec_ok(c, "SELECT 1");
    T_EQ_STR(svc__db_last_error(c), "");

    svc_db_conn_put(db, &c);
    svc_db_destroy(&db);
}

static void test_unique(void)
{
    struct svc_db *db = db_open(NULL);
    struct svc_db_conn *c = conn_get(db);
    uint64_t n = 0;

    exec_ok(c, PICK("CREATE TABLE tdb_names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
                    "CREATE TABLE tdb_names (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, "
                    "UNIQUE KEY tdb_names_name (name)) ENGINE=InnoDB"));
    struct svc_db_param a[] = {SVC_DB_I64(1), SVC_DB_TEXT("alpha-secret")};
    struct svc_db_param b[] = {SVC_DB_I64(2), SVC_DB_TEXT("beta")};
    exec_p(c, "INSERT INTO tdb_names (id, name) VALUES (?, ?)", a, 2, NULL);
    exec_p(c, "INSERT INTO tdb_names (id, name) VALUES (?, ?)", b, 2, NULL);

    /* rename onto an existing name */
    struct svc_db_param r[] = {SVC_DB_TEXT("alpha-secret"), SVC_DB_I64(2)};
    T_EQ_INT(svc_db_exec(c, "UPDATE tdb_names SET name = ? WHERE id = ?", r, 2, &n, NULL),
             SVC_EEXIST);
    fprintf(stderr, "   unique violation: %s\n", svc__db_last_error(c));
    T_ASSERT(strstr(svc__db_last_error(c), "alpha-secret") == NULL);
    T_ASSERT(strstr(svc__db_last_error(c), IS_MY ? "1062" : "2067") != NULL);

    /* duplicate primary key */
    struct svc_db_param d[] = {SVC_DB_I64(1), SVC_DB_TEXT("gamma")};
    T_EQ_INT(svc_db_exec(c, "INSERT INTO tdb_names (id, name) VALUES (?, ?)", d, 2, NULL, NULL),
             SVC_EEXIST);
    T_ASSERT(strstr(svc__db_last_error(c), IS_MY ? "1062" : "1555") != NULL);

    /* composite key */
    exec_ok(c,
            "CREATE TABLE tdb_pair (a INTEGER NOT NULL, b INTEGER NOT NULL, PRIMARY KEY (a, b))");
    struct svc_db_param pr[] = {SVC_DB_I64(1), SVC_DB_I64(2)};
    exec_p(c, "INSERT INTO tdb_pair (a, b) VALUES (?, ?)", pr, 2, NULL);
    T_EQ_INT(svc_db_exec(c, "INSERT INTO tdb_pair (a, b) VALUES (?, ?)", pr, 2, NULL, NULL),
             SVC_EEXIST);

    /* other constraint failures are plain I/O errors */
    struct svc_db_param nl[] = {SVC_DB_I64(9), SVC_DB_NULL};
    T_EQ_INT(svc_db_exec(c, "INSERT INTO tdb_names (id, name) VALUES (?, ?)", nl, 2, NULL, NULL),
             SVC_EIO);

    /* the connection is fine afterwards */
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_names", NULL, 0), 2);
    svc_db_conn_put(db, &c);
    svc_db_destroy(&db);
}

static void test_affected_rows(void)
{
    struct svc_db *db = db_open(NULL);
    struct svc_db_conn *c = conn_get(db);
    const char *debit = "UPDATE tdb_acct SET bal = bal - ? WHERE id = ? AND bal >= ?";
    uint64_t n = 99;
    int64_t id = 99;

    exec_ok(c, "CREATE TABLE tdb_acct (id INTEGER PRIMARY KEY, bal BIGINT NOT NULL)");
    exec_ok(c, "INSERT INTO tdb_acct (id, bal) VALUES (1, 100)");

    struct svc_db_param p30[] = {SVC_DB_I64(30), SVC_DB_I64(1), SVC_DB_I64(30)};
    exec_p(c, debit, p30, 3, &n);
    T_EQ_INT(n, 1);
    struct svc_db_param p200[] = {SVC_DB_I64(200), SVC_DB_I64(1), SVC_DB_I64(200)};
    exec_p(c, debit, p200, 3, &n);
    T_EQ_INT(n, 0); /* insufficient balance: nothing matched */
    /* matched but unchanged still counts (CLIENT_FOUND_ROWS on MariaDB) */
    struct svc_db_param p0[] = {SVC_DB_I64(0), SVC_DB_I64(1), SVC_DB_I64(0)};
    exec_p(c, debit, p0, 3, &n);
    T_EQ_INT(n, 1);
    struct svc_db_param p_none[] = {SVC_DB_I64(1), SVC_DB_I64(999), SVC_DB_I64(1)};
    exec_p(c, debit, p_none, 3, &n);
    T_EQ_INT(n, 0);
    T_EQ_INT(q_i64(c, "SELECT bal FROM tdb_acct WHERE id = 1", NULL, 0), 70);

    /* last_insert_id: the new id for INSERTs, 0 otherwise */
    exec_ok(c, PICK("CREATE TABLE tdb_auto (id INTEGER PRIMARY KEY AUTOINCREMENT, v INTEGER)",
                    "CREATE TABLE tdb_auto (id BIGINT AUTO_INCREMENT PRIMARY KEY, v BIGINT)"));
    int64_t id1 = 0, id2 = 0;
    T_EQ_INT(svc_db_exec(c, "INSERT INTO tdb_auto (v) VALUES (1)", NULL, 0, &n, &id1), SVC_OK);
    T_EQ_INT(n, 1);
    T_EQ_INT(svc_db_exec(c, "INSERT INTO tdb_auto (v) VALUES (2)", NULL, 0, &n, &id2), SVC_OK);
    T_ASSERT(id1 > 0);
    T_EQ_INT(id2, id1 + 1);
    T_EQ_INT(svc_db_exec(c, "UPDATE tdb_auto SET v = v + 1", NULL, 0, &n, &id), SVC_OK);
    T_EQ_INT(n, 2);
    T_EQ_INT(id, 0);
    T_EQ_INT(svc_db_exec(c, "DELETE FROM tdb_auto WHERE v = 3", NULL, 0, &n, &id), SVC_OK);
    T_EQ_INT(n, 1);
    T_EQ_INT(id, 0);
    /* a SELECT through exec: rows discarded, 0 affected, connection still in sync */
    T_EQ_INT(svc_db_exec(c, "SELECT id FROM tdb_auto UNION ALL SELECT id FROM tdb_auto", NULL, 0,
                         &n, &id),
             SVC_OK);
    T_EQ_INT(n, 0);
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_auto", NULL, 0), 1);
    svc_db_conn_put(db, &c);
    svc_db_destroy(&db);
}

static int tx_insert_fail(void *arg, struct svc_db_conn *c)
{
    (void)arg;
    exec_ok(c, "INSERT INTO tdb_tx (v) VALUES (100)");
    return SVC_ENOTFOUND;
}

static int tx_insert_ok(void *arg, struct svc_db_conn *c)
{
    (void)arg;
    exec_ok(c, "INSERT INTO tdb_tx (v) VALUES (200)");
    return SVC_OK;
}

static void test_transactions(void)
{
    struct svc_db *db = db_open(NULL);
    struct svc_db_conn *c = conn_get(db);

    exec_ok(c, PICK("CREATE TABLE tdb_tx (v INTEGER)", "CREATE TABLE tdb_tx (v BIGINT) "
                                                       "ENGINE=InnoDB"));
    T_EQ_INT(svc_db_in_tx(c), 0);
    T_EQ_INT(svc_db_begin(c), SVC_OK);
    T_EQ_INT(svc_db_in_tx(c), 1);
    T_EQ_INT(svc_db_begin(c), SVC_EINVAL); /* no nesting */
    exec_ok(c, "INSERT INTO tdb_tx (v) VALUES (1)");
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_tx", NULL, 0), 1); /* own writes visible */
    T_EQ_INT(svc_db_rollback(c), SVC_OK);
    T_EQ_INT(svc_db_in_tx(c), 0);
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_tx", NULL, 0), 0);

    T_EQ_INT(svc_db_begin(c), SVC_OK);
    exec_ok(c, "INSERT INTO tdb_tx (v) VALUES (2)");
    T_EQ_INT(svc_db_commit(c), SVC_OK);
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_tx", NULL, 0), 1);
    T_EQ_INT(svc_db_commit(c), SVC_EINVAL);
    T_EQ_INT(svc_db_rollback(c), SVC_EINVAL);

    /* another connection does not see uncommitted work */
    struct svc_db_conn *c2 = conn_get(db);
    T_EQ_INT(svc_db_begin(c), SVC_OK);
    exec_ok(c, "INSERT INTO tdb_tx (v) VALUES (3)");
    T_EQ_INT(q_i64(c2, "SELECT COUNT(*) FROM tdb_tx", NULL, 0), 1);
    T_EQ_INT(svc_db_commit(c), SVC_OK);
    T_EQ_INT(q_i64(c2, "SELECT COUNT(*) FROM tdb_tx", NULL, 0), 2);
    svc_db_conn_put(db, &c2);

    /* putting a connection back inside a transaction rolls it back */
    T_EQ_INT(svc_db_begin(c), SVC_OK);
    exec_ok(c, "INSERT INTO tdb_tx (v) VALUES (4)");
    svc_db_conn_put(db, &c);
    c = conn_get(db);
    T_EQ_INT(svc_db_in_tx(c), 0);
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_tx", NULL, 0), 2);

    /* SQLite: a transaction begun as plain SQL, which svc_db_begin never saw, is rolled back at
     * the put too; pooled open, it would hide this connection's later writes from the others */
    if (!IS_MY) {
        exec_ok(c, "BEGIN");
        exec_ok(c, "INSERT INTO tdb_tx (v) VALUES (5)");
        svc_db_conn_put(db, &c);
        c = conn_get(db);
        T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_tx", NULL, 0), 2);
        exec_ok(c, "INSERT INTO tdb_tx (v) VALUES (6)");
        c2 = conn_get(db);
        T_EQ_INT(q_i64(c2, "SELECT COUNT(*) FROM tdb_tx", NULL, 0), 3); /* committed: seen */
        svc_db_conn_put(db, &c2);
        exec_ok(c, "DELETE FROM tdb_tx WHERE v = 6");
    }

    /* tx_run: an error from the body rolls back and is returned; success commits */
    T_EQ_INT(svc_db_tx_run(c, tx_insert_fail, NULL), SVC_ENOTFOUND);
    T_EQ_INT(svc_db_in_tx(c), 0);
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_tx WHERE v = 100", NULL, 0), 0);
    T_EQ_INT(svc_db_tx_run(c, tx_insert_ok, NULL), SVC_OK);
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_tx WHERE v = 200", NULL, 0), 1);
    svc_db_conn_put(db, &c);
    svc_db_destroy(&db);
}

/* ---- concurrency -------------------------------------------------------------------------- */

#define CONC_THREADS 8
#define CONC_INCREMENTS 100
#define CONC_TX_INCREMENTS 25

struct conc_arg {
    struct svc_db *db;
    int rc;
    int tx; /* read-modify-write in svc_db_tx_run instead of n = n + 1 */
};

static int tx_rmw(void *arg, struct svc_db_conn *c)
{
    struct svc_db_rows *rows = NULL;
    int rc;

    (void)arg;
    /* read, compute in C, write: only correct if the transaction serialises the writers */
    rc = svc_db_query(c,
                      svc_db_conn_dialect(c) == SVC_DB_MYSQL
                          ? "SELECT n FROM tdb_counter WHERE id = 2 FOR UPDATE"
                          : "SELECT n FROM tdb_counter WHERE id = 2",
                      NULL, 0, &rows);
    if (rc != SVC_OK)
        return rc;
    struct svc_db_param p[] = {SVC_DB_I64(svc_db_rows_i64(rows, 0, 0) + 1)};
    svc_db_rows_destroy(&rows);
    return svc_db_exec(c, "UPDATE tdb_counter SET n = ? WHERE id = 2", p, 1, NULL, NULL);
}

static void *conc_thread(void *argp)
{
    struct conc_arg *a = argp;
    int n = a->tx ? CONC_TX_INCREMENTS : CONC_INCREMENTS;

    a->rc = SVC_OK;
    for (int i = 0; i < n && a->rc == SVC_OK; i++) {
        struct svc_db_conn *c = NULL;
        uint64_t matched = 0;
        if ((a->rc = svc_db_conn_get(a->db, &c, 10000)) != SVC_OK)
            break;
        if (a->tx)
            a->rc = svc_db_tx_run(c, tx_rmw, NULL);
        else
            a->rc = svc_db_exec(c, "UPDATE tdb_counter SET n = n + 1 WHERE id = 1", NULL, 0,
                                &matched, NULL);
        if (a->rc != SVC_OK)
            fprintf(stderr, "   thread: %s [%s]\n", svc_strerror(a->rc), svc__db_last_error(c));
        else if (!a->tx && matched != 1)
            a->rc = SVC_EINTERNAL;
        svc_db_conn_put(a->db, &c);
    }
    svc_db_thread_end();
    return NULL;
}

static void test_concurrent_increments(void)
{
    struct svc_db *db = db_open(NULL);
    struct svc_db_conn *c = conn_get(db);
    pthread_t th[CONC_THREADS];
    struct conc_arg args[CONC_THREADS];
    uint64_t t0;

    exec_ok(c, PICK("CREATE TABLE tdb_counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
                    "CREATE TABLE tdb_counter (id BIGINT PRIMARY KEY, n BIGINT NOT NULL) "
                    "ENGINE=InnoDB"));
    exec_ok(c, "INSERT INTO tdb_counter (id, n) VALUES (1, 0)");
    exec_ok(c, "INSERT INTO tdb_counter (id, n) VALUES (2, 0)");
    svc_db_conn_put(db, &c);

    for (int tx = 0; tx <= 1; tx++) {
        t0 = mono_ms();
        for (int i = 0; i < CONC_THREADS; i++) {
            args[i].db = db;
            args[i].tx = tx;
            T_EQ_INT(pthread_create(&th[i], NULL, conc_thread, &args[i]), 0);
        }
        /* every thread joined before any check fails the test (ThreadSanitizer reports the
         * ones left running as a thread leak) */
        for (int i = 0; i < CONC_THREADS; i++)
            pthread_join(th[i], NULL);
        for (int i = 0; i < CONC_THREADS; i++)
            T_EQ_INT(args[i].rc, SVC_OK);
        fprintf(stderr, "   %d threads, %s: %" PRIu64 " ms\n", CONC_THREADS,
                tx ? "tx read-modify-write" : "n = n + 1", mono_ms() - t0);
    }
    c = conn_get(db);
    T_EQ_INT(q_i64(c, "SELECT n FROM tdb_counter WHERE id = 1", NULL, 0),
             CONC_THREADS * CONC_INCREMENTS);
    T_EQ_INT(q_i64(c, "SELECT n FROM tdb_counter WHERE id = 2", NULL, 0),
             CONC_THREADS * CONC_TX_INCREMENTS);
    svc_db_conn_put(db, &c);
    svc_db_destroy(&db);
}

/* ---- group commit ------------------------------------------------------------------------- */

#define GROUP_THREADS 16
#define GROUP_ITEMS 40

struct group_item_arg {
    int64_t id;
    int want; /* SVC_OK, SVC_ENOTFOUND (a refusal) or SVC_ECONFLICT on the first call only */
    int calls;
};

/* One item: a row in tdb_group_log and n + 1, then the refusal it was told to make. */
static int group_body(void *arg, struct svc_db_conn *c)
{
    struct group_item_arg *it = arg;
    struct svc_db_param p[] = {SVC_DB_I64(it->id)};
    int rc;

    it->calls++;
    if ((rc = svc_db_exec(c, "INSERT INTO tdb_group_log (id) VALUES (?)", p, 1, NULL, NULL)) !=
            SVC_OK ||
        (rc = svc_db_exec(c, "UPDATE tdb_group SET n = n + 1 WHERE id = 1", NULL, 0, NULL, NULL)) !=
            SVC_OK)
        return rc;
    if (it->want == SVC_ECONFLICT)
        return it->calls == 1 ? SVC_ECONFLICT : SVC_OK;
    return it->want;
}

struct group_thread_arg {
    struct svc_db *db;
    int t;
    int ok, refused, bad;
};

static void *group_thread(void *argp)
{
    struct group_thread_arg *a = argp;

    for (int i = 0; i < GROUP_ITEMS; i++) {
        struct group_item_arg it = {(int64_t)a->t * 1000 + i, SVC_OK, 0};
        if (i % 5 == 4)
            it.want = SVC_ENOTFOUND;
        else if (i % 13 == 6)
            it.want = SVC_ECONFLICT;
        int rc = svc_db_tx_group(a->db, group_body, &it);
        if (rc == SVC_OK && it.want != SVC_ENOTFOUND)
            a->ok++;
        else if (rc == SVC_ENOTFOUND && it.want == SVC_ENOTFOUND)
            a->refused++;
        else {
            fprintf(stderr, "   item %lld: %s (wanted %s)\n", (long long)it.id, svc_strerror(rc),
                    svc_strerror(it.want));
            a->bad++;
        }
    }
    svc_db_thread_end();
    return NULL;
}

/*
 * svc_db_tx_group: many threads at once; a refusal rolls back only its own item, a conflict
 * runs the group again item by item, and every committed item is counted exactly once.
 */
static void test_group_commit(void)
{
    struct svc_db *db = db_open(NULL);
    struct svc_db_conn *c = conn_get(db);
    pthread_t th[GROUP_THREADS];
    struct group_thread_arg args[GROUP_THREADS];
    uint64_t groups = 0, txs = 0;
    int ok = 0;

    exec_ok(c, PICK("CREATE TABLE tdb_group (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
                    "CREATE TABLE tdb_group (id BIGINT PRIMARY KEY, n BIGINT NOT NULL) "
                    "ENGINE=InnoDB"));
    exec_ok(c, PICK("CREATE TABLE tdb_group_log (id INTEGER PRIMARY KEY)",
                    "CREATE TABLE tdb_group_log (id BIGINT PRIMARY KEY) ENGINE=InnoDB"));
    exec_ok(c, "INSERT INTO tdb_group (id, n) VALUES (1, 0)");
    svc_db_conn_put(db, &c);

    for (int i = 0; i < GROUP_THREADS; i++) {
        args[i] = (struct group_thread_arg){db, i, 0, 0, 0};
        T_EQ_INT(pthread_create(&th[i], NULL, group_thread, &args[i]), 0);
    }
    for (int i = 0; i < GROUP_THREADS; i++) {
        pthread_join(th[i], NULL);
        T_EQ_INT(args[i].bad, 0);
        T_EQ_INT(args[i].refused, GROUP_ITEMS / 5);
        ok += args[i].ok;
    }
    T_EQ_INT(ok, GROUP_THREADS * (GROUP_ITEMS - GROUP_ITEMS / 5));
    /* 16 threads at once: some groups held more than one transaction */
    svc_db_group_stats(db, &groups, &txs);
    fprintf(stderr, "   %llu transactions in %llu groups\n", (unsigned long long)txs,
            (unsigned long long)groups);
    T_EQ_INT(txs, GROUP_THREADS * GROUP_ITEMS);
    T_ASSERT(groups < txs);
    c = conn_get(db);
    T_EQ_INT(q_i64(c, "SELECT n FROM tdb_group WHERE id = 1", NULL, 0), ok);
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_group_log", NULL, 0), ok);
    /* no refused item left its row */
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_group_log WHERE id % 1000 % 5 = 4", NULL, 0), 0);
    svc_db_conn_put(db, &c);
    svc_db_destroy(&db);
}

/* ---- pool --------------------------------------------------------------------------------- */

struct put_later {
    struct svc_db *db;
    struct svc_db_conn *conn;
};

static void *put_later_thread(void *argp)
{
    struct put_later *a = argp;

    sleep_ms(100);
    svc_db_conn_put(a->db, &a->conn);
    return NULL;
}

static void test_pool_exhaustion(void)
{
    struct svc_db_opts o = {.pool_size = 2, .acquire_timeout_ms = 150};
    struct svc_db *db = db_open(&o);
    struct svc_db_conn *a = conn_get(db), *b = conn_get(db), *x = NULL;
    uint64_t t0;
    pthread_t th;

    T_ASSERT(a != b);
    t0 = mono_ms();
    T_EQ_INT(svc_db_conn_get(db, &x, 0), SVC_ETIMEDOUT);
    T_ASSERT(mono_ms() - t0 < 50);
    T_ASSERT(x == NULL);
    t0 = mono_ms();
    T_EQ_INT(svc_db_conn_get(db, &x, 200), SVC_ETIMEDOUT);
    T_ASSERT(mono_ms() - t0 >= 190 && mono_ms() - t0 < 2000);
    t0 = mono_ms();
    T_EQ_INT(svc_db_conn_get(db, &x, -1), SVC_ETIMEDOUT); /* the pool's acquire_timeout_ms */
    T_ASSERT(mono_ms() - t0 >= 140 && mono_ms() - t0 < 2000);

    /* a waiter wakes up when another thread puts a connection back */
    struct put_later pl = {db, b};
    T_EQ_INT(pthread_create(&th, NULL, put_later_thread, &pl), 0);
    t0 = mono_ms();
    T_EQ_INT(svc_db_conn_get(db, &x, 5000), SVC_OK);
    T_ASSERT(mono_ms() - t0 < 3000);
    T_ASSERT(x == b);
    pthread_join(th, NULL);
    T_EQ_INT(svc_db_ping(db) == SVC_ETIMEDOUT, 1); /* both borrowed */
    svc_db_conn_put(db, &a);
    svc_db_conn_put(db, &x);
    T_EQ_INT(svc_db_ping(db), SVC_OK);
    svc_db_destroy(&db);
}

/* ---- result limits ------------------------------------------------------------------------ */

static void test_result_limits(void)
{
    struct svc_db_opts o = {.max_result_rows = 50, .max_result_bytes = 64 * 1024};
    struct svc_db *db = db_open(&o);
    struct svc_db_conn *c = conn_get(db);
    struct svc_db_rows *rows = NULL;
    const char *seq = "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < ?) "
                      "SELECT x FROM s";

    struct svc_db_param p50[] = {SVC_DB_I64(50)};
    T_EQ_INT(svc_db_query(c, seq, p50, 1, &rows), SVC_OK);
    T_EQ_INT(svc_db_rows_count(rows), 50);
    T_EQ_INT(svc_db_rows_i64(rows, 49, 0), 50);
    svc_db_rows_destroy(&rows);
    struct svc_db_param p5000[] = {SVC_DB_I64(5000)};
    T_EQ_INT(svc_db_query(c, seq, p5000, 1, &rows), SVC_ETOOLARGE);
    T_ASSERT(rows == NULL);
    T_EQ_INT(q_i64(c, "SELECT 7", NULL, 0), 7); /* the rest was drained */

    /* bytes: one 100 kB value, and 40 rows of 2 kB */
    struct svc_db_param pbig[] = {SVC_DB_I64(100000)};
    T_EQ_INT(svc_db_query(c, PICK("SELECT zeroblob(?)", "SELECT REPEAT('x', ?)"), pbig, 1, &rows),
             SVC_ETOOLARGE);
    T_EQ_INT(q_i64(c, "SELECT 8", NULL, 0), 8);
    struct svc_db_param p40[] = {SVC_DB_I64(40)};
    T_EQ_INT(svc_db_query(c,
                          PICK("WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s "
                               "WHERE x < ?) SELECT x, zeroblob(2000) FROM s",
                               "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s "
                               "WHERE x < ?) SELECT x, REPEAT('y', 2000) FROM s"),
                          p40, 1, &rows),
             SVC_ETOOLARGE);
    T_EQ_INT(q_i64(c, "SELECT 9", NULL, 0), 9);
    /* exec of a big SELECT just discards it */
    T_EQ_INT(svc_db_exec(c, seq, p5000, 1, NULL, NULL), SVC_OK);
    T_EQ_INT(q_i64(c, "SELECT 10", NULL, 0), 10);

    /* parameter size bound */
    struct svc_db_param huge = SVC_DB_BLOB("x", (size_t)SVC_DB_PARAM_BYTES_MAX + 1);
    T_EQ_INT(svc_db_exec(c, "SELECT ?", &huge, 1, NULL, NULL), SVC_ETOOLARGE);
    svc_db_conn_put(db, &c);
    svc_db_destroy(&db);
}

/* ---- lock conflicts ----------------------------------------------------------------------- */

static void test_conflict(void)
{
    struct svc_db_opts o = {.busy_timeout_ms = 200, .lock_wait_ms = 1000};
    struct svc_db *db = db_open(&o);
    struct svc_db_conn *a = conn_get(db), *b = conn_get(db);
    uint64_t t0;

    exec_ok(a, PICK("CREATE TABLE tdb_lock (id INTEGER PRIMARY KEY, v INTEGER)",
                    "CREATE TABLE tdb_lock (id BIGINT PRIMARY KEY, v BIGINT) ENGINE=InnoDB"));
    exec_ok(a, "INSERT INTO tdb_lock (id, v) VALUES (1, 0)");
    T_EQ_INT(svc_db_begin(a), SVC_OK);
    exec_ok(a, "UPDATE tdb_lock SET v = 1 WHERE id = 1");
    t0 = mono_ms();
    if (IS_MY) {
        /* row lock held by a: b waits innodb_lock_wait_timeout (1 s) then conflicts */
        T_EQ_INT(svc_db_begin(b), SVC_OK);
        T_EQ_INT(svc_db_exec(b, "UPDATE tdb_lock SET v = 2 WHERE id = 1", NULL, 0, NULL, NULL),
                 SVC_ECONFLICT);
        T_ASSERT(strstr(svc__db_last_error(b), "1205") != NULL);
        T_EQ_INT(svc_db_rollback(b), SVC_OK);
    } else {
        /* write lock held by a: b's BEGIN IMMEDIATE waits busy_timeout then conflicts */
        T_EQ_INT(svc_db_begin(b), SVC_ECONFLICT);
        T_EQ_INT(svc_db_in_tx(b), 0);
        /* a plain write outside a transaction, too */
        T_EQ_INT(svc_db_exec(b, "UPDATE tdb_lock SET v = 2 WHERE id = 1", NULL, 0, NULL, NULL),
                 SVC_ECONFLICT);
    }
    fprintf(stderr, "   conflict after %" PRIu64 " ms: %s\n", mono_ms() - t0,
            svc__db_last_error(b));
    T_ASSERT(mono_ms() - t0 >= 150);
    /* readers are not blocked */
    T_EQ_INT(q_i64(b, "SELECT v FROM tdb_lock WHERE id = 1", NULL, 0), 0);
    T_EQ_INT(svc_db_commit(a), SVC_OK);
    T_EQ_INT(q_i64(b, "SELECT v FROM tdb_lock WHERE id = 1", NULL, 0), 1);
    svc_db_conn_put(db, &a);
    svc_db_conn_put(db, &b);
    svc_db_destroy(&db);
}

/* MariaDB deadlock: a and b lock rows in opposite order; one gets ER_LOCK_DEADLOCK. */
struct dl_arg {
    struct svc_db_conn *c;
    int rc;
};

static void *deadlock_thread(void *argp)
{
    struct dl_arg *a = argp;

    a->rc = svc_db_exec(a->c, "UPDATE tdb_lock SET v = 10 WHERE id = 2", NULL, 0, NULL, NULL);
    svc_db_thread_end();
    return NULL;
}

static void test_deadlock_mysql(void)
{
    struct svc_db_opts o = {.lock_wait_ms = 10000};
    struct svc_db *db = db_open(&o);
    struct svc_db_conn *a = conn_get(db), *b = conn_get(db);
    struct dl_arg arg = {a, 0};
    pthread_t th;
    int rc_b;

    /* its own rows: the case also runs alone (T_CASE), without test_conflict's table */
    exec_ok(a,
            "CREATE TABLE IF NOT EXISTS tdb_lock (id BIGINT PRIMARY KEY, v BIGINT) ENGINE=InnoDB");
    exec_ok(a, "DELETE FROM tdb_lock");
    exec_ok(a, "INSERT INTO tdb_lock (id, v) VALUES (1, 0), (2, 0)");
    T_EQ_INT(svc_db_begin(a), SVC_OK);
    T_EQ_INT(svc_db_begin(b), SVC_OK);
    exec_ok(a, "UPDATE tdb_lock SET v = 10 WHERE id = 1");
    exec_ok(b, "UPDATE tdb_lock SET v = 20 WHERE id = 2");
    T_EQ_INT(pthread_create(&th, NULL, deadlock_thread, &arg), 0); /* a waits for row 2 */
    sleep_ms(200);
    rc_b = svc_db_exec(b, "UPDATE tdb_lock SET v = 20 WHERE id = 1", NULL, 0, NULL, NULL);
    if (rc_b != SVC_OK)
        (void)svc_db_rollback(b); /* let a finish if b was the victim */
    pthread_join(th, NULL);
    fprintf(stderr, "   a: %s, b: %s [%s]\n", svc_strerror(arg.rc), svc_strerror(rc_b),
            rc_b != SVC_OK ? svc__db_last_error(b) : svc__db_last_error(a));
    T_ASSERT((arg.rc == SVC_ECONFLICT) != (rc_b == SVC_ECONFLICT));
    T_ASSERT(arg.rc == SVC_OK || rc_b == SVC_OK);
    if (svc_db_in_tx(a))
        (void)svc_db_rollback(a);
    if (svc_db_in_tx(b))
        (void)svc_db_rollback(b);
    svc_db_conn_put(db, &a);
    svc_db_conn_put(db, &b);
    svc_db_destroy(&db);
}

/* ---- MariaDB reconnect -------------------------------------------------------------------- */

static struct svc_db_conn *killer; /* second connection used to KILL the first */

static void kill_conn(struct svc_db_conn *victim)
{
    int64_t id = q_i64(victim, "SELECT CONNECTION_ID()", NULL, 0);
    struct svc_db_param p[] = {SVC_DB_I64(id)};

    exec_p(killer, "KILL CONNECTION ?", p, 1, NULL);
    sleep_ms(100); /* let the server close the socket */
}

static int kill_once_body(void *arg, struct svc_db_conn *c)
{
    int *calls = arg;

    if ((*calls)++ == 0) {
        int64_t id = q_i64(c, "SELECT CONNECTION_ID()", NULL, 0);
        struct svc_db_param p[] = {SVC_DB_I64(id)};
        exec_p(killer, "KILL CONNECTION ?", p, 1, NULL);
        sleep_ms(100);
    }
    return svc_db_exec(c, "INSERT INTO tdb_tx (v) VALUES (77)", NULL, 0, NULL, NULL);
}

/* The connection dies after the body's last statement, before COMMIT is sent: replayed. */
static int kill_before_commit_body(void *arg, struct svc_db_conn *c)
{
    int *calls = arg;
    int rc = svc_db_exec(c, "INSERT INTO tdb_tx (v) VALUES (88)", NULL, 0, NULL, NULL);

    if (rc == SVC_OK && (*calls)++ == 0)
        kill_conn(c);
    return rc;
}

static void test_reconnect_mysql(void)
{
    struct svc_db *db = db_open(NULL);
    struct svc_db_conn *c = conn_get(db);
    int64_t id_before, id_after;
    int calls = 0;

    killer = conn_get(db);
    exec_ok(c, "CREATE TABLE IF NOT EXISTS tdb_tx (v BIGINT) ENGINE=InnoDB");
    exec_ok(c, "DELETE FROM tdb_tx");
    /* warm the statement cache so the reconnect also has to drop cached statements */
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_tx", NULL, 0), 0);

    /* a query after KILL: transparently reconnected */
    id_before = q_i64(c, "SELECT CONNECTION_ID()", NULL, 0);
    kill_conn(c);
    id_after = q_i64(c, "SELECT CONNECTION_ID()", NULL, 0);
    T_ASSERT(id_after != id_before);
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_tx", NULL, 0), 0);

    /* an exec after KILL: reconnected before it is sent */
    kill_conn(c);
    exec_ok(c, "INSERT INTO tdb_tx (v) VALUES (1)");
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_tx", NULL, 0), 1);

    /* the session settings survive a reconnect */
    kill_conn(c);
    struct svc_db_rows *rows = NULL;
    T_EQ_INT(svc_db_query(c, "SELECT @@session.time_zone, @@session.sql_mode", NULL, 0, &rows),
             SVC_OK);
    T_EQ_STR(svc_db_rows_text(rows, 0, 0), "+00:00");
    T_ASSERT(strstr(svc_db_rows_text(rows, 0, 1), "STRICT_ALL_TABLES") != NULL);
    svc_db_rows_destroy(&rows);

    /* inside a transaction: an error, never a silent reconnect */
    T_EQ_INT(svc_db_begin(c), SVC_OK);
    exec_ok(c, "INSERT INTO tdb_tx (v) VALUES (2)");
    kill_conn(c);
    T_EQ_INT(svc_db_exec(c, "INSERT INTO tdb_tx (v) VALUES (3)", NULL, 0, NULL, NULL),
             SVC_EUNAVAIL);
    fprintf(stderr, "   in tx: %s\n", svc__db_last_error(c));
    T_EQ_INT(svc_db_commit(c), SVC_EUNAVAIL);
    T_EQ_INT(svc_db_in_tx(c), 0);
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_tx", NULL, 0), 1); /* 2 and 3 were lost */

    /* rollback on a dead connection is fine */
    T_EQ_INT(svc_db_begin(c), SVC_OK);
    kill_conn(c);
    T_EQ_INT(svc_db_rollback(c), SVC_OK);
    T_EQ_INT(q_i64(c, "SELECT 5", NULL, 0), 5);

    /* tx_run replays a body whose connection died mid-way */
    T_EQ_INT(svc_db_tx_run(c, kill_once_body, &calls), SVC_OK);
    T_EQ_INT(calls, 2);
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_tx WHERE v = 77", NULL, 0), 1);
    calls = 0;
    T_EQ_INT(svc_db_tx_run(c, kill_before_commit_body, &calls), SVC_OK);
    T_EQ_INT(calls, 2);
    T_EQ_INT(q_i64(c, "SELECT COUNT(*) FROM tdb_tx WHERE v = 88", NULL, 0), 1);

    /* begin on a killed idle connection reconnects first */
    kill_conn(c);
    T_EQ_INT(svc_db_begin(c), SVC_OK);
    T_EQ_INT(svc_db_rollback(c), SVC_OK);

    /* ping through the pool after the idle connections were killed */
    svc_db_conn_put(db, &c);
    struct svc_db_conn *k = killer;
    killer = NULL;
    svc_db_conn_put(db, &k);
    c = conn_get(db);
    killer = conn_get(db);
    kill_conn(c);
    svc_db_conn_put(db, &c);
    T_EQ_INT(svc_db_ping(db), SVC_OK);
    svc_db_conn_put(db, &killer);
    svc_db_destroy(&db);
}

/* ---- driver ------------------------------------------------------------------------------- */

static void run_suite(const char *name)
{
    struct svc_db *db;
    struct svc_db_conn *c;

    fprintf(stderr, "== %s\n", name);
    if (IS_MY) {
        db = db_open(NULL);
        c = conn_get(db);
        drop_tables(c);
        svc_db_conn_put(db, &c);
        svc_db_destroy(&db);
    }
    T_RUN(test_open_describe);
    T_RUN(test_migrations);
    T_RUN(test_migrations_concurrent);
    T_RUN(test_params);
    T_RUN(test_unique);
    T_RUN(test_affected_rows);
    T_RUN(test_transactions);
    T_RUN(test_concurrent_increments);
    T_RUN(test_group_commit);
    T_RUN(test_pool_exhaustion);
    T_RUN(test_result_limits);
    T_RUN(test_conflict);
    if (!IS_MY) {
        T_RUN(test_sqlite_fresh_concurrent);
        T_RUN(test_sqlite_other_process);
    }
    if (IS_MY) {
        T_RUN(test_deadlock_mysql);
        T_RUN(test_reconnect_mysql);
        db = db_open(NULL);
        c = conn_get(db);
        drop_tables(c);
        svc_db_conn_put(db, &c);
        svc_db_destroy(&db);
    }
    fprintf(stderr, "%s: ok\n", name);
}

static void rm_tree(const char *dir)
{
    char cmd[600];

    /* the directory name comes from mkdtemp: no shell metacharacters */
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", dir);
}

/* Also runs when a check fails (T_FAIL exits), so failing runs leave no temp dir behind. */
static void cleanup_tmp(void)
{
    if (tmp_root[0] != '\0' && strcmp(tmp_root, "/tmp/test_db.XXXXXX") != 0)
        rm_tree(tmp_root);
    tmp_root[0] = '\0';
}

int main(int argc, char **argv)
{
    const char *mysql_dsn = getenv("TEST_MYSQL_DSN");
    char data_dir[400];

    if (argc == 4 && strcmp(argv[1], "--other-process") == 0)
        return other_process_main(argv[2], argv[3]);

    setvbuf(stderr, NULL, _IONBF, 0);
    T_RUN(test_dsn_url);
    T_RUN(test_dsn_go);
    T_RUN(test_dsn_sqlite);
    T_RUN(test_dsn_bad);
    T_RUN(test_open_errors);
    T_RUN(test_memory);

    snprintf(tmp_root, sizeof(tmp_root), "/tmp/test_db.XXXXXX");
    T_ASSERT(mkdtemp(tmp_root) != NULL);
    atexit(cleanup_tmp);
    snprintf(data_dir, sizeof(data_dir), "%s/data/nested", tmp_root);
    cur_dsn = "";
    cur_dir = data_dir;
    cur_dialect = SVC_DB_SQLITE;
    run_suite("sqlite");
    cleanup_tmp();

    if (mysql_dsn == NULL || mysql_dsn[0] == '\0') {
        const char *req = getenv("TEST_REQUIRE_MYSQL");
        svc_db_teardown();
        /* scripts/with-servers --mariadb asks for MariaDB (make unit, CI): a missing DSN there is a
         * broken setup, not a reason to pass without half of the tests. */
        if (req != NULL && strcmp(req, "1") == 0) {
            fprintf(stderr, "mysql: TEST_MYSQL_DSN unset but TEST_REQUIRE_MYSQL=1: failing\n");
            return 1;
        }
        fprintf(stderr, "mysql: skipped (TEST_MYSQL_DSN unset): exit %d\n", TEST_SKIP_CODE);
        return TEST_SKIP_CODE;
    } else {
        cur_dsn = mysql_dsn;
        cur_dir = NULL;
        cur_dialect = SVC_DB_MYSQL;
        run_suite("mysql");
    }
    svc_db_teardown();
    return 0;
}
