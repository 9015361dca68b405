/*-------------------------------------------------------------------------
 *
 * rules.c
 *	  Rules-based models: create_rule_model() and alter_rule_model() turn
 *	  a JSON array of rules into a model function, for users who write no
 *	  function themselves.
 *
 * A rule is {"when": expr, "set": {property: expr, ...}, "alert":
 * {"severity": text, "message": expr}, "timer": {"name": text, "after":
 * expr}, "outbox": expr}, every expr an SQL expression over state, event,
 * twin_id and digitaltwin.current_event().  The rules become one plpgsql
 * function, <name>_rules_v<version>, created by the caller in the first
 * schema of the caller's search_path and registered with create_model() /
 * alter_model() as the caller: it is exactly a model function the caller
 * could have written, with the same rights and restrictions, and nothing
 * here runs with other rights (only the rules column of digitaltwin.models
 * is written as the extension's owner).
 *
 * The expressions are pasted into the function's text, so each must be
 * one expression and nothing else: it is parsed alone as "SELECT (expr)"
 * and refused unless that is a single SELECT of one target without any
 * clause, which also rules out anything that would close the parentheses
 * around it; then it is analysed over columns state (jsonb), event and
 * twin_id, so that an unknown name or a type error is refused
 * at creation, with the rule, the key and the position.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "parser/parser.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/guc.h"
#include "parser/parse_func.h"
#include "nodes/value.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_create_rule_model);
PG_FUNCTION_INFO_V1(digitaltwin_alter_rule_model);

/* the alias of the columns an expression is checked over: the function's name */
static const char *rule_alias = "r";

/* "SELECT (" before an expression when it is checked */
#define RULE_EXPR_PREFIX	"SELECT ("

typedef struct RuleCheck
{
	int			rule;			/* 1-based */
	const char *key;			/* "when", "set.speed", "alert.message"... */
	const char *expr;
} RuleCheck;

static void
dt_rule_error(int rule, const char *key, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("rule %d: %s", rule, what),
			 key ? errdetail("In \"%s\".", key) : 0,
			 errhint("A rule is {\"when\": expr, \"set\": {\"property\": expr}, \"alert\": {\"severity\": \"warning\", \"message\": expr}, \"timer\": {\"name\": \"t\", \"after\": expr}, \"outbox\": expr}, each expr an SQL expression over state, event and twin_id.")));
}

/* ----------------------------------------------------------------
 * Reading the rules (jsonb)
 * ----------------------------------------------------------------
 */

static JsonbValue *
dt_rule_get(JsonbContainer *c, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	return findJsonbValueFromContainer(c, JB_FOBJECT, &k);
}

static char *
dt_rule_string(JsonbValue *v, int rule, const char *key)
{
	if (v == NULL)
		return NULL;
	if (v->type != jbvString)
		dt_rule_error(rule, key, "a string was expected");
	if (v->val.string.len == 0)
		dt_rule_error(rule, key, "an empty string");
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* an object value of the rule: its container, or NULL */
static JsonbContainer *
dt_rule_object(JsonbValue *v, int rule, const char *key)
{
	if (v == NULL)
		return NULL;
	if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		dt_rule_error(rule, key, "an object was expected");
	return v->val.binary.data;
}

/* Only the keys a rule may have: a typo must not be silently ignored. */
static void
dt_rule_check_keys(JsonbContainer *c, int rule, const char *const *allowed, const char *where)
{
	JsonbIterator *it = JsonbIteratorInit(c);
	JsonbValue	v;
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		const char *const *a;
		char	   *key;

		if (tok != WJB_KEY)
			continue;
		key = pnstrdup(v.val.string.val, v.val.string.len);
		for (a = allowed; *a != NULL; a++)
			if (strcmp(*a, key) == 0)
				break;
		if (*a == NULL)
			dt_rule_error(rule, where, psprintf("unknown key \"%s\"", key));
	}
}

/* ----------------------------------------------------------------
 * Checking an expression
 * ----------------------------------------------------------------
 */

/*
 * Refuse an expression with the error the parser or the analyser gave,
 * the rule and the key, and the position in the expression when the
 * error has one inside it: where to look, not just what is wrong.  The
 * checks run "SELECT (expr)..."; the raw parser reports the position as
 * cursorpos, SPI_prepare() as an internal position.
 */
static void
dt_rule_refuse(const RuleCheck *chk, ErrorData *edata)
{
	int			at = edata->cursorpos > 0 ? edata->cursorpos : edata->internalpos;
	int			pos = at - (int) strlen(RULE_EXPR_PREFIX);
	bool		inside = at > 0 && pos > 0 && pos <= (int) strlen(chk->expr) + 1;

	ereport(ERROR,
			(errcode(edata->sqlerrcode),
			 errmsg("rule %d, \"%s\": %s", chk->rule, chk->key, edata->message),
			 inside ? errdetail("At character %d of: %s", pos, chk->expr) :
			 errdetail("In: %s", chk->expr),
			 edata->hint ? errhint("%s", edata->hint) : 0));
}

/* It is one expression: "SELECT (expr)" is a plain SELECT of one target. */
static void
dt_rule_check_syntax(const RuleCheck *chk)
{
	char	   *sql = psprintf(RULE_EXPR_PREFIX "%s)", chk->expr);
	MemoryContext cxt = CurrentMemoryContext;
	List	   *parsed = NIL;
	SelectStmt *select;

	PG_TRY();
	{
		parsed = raw_parser(sql, RAW_PARSE_DEFAULT);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_SYNTAX_ERROR)
			PG_RE_THROW();
		FlushErrorState();
		dt_rule_refuse(chk, edata);
	}
	PG_END_TRY();

	select = list_length(parsed) == 1 ?
		(SelectStmt *) ((RawStmt *) linitial(parsed))->stmt : NULL;
	if (select == NULL || !IsA(select, SelectStmt) ||
		list_length(select->targetList) != 1 || select->fromClause != NIL ||
		select->whereClause != NULL || select->groupClause != NIL ||
		select->havingClause != NULL || select->windowClause != NIL ||
		select->sortClause != NIL || select->limitCount != NULL ||
		select->limitOffset != NULL || select->lockingClause != NIL ||
		select->intoClause != NULL || select->withClause != NULL ||
		select->distinctClause != NIL || select->valuesLists != NIL ||
		select->op != SETOP_NONE ||
		((ResTarget *) linitial(select->targetList))->name != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("rule %d, \"%s\": not a single expression", chk->rule, chk->key),
				 errdetail("In: %s", chk->expr),
				 errhint("Write one SQL expression, such as (event->>'speed')::int > 130; use a scalar subquery in parentheses to read a table.")));
}

/*
 * It means something: analysed over the columns the function will have
 * (state and event jsonb, twin_id text), as the caller
 * and with the caller's search_path, which the model will keep.
 */
static void
dt_rule_check_meaning(const RuleCheck *chk, const char *cast)
{
	char	   *sql = psprintf(RULE_EXPR_PREFIX "%s)%s FROM (SELECT NULL::pg_catalog.jsonb AS state, "
							   "NULL::pg_catalog.jsonb AS event, NULL::pg_catalog.text AS twin_id) AS %s",
							   chk->expr, cast, rule_alias);
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		SPIPlanPtr	plan = SPI_prepare(sql, 0, NULL);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_freeplan(plan);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		dt_rule_refuse(chk, edata);
	}
	PG_END_TRY();
}

static void
dt_rule_check(int rule, const char *key, const char *expr, const char *cast)
{
	RuleCheck	chk = {rule, key, expr};

	dt_rule_check_syntax(&chk);
	dt_rule_check_meaning(&chk, cast);
}

/* ----------------------------------------------------------------
 * The function's text
 * ----------------------------------------------------------------
 */

static void
dt_rule_append_set(StringInfo body, JsonbContainer *set, int rule)
{
	JsonbIterator *it = JsonbIteratorInit(set);
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *prop = NULL;
	bool		first = true;

	appendStringInfoString(body, "        state := state OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(");
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			prop = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE)
		{
			char	   *key = psprintf("set.%s", prop);
			char	   *expr = dt_rule_string(&v, rule, key);

			dt_rule_check(rule, key, expr, "");
			appendStringInfo(body, "%s%s, (%s)", first ? "" : ", ", quote_literal_cstr(prop), expr);
			first = false;
		}
	}
	if (first)
		dt_rule_error(rule, "set", "no property to set");
	appendStringInfoString(body, ");\n");
}

/*
 * An action that calls digitaltwin.<function>(text, expression):
 * {"<text_key>": plain text, "<expr_key>": an SQL expression}.
 */
static void
dt_rule_append_call(StringInfo body, JsonbContainer *action, int rule, const char *what,
					const char *text_key, int text_max, const char *expr_key,
					const char *cast, const char *function)
{
	const char *const keys[] = {text_key, expr_key, NULL};
	char	   *ekey = psprintf("%s.%s", what, expr_key);
	char	   *text;
	char	   *expr;

	dt_rule_check_keys(action, rule, keys, what);
	text = dt_rule_string(dt_rule_get(action, text_key), rule, psprintf("%s.%s", what, text_key));
	expr = dt_rule_string(dt_rule_get(action, expr_key), rule, ekey);
	if (text == NULL || expr == NULL)
		dt_rule_error(rule, what, psprintf("\"%s\" needs \"%s\" and \"%s\"", what, text_key, expr_key));
	/* what would fail every event at run time fails here */
	if (strlen(text) > text_max)
		dt_rule_error(rule, what, psprintf("\"%s\" has at most %d bytes", text_key, text_max));
	dt_rule_check(rule, ekey, expr, cast);
	appendStringInfo(body, "        PERFORM digitaltwin.%s(%s, (%s)%s);\n",
					 function, quote_literal_cstr(text), expr, cast);
}

static void
dt_rule_append(StringInfo body, JsonbContainer *r, int rule)
{
	static const char *const rule_keys[] = {"when", "set", "alert", "timer", "outbox", NULL};
	char	   *when = dt_rule_string(dt_rule_get(r, "when"), rule, "when");
	JsonbContainer *set = dt_rule_object(dt_rule_get(r, "set"), rule, "set");
	JsonbContainer *alert = dt_rule_object(dt_rule_get(r, "alert"), rule, "alert");
	JsonbContainer *timer = dt_rule_object(dt_rule_get(r, "timer"), rule, "timer");
	char	   *outbox = dt_rule_string(dt_rule_get(r, "outbox"), rule, "outbox");

	dt_rule_check_keys(r, rule, rule_keys, NULL);
	if (when == NULL)
		dt_rule_error(rule, NULL, "\"when\" is missing");
	if (set == NULL && alert == NULL && timer == NULL && outbox == NULL)
		dt_rule_error(rule, NULL, "nothing to do: give \"set\", \"alert\", \"timer\" or \"outbox\"");
	dt_rule_check(rule, "when", when, "::pg_catalog.bool");
	appendStringInfo(body, "    -- rule %d\n    IF COALESCE((%s)::pg_catalog.bool, false) THEN\n",
					 rule, when);
	if (alert != NULL)
		dt_rule_append_call(body, alert, rule, "alert", "severity", 64, "message",
							"::pg_catalog.text", "alert");
	if (timer != NULL)
		dt_rule_append_call(body, timer, rule, "timer", "name", DT_TIMER_NAME_MAXLEN, "after",
							"::pg_catalog.interval", "set_timer");
	if (outbox != NULL)
	{
		dt_rule_check(rule, "outbox", outbox, "::pg_catalog.jsonb");
		appendStringInfo(body, "        PERFORM digitaltwin.send_to_source((%s)::pg_catalog.jsonb);\n",
						 outbox);
	}
	/* after the actions, which see the state the rule was given */
	if (set != NULL)
		dt_rule_append_set(body, set, rule);
	appendStringInfoString(body, "    END IF;\n");
}

/*
 * A number n such that $dt_rules_<n>$ is in no expression: one more than
 * the largest there, found in one pass (a loop trying each in turn would
 * take time quadratic in what a caller can write).
 */
static int
dt_rules_free_tag(const char *body)
{
	const char *p = body;
	long		max = -1;

	while ((p = strstr(p, "$dt_rules_")) != NULL)
	{
		char	   *end;
		long		n;

		CHECK_FOR_INTERRUPTS();
		p += strlen("$dt_rules_");
		n = strtol(p, &end, 10);
		if (end != p && *end == '$' && n > max && n < INT_MAX)
			max = n;
	}
	return (int) (max + 1);
}

/*
 * The plpgsql body of the rules.  Its dollar quote is one that no
 * expression contains (an expression cannot end the body early).
 */
static char *
dt_rules_function_sql(const char *qualified_name, Jsonb *rules)
{
	StringInfoData body;
	StringInfoData sql;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			rule = 0;
	char	   *tag;

	if (!JB_ROOT_IS_ARRAY(rules) || JB_ROOT_IS_SCALAR(rules) || JB_ROOT_COUNT(rules) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rules must be a non-empty JSON array of rules")));
	initStringInfo(&body);
	/* names resolve as in the check: a table's column before a parameter */
	appendStringInfoString(&body, "#variable_conflict use_column\nBEGIN\n"
						   "    state := COALESCE(state, '{}'::pg_catalog.jsonb);\n");
	it = JsonbIteratorInit(&rules->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok != WJB_ELEM)
			continue;
		rule++;
		if (v.type != jbvBinary || !JsonContainerIsObject(v.val.binary.data))
			dt_rule_error(rule, NULL, "a rule must be a JSON object");
		dt_rule_append(&body, v.val.binary.data, rule);
	}
	appendStringInfoString(&body, "    RETURN state;\nEND");

	tag = psprintf("$dt_rules_%d$", dt_rules_free_tag(body.data));
	if (strstr(body.data, tag) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the rules hold every dollar quote the function could use")));
	initStringInfo(&sql);
	/*
	 * The body is compiled by the worker with the function's own setting of
	 * standard_conforming_strings, the one it was checked with: a string
	 * the check read as one literal cannot read as code there.
	 */
	appendStringInfo(&sql,
					 "CREATE FUNCTION %s(twin_id pg_catalog.text, state pg_catalog.jsonb, event pg_catalog.jsonb) "
					 "RETURNS pg_catalog.jsonb LANGUAGE plpgsql SET standard_conforming_strings = on "
					 "AS %s\n%s\n%s",
					 qualified_name, tag, body.data, tag);
	return sql.data;
}

/* ----------------------------------------------------------------
 * create_rule_model(), alter_rule_model()
 * ----------------------------------------------------------------
 */

/* the longest model name whose functions' names fit up to version 99999 */
#define RULES_MAX_NAME	(NAMEDATALEN - 1 - (int) strlen("_rules_v99999"))

/*
 * Create the rules' function, as the caller, in the first schema of the
 * caller's search_path; returns its regprocedure text.  The checks and the
 * CREATE read strings with standard_conforming_strings on, as the function
 * itself will (its SET clause), whatever the caller's setting.
 */
static char *
dt_rules_create_function(const char *model, int version, Jsonb *rules)
{
	Oid			nsp = RangeVarGetCreationNamespace(makeRangeVar(NULL, "x", -1));
	char	   *fname = psprintf("%s_rules_v%d", model, version);
	Oid			argtypes[3] = {TEXTOID, JSONBOID, JSONBOID};
	char	   *qualified;
	char	   *sql;
	int			level;

	if (strlen(fname) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("the rules' function name \"%s\" is too long", fname)));
	qualified = quote_qualified_identifier(get_namespace_name(nsp), fname);
	if (OidIsValid(LookupFuncName(list_make2(makeString(get_namespace_name(nsp)), makeString(fname)),
								  3, argtypes, true)))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_FUNCTION),
				 errmsg("function %s already exists", qualified),
				 errdetail("It holds the rules of an earlier model of that name: the functions of a rules-based model stay after drop_model()."),
				 errhint("Drop the earlier functions (DROP FUNCTION %s), or choose another model name.", qualified)));
	rule_alias = quote_identifier(fname);
	level = NewGUCNestLevel();
	(void) set_config_option("standard_conforming_strings", "on", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	SPI_connect();
	sql = dt_rules_function_sql(qualified, rules);
	if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "digitaltwin: cannot create the rules' function");
	SPI_execute(psprintf("COMMENT ON FUNCTION %s(pg_catalog.text, pg_catalog.jsonb, pg_catalog.jsonb) IS %s",
						 qualified,
						 quote_literal_cstr(psprintf("The rules of model %s, version %d (made by digitaltwin.%s_rule_model()).",
													 model, version, version == 1 ? "create" : "alter"))),
				false, 0);
	SPI_finish();
	AtEOXact_GUC(true, level);
	return psprintf("%s(pg_catalog.text,pg_catalog.jsonb,pg_catalog.jsonb)", qualified);
}

/* models.rules, written as the extension's owner */
static void
dt_rules_record(const char *model, Jsonb *rules)
{
	Oid			types[2] = {TEXTOID, JSONBOID};
	Datum		args[2];
	DtTrustedScope scope;

	args[0] = CStringGetTextDatum(model);
	args[1] = JsonbPGetDatum(rules);
	dt_trusted_enter(&scope);
	if (SPI_execute_with_args("UPDATE digitaltwin.models SET rules = $2 WHERE name OPERATOR(pg_catalog.=) $1",
							  2, types, args, NULL, false, 0) != SPI_OK_UPDATE || SPI_processed != 1)
		elog(ERROR, "digitaltwin: cannot record the rules of model \"%s\"", model);
	dt_trusted_leave(&scope);
}

/* Call a function of the extension as the caller, through SPI. */
static Datum
dt_rules_call(const char *sql, int nargs, Oid *types, Datum *args, const char *nulls, bool *isnull)
{
	Datum		result;

	SPI_connect();
	if (SPI_execute_with_args(sql, nargs, types, args, nulls, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "digitaltwin: \"%s\" failed", sql);
	result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, isnull);
	SPI_finish();
	return result;
}

Datum
digitaltwin_create_rule_model(PG_FUNCTION_ARGS)
{
	char	   *model = dt_text_arg(fcinfo, 0, "model name");
	Jsonb	   *rules;
	char	   *process;
	Oid			types[3] = {TEXTOID, TEXTOID, REGPROCEDUREOID};
	Datum		args[3];
	bool		isnull;

	dt_forbid_in_model("digitaltwin.create_rule_model()");
	dt_require_table("twin_views", "1.9", "digitaltwin.create_rule_model()");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("rules must not be null")));
	rules = PG_GETARG_JSONB_P(1);
	if (strlen(model) > RULES_MAX_NAME)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model name must be at most %d bytes for a rules-based model", RULES_MAX_NAME),
				 errdetail("Its functions are named <name>_rules_v<version>.")));
	process = dt_rules_create_function(model, 1, rules);
	args[0] = CStringGetTextDatum(model);
	args[1] = CStringGetTextDatum(process);
	args[2] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	(void) dt_rules_call("SELECT digitaltwin.create_model($1, $2::pg_catalog.regprocedure, $3)",
						 3, types, args, PG_ARGISNULL(2) ? "  n" : NULL, &isnull);
	dt_rules_record(model, rules);
	PG_RETURN_VOID();
}

/*
 * The model's next version, its row locked as alter_model() will lock it
 * (two calls cannot both take the same version), checking that it is a
 * rules-based model and that the caller is its owner role itself: the new
 * function is made by the caller, and runs as the owner; made by a member
 * of the owner role, it would stay under the member's control after the
 * membership is revoked.
 */
static int
dt_rules_next_version(const char *model)
{
	Oid			caller = GetUserId();
	bool		isnull;
	int			version;
	bool		has_rules;
	Oid			owner;
	DtTrustedScope scope;

	dt_trusted_enter(&scope);
	dt_model_lock_row(model, "version, rules IS NOT NULL, owner::pg_catalog.oid");
	version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	has_rules = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	dt_trusted_leave(&scope);
	if (!has_rules)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("model \"%s\" is not a rules-based model", model),
				 errhint("Use digitaltwin.alter_model() to change its functions.")));
	if (caller != owner)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only the owner of model \"%s\" may replace its rules", model),
				 errdetail("The rules become a function of the caller's, which runs as the model's owner."),
				 errhint("SET ROLE %s first.", quote_identifier(GetUserNameFromId(owner, false)))));
	return version + 1;
}

Datum
digitaltwin_alter_rule_model(PG_FUNCTION_ARGS)
{
	char	   *model = dt_text_arg(fcinfo, 0, "model name");
	Jsonb	   *rules;
	char	   *process;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		args[2];
	bool		isnull;
	Datum		version;

	dt_forbid_in_model("digitaltwin.alter_rule_model()");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("rules must not be null")));
	rules = PG_GETARG_JSONB_P(1);
	process = dt_rules_create_function(model, dt_rules_next_version(model), rules);
	args[0] = CStringGetTextDatum(model);
	args[1] = CStringGetTextDatum(process);
	version = dt_rules_call("SELECT digitaltwin.alter_model($1, $2::pg_catalog.regprocedure)",
							2, types, args, NULL, &isnull);
	dt_rules_record(model, rules);
	PG_RETURN_DATUM(version);
}
