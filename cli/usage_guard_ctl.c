/*
 * usage_guard_ctl.c
 *		The operators' command line for files: sync entitlements from the
 *		JSON artifact, export the usage report as JSON and CSV, show a
 *		tenant's status.  Everything it does is a usage_guard SQL function;
 *		this tool only moves files in and out.
 *
 * Connection: the usual libpq environment (PGHOST, PGPORT, PGUSER,
 * PGDATABASE, ...) or --dbname with a connection string.
 * Exit codes: 0 success, 1 bad usage, 2 cannot connect, 3 the database
 * refused (invalid artifact, unknown tenant, ...), 4 file error.
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "libpq-fe.h"

/* set by the Makefile from usage_guard.control */
#ifndef USAGE_GUARD_VERSION
#define USAGE_GUARD_VERSION "unknown"
#endif

#define EXIT_USAGE 1
#define EXIT_CONNECT 2
#define EXIT_SQL 3
#define EXIT_FILE 4

#define DEFAULT_ARTIFACT "var/reports/usage-entitlements.json"
#define DEFAULT_JSON "var/reports/usage-dashboard.json"
#define DEFAULT_CSV "var/reports/usage-dashboard.csv"
#define MAX_LIST 64

static const char *progname = "usage_guard_ctl";
static const char *conninfo = "";
static PGconn *conn = NULL;

static void
usage(FILE *out)
{
	fprintf(out,
			"%s: operate usage_guard from files\n\n"
			"Usage:\n"
			"  %s [--dbname CONNSTR] sync-entitlements [--path FILE] [--plan P]... [--dry-run]\n"
			"                        [--prune-missing] [--allow-disabled-artifact]\n"
			"  %s [--dbname CONNSTR] export-entitlements [--path FILE] [--plan P]...\n"
			"  %s [--dbname CONNSTR] export-report --period-start TS --period-end TS [--tenant T]\n"
			"                        [--plan P] [--feature F]... [--warn-threshold X]\n"
			"                        [--output-json FILE] [--output-csv FILE] [--no-json] [--no-csv]\n"
			"  %s [--dbname CONNSTR] status --tenant T [--at TS]\n\n"
			"Defaults: --path %s, --output-json %s, --output-csv %s.\n"
			"Connection: libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE) or --dbname.\n"
			"Exit codes: 0 ok, 1 usage, 2 connection, 3 refused by the database, 4 file error.\n",
			progname, progname, progname, progname, progname, DEFAULT_ARTIFACT, DEFAULT_JSON, DEFAULT_CSV);
}

static void die(int code, const char *fmt,...) __attribute__((format(printf, 2, 3), noreturn));

static void
die(int code, const char *fmt,...)
{
	va_list		ap;

	fprintf(stderr, "%s: ", progname);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

/* Append a repeatable option's value (--plan, --feature) */
static void
append_value(char **list, int *n, const char *option, char *value)
{
	if (*n == MAX_LIST)
		die(EXIT_USAGE, "too many %s options", option);
	list[(*n)++] = value;
}

/* A subcommand takes options only */
static void
no_arguments_left(int argc, char **argv)
{
	if (optind < argc)
		die(EXIT_USAGE, "unexpected argument \"%s\"", argv[optind]);
}

/* A PostgreSQL array literal of text values: {"a","b"} with escapes */
static char *
text_array(char **items, int n)
{
	size_t		len = 3;
	char	   *buf;
	char	   *p;

	for (int i = 0; i < n; i++)
		len += 2 * strlen(items[i]) + 3;
	buf = p = malloc(len);
	if (buf == NULL)
		die(EXIT_FILE, "out of memory");
	*p++ = '{';
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			*p++ = ',';
		*p++ = '"';
		for (const char *s = items[i]; *s; s++)
		{
			if (*s == '"' || *s == '\\')
				*p++ = '\\';
			*p++ = *s;
		}
		*p++ = '"';
	}
	*p++ = '}';
	*p = '\0';
	return buf;
}

/* Read a whole file; exits on error */
static char *
read_file(const char *path)
{
	FILE	   *f = fopen(path, "rb");
	char	   *buf;
	long		size;

	if (f == NULL)
		die(EXIT_FILE, "could not open \"%s\": %s", path, strerror(errno));
	if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
		die(EXIT_FILE, "could not read \"%s\": %s", path, strerror(errno));
	buf = malloc(size + 1);
	if (buf == NULL)
		die(EXIT_FILE, "out of memory");
	if (fread(buf, 1, size, f) != (size_t) size)
		die(EXIT_FILE, "could not read \"%s\"", path);
	buf[size] = '\0';
	fclose(f);
	return buf;
}

/* mkdir -p of a file's directory */
static void
make_parent_dirs(const char *path)
{
	char	   *copy = strdup(path);

	for (char *p = copy + 1; p && *p; p++)
	{
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(copy, 0777) != 0 && errno != EEXIST)
			die(EXIT_FILE, "could not create directory \"%s\": %s", copy, strerror(errno));
		*p = '/';
	}
	free(copy);
}

static FILE *
open_output(const char *path)
{
	FILE	   *f;

	make_parent_dirs(path);
	f = fopen(path, "wb");
	if (f == NULL)
		die(EXIT_FILE, "could not write \"%s\": %s", path, strerror(errno));
	return f;
}

/* The connection, opened on first use (after the options were checked) */
static PGconn *
connection(void)
{
	if (conn == NULL)
	{
		conn = PQconnectdb(conninfo);
		if (PQstatus(conn) != CONNECTION_OK)
			die(EXIT_CONNECT, "could not connect: %s", PQerrorMessage(conn));
	}
	return conn;
}

/* Run a statement; on failure print the server's message, detail and hint and exit 3 */
static PGresult *
run(const char *sql, int nparams, const char *const *params, ExecStatusType expect)
{
	PGresult   *res = PQexecParams(connection(), sql, nparams, NULL, params, NULL, NULL, 0);

	if (PQresultStatus(res) != expect)
	{
		const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
		const char *hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		fprintf(stderr, "%s: %s", progname, PQresultErrorMessage(res));
		if (detail)
			fprintf(stderr, "%s: detail: %s\n", progname, detail);
		if (hint)
			fprintf(stderr, "%s: hint: %s\n", progname, hint);
		if (state)
			fprintf(stderr, "%s: sqlstate: %s\n", progname, state);
		PQclear(res);
		PQfinish(conn);
		exit(EXIT_SQL);
	}
	return res;
}

static const char *
cell(PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col) ? "-" : PQgetvalue(res, row, col);
}

static int
sync_entitlements(int argc, char **argv)
{
	static struct option opts[] = {
		{"path", required_argument, NULL, 'p'},
		{"plan", required_argument, NULL, 'P'},
		{"dry-run", no_argument, NULL, 'd'},
		{"prune-missing", no_argument, NULL, 'r'},
		{"allow-disabled-artifact", no_argument, NULL, 'a'},
		{NULL, 0, NULL, 0}
	};
	const char *path = DEFAULT_ARTIFACT;
	char	   *plans[MAX_LIST];
	int			nplans = 0;
	int			dry_run = 0,
				prune = 0,
				allow = 0;
	int			c;
	const char *params[5];
	PGresult   *res;
	int			counts[3] = {0, 0, 0};

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1)
	{
		switch (c)
		{
			case 'p':
				path = optarg;
				break;
			case 'P':
				append_value(plans, &nplans, "--plan", optarg);
				break;
			case 'd':
				dry_run = 1;
				break;
			case 'r':
				prune = 1;
				break;
			case 'a':
				allow = 1;
				break;
			default:
				usage(stderr);
				return EXIT_USAGE;
		}
	}
	no_arguments_left(argc, argv);

	params[0] = read_file(path);
	params[1] = nplans > 0 ? text_array(plans, nplans) : NULL;
	params[2] = dry_run ? "true" : "false";
	params[3] = prune ? "true" : "false";
	params[4] = allow ? "true" : "false";
	res = run(
			  "SELECT action, plan_code, feature_key, period, old_soft_limit, old_hard_limit,"
			  "       new_soft_limit, new_hard_limit"
			  "  FROM usage_guard.sync_entitlements($1::jsonb, $2::text[], $3::boolean, $4::boolean, $5::boolean)",
			  5, params, PGRES_TUPLES_OK);
	for (int i = 0; i < PQntuples(res); i++)
	{
		const char *action = PQgetvalue(res, i, 0);

		printf("%-6s %s %s %s: soft %s -> %s, hard %s -> %s\n", action, cell(res, i, 1),
			   cell(res, i, 2), cell(res, i, 3), cell(res, i, 4), cell(res, i, 6),
			   cell(res, i, 5), cell(res, i, 7));
		counts[strcmp(action, "insert") == 0 ? 0 : strcmp(action, "update") == 0 ? 1 : 2]++;
	}
	printf("%d inserted, %d updated, %d deleted%s\n", counts[0], counts[1], counts[2],
		   dry_run ? " (dry run: nothing changed)" : "");
	PQclear(res);
	return 0;
}

/* export-entitlements: the artifact of the catalog's plans, to a file */
static int
export_entitlements(int argc, char **argv)
{
	static struct option opts[] = {
		{"path", required_argument, NULL, 'p'},
		{"plan", required_argument, NULL, 'P'},
		{NULL, 0, NULL, 0}
	};
	const char *path = DEFAULT_ARTIFACT;
	char	   *plans[MAX_LIST];
	int			nplans = 0;
	int			c;
	const char *params[1];
	PGresult   *res;
	FILE	   *f;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1)
	{
		switch (c)
		{
			case 'p':
				path = optarg;
				break;
			case 'P':
				append_value(plans, &nplans, "--plan", optarg);
				break;
			default:
				usage(stderr);
				return EXIT_USAGE;
		}
	}
	no_arguments_left(argc, argv);

	params[0] = nplans > 0 ? text_array(plans, nplans) : NULL;
	res = run("SELECT jsonb_pretty(usage_guard.entitlements_artifact($1::text[])),"
			  "       jsonb_array_length(usage_guard.entitlements_artifact($1::text[]) -> 'plans')",
			  1, params, PGRES_TUPLES_OK);
	f = open_output(path);
	if (fprintf(f, "%s\n", PQgetvalue(res, 0, 0)) < 0 || fclose(f) != 0)
		die(EXIT_FILE, "could not write \"%s\": %s", path, strerror(errno));
	printf("wrote %s plan(s) to %s\n", PQgetvalue(res, 0, 1), path);
	PQclear(res);
	return 0;
}

static int
export_report(int argc, char **argv)
{
	static struct option opts[] = {
		{"tenant", required_argument, NULL, 't'},
		{"plan", required_argument, NULL, 'P'},
		{"period-start", required_argument, NULL, 's'},
		{"period-end", required_argument, NULL, 'e'},
		{"feature", required_argument, NULL, 'f'},
		{"warn-threshold", required_argument, NULL, 'w'},
		{"output-json", required_argument, NULL, 'j'},
		{"output-csv", required_argument, NULL, 'c'},
		{"no-json", no_argument, NULL, 'J'},
		{"no-csv", no_argument, NULL, 'C'},
		{NULL, 0, NULL, 0}
	};
	const char *params[6] = {NULL, NULL, NULL, NULL, NULL, "0.8"};
	char	   *features[MAX_LIST];
	int			nfeatures = 0;
	const char *json_path = DEFAULT_JSON;
	const char *csv_path = DEFAULT_CSV;
	int			c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1)
	{
		switch (c)
		{
			case 't':
				params[0] = optarg;
				break;
			case 'P':
				params[1] = optarg;
				break;
			case 's':
				params[2] = optarg;
				break;
			case 'e':
				params[3] = optarg;
				break;
			case 'f':
				append_value(features, &nfeatures, "--feature", optarg);
				break;
			case 'w':
				params[5] = optarg;
				break;
			case 'j':
				json_path = optarg;
				break;
			case 'c':
				csv_path = optarg;
				break;
			case 'J':
				json_path = NULL;
				break;
			case 'C':
				csv_path = NULL;
				break;
			default:
				usage(stderr);
				return EXIT_USAGE;
		}
	}
	no_arguments_left(argc, argv);
	if (params[2] == NULL || params[3] == NULL)
		die(EXIT_USAGE, "--period-start and --period-end are required");
	if (json_path == NULL && csv_path == NULL)
		die(EXIT_USAGE, "--no-json and --no-csv leave nothing to export");
	params[4] = nfeatures > 0 ? text_array(features, nfeatures) : NULL;

	if (json_path != NULL)
	{
		PGresult   *res = run(
							  "SELECT jsonb_pretty(usage_guard.usage_report_json($1, $2, $3::timestamptz,"
							  " $4::timestamptz, $5::text[], $6::numeric))",
							  6, params, PGRES_TUPLES_OK);
		FILE	   *f = open_output(json_path);

		fprintf(f, "%s\n", PQgetvalue(res, 0, 0));
		if (fclose(f) != 0)
			die(EXIT_FILE, "could not write \"%s\": %s", json_path, strerror(errno));
		printf("wrote %s\n", json_path);
		PQclear(res);
	}
	if (csv_path != NULL)
	{
		PGresult   *res;
		FILE	   *f;
		char	   *buf;
		int			n;

		/* COPY has no parameters: validate through a prepared query first */
		res = run(
				  "SELECT format('COPY (SELECT * FROM usage_guard.usage_report(%L, %L, %L::timestamptz,"
				  " %L::timestamptz, %L::text[], %L::numeric)) TO STDOUT WITH (FORMAT csv, HEADER)',"
				  " $1::text, $2::text, $3::timestamptz, $4::timestamptz, $5::text[], $6::numeric)",
				  6, params, PGRES_TUPLES_OK);
		buf = strdup(PQgetvalue(res, 0, 0));
		PQclear(res);
		res = run(buf, 0, NULL, PGRES_COPY_OUT);
		PQclear(res);
		f = open_output(csv_path);
		while ((n = PQgetCopyData(conn, &buf, 0)) > 0)
		{
			fwrite(buf, 1, n, f);
			PQfreemem(buf);
		}
		res = PQgetResult(conn);
		if (n == -2 || PQresultStatus(res) != PGRES_COMMAND_OK)
			die(EXIT_SQL, "%s", PQerrorMessage(conn));
		PQclear(res);
		if (fclose(f) != 0)
			die(EXIT_FILE, "could not write \"%s\": %s", csv_path, strerror(errno));
		printf("wrote %s\n", csv_path);
	}
	return 0;
}

static int
status(int argc, char **argv)
{
	static struct option opts[] = {
		{"tenant", required_argument, NULL, 't'},
		{"at", required_argument, NULL, 'a'},
		{NULL, 0, NULL, 0}
	};
	const char *params[2] = {NULL, NULL};
	PGresult   *res;
	int			c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1)
	{
		switch (c)
		{
			case 't':
				params[0] = optarg;
				break;
			case 'a':
				params[1] = optarg;
				break;
			default:
				usage(stderr);
				return EXIT_USAGE;
		}
	}
	no_arguments_left(argc, argv);
	if (params[0] == NULL)
		die(EXIT_USAGE, "--tenant is required");
	res = run(
			  "SELECT feature_key, period, usage, coalesce(soft_limit::text, '-'),"
			  "       coalesce(hard_limit::text, 'unlimited'), coalesce(remaining::text, '-'),"
			  "       status, to_char(resets_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
			  "  FROM usage_guard.usage_status($1, coalesce($2::timestamptz, now()))",
			  2, params, PGRES_TUPLES_OK);
	printf("%-24s %-15s %16s %12s %12s %16s %-12s %s\n", "feature", "period", "usage",
		   "soft", "hard", "remaining", "status", "resets at");
	for (int i = 0; i < PQntuples(res); i++)
		printf("%-24s %-15s %16s %12s %12s %16s %-12s %s\n", cell(res, i, 0), cell(res, i, 1),
			   cell(res, i, 2), cell(res, i, 3), cell(res, i, 4), cell(res, i, 5),
			   cell(res, i, 6), cell(res, i, 7));
	PQclear(res);
	return 0;
}

int
main(int argc, char **argv)
{
	const char *command;
	int			first = 1;
	int			rc;

	while (first < argc && argv[first][0] == '-')
	{
		if (strcmp(argv[first], "--help") == 0 || strcmp(argv[first], "-h") == 0)
		{
			usage(stdout);
			return 0;
		}
		if (strcmp(argv[first], "--version") == 0)
		{
			printf("usage_guard_ctl (usage_guard) %s\n", USAGE_GUARD_VERSION);
			return 0;
		}
		if (strcmp(argv[first], "--dbname") == 0 && first + 1 < argc)
		{
			conninfo = argv[first + 1];
			first += 2;
			continue;
		}
		if (strncmp(argv[first], "--dbname=", 9) == 0)
		{
			conninfo = argv[first] + 9;
			first++;
			continue;
		}
		fprintf(stderr, "%s: unknown option \"%s\"\n", progname, argv[first]);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (first >= argc)
	{
		usage(stderr);
		return EXIT_USAGE;
	}
	command = argv[first];
	if (strcmp(command, "sync-entitlements") != 0 && strcmp(command, "export-report") != 0 &&
		strcmp(command, "status") != 0 && strcmp(command, "export-entitlements") != 0)
	{
		fprintf(stderr, "%s: unknown command \"%s\"\n", progname, command);
		usage(stderr);
		return EXIT_USAGE;
	}

	/* the subcommand parses its own options: hand it argv from the command on */
	if (strcmp(command, "sync-entitlements") == 0)
		rc = sync_entitlements(argc - first, argv + first);
	else if (strcmp(command, "export-report") == 0)
		rc = export_report(argc - first, argv + first);
	else if (strcmp(command, "export-entitlements") == 0)
		rc = export_entitlements(argc - first, argv + first);
	else
		rc = status(argc - first, argv + first);
	if (conn != NULL)
		PQfinish(conn);
	return rc;
}
