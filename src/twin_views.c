/*-------------------------------------------------------------------------
 *
 * twin_views.c
 *	  create_twin_view(): an ordinary view over digitaltwin.twins with one
 *	  typed column per state property, so that analysts stop writing
 *	  (state->>'speed')::numeric in every query.
 *
 * The view is plain SQL over digitaltwin.twins, one expression per column,
 * so that the planner keeps what makes the live view fast: a query that
 * uses no state column does not copy the states (the live foreign scan's
 * column pruning), and twin_id = '...' is still a Twin Lookup.  It is
 * created by the caller, in the caller's schema, owned by the caller: it
 * is the caller's object, made with the caller's rights.  Its text is
 * fully qualified and parsed with a pinned search_path, so whatever the
 * caller's search_path holds cannot change what it means; only the type
 * names of the column list are looked up in the caller's search_path, as
 * CREATE VIEW would.
 *
 * digitaltwin.twin_views remembers which views are typed views of which
 * model, so that drop_model() drops them; a view dropped by the user
 * leaves a row that names no view any more, which nobody reads.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_rewrite.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/parse_type.h"
#include "parser/scansup.h"
#include "rewrite/rewriteSupport.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "access/xact.h"
#include "utils/rel.h"
#include "utils/typcache.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_create_twin_view);

/* columns of the view besides the state's */
static const char *const fixed_columns[] = {"twin_id", "event_count", "updated_at"};

typedef struct ViewColumn
{
	char	   *name;
	Oid			type;
	int32		typmod;
} ViewColumn;

/* ----------------------------------------------------------------
 * The column list: 'bpm int, limit int, "Last seen" timestamptz'
 * ----------------------------------------------------------------
 */

static void
dt_column_list_error(const char *columns, int pos, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_SYNTAX_ERROR),
			 errmsg("invalid column list at character %d: %s", pos + 1, what),
			 errdetail("The column list was: %s", columns),
			 errhint("Give the columns as 'name type, name type', for example 'bpm int, limit int, last_seen timestamptz'.")));
}

/*
 * A column's name: a double-quoted identifier, or a bare word, folded to
 * lower case.  Unlike in SQL a keyword needs no quotes here ('limit int').
 */
static char *
dt_column_name(const char *columns, int *pos)
{
	const char *p = columns + *pos;
	StringInfoData name;

	initStringInfo(&name);
	if (*p == '"')
	{
		for (p++;; p++)
		{
			if (*p == '\0')
				dt_column_list_error(columns, *pos, "unterminated quoted name");
			if (*p == '"')
			{
				if (p[1] != '"')
					break;
				p++;
			}
			appendStringInfoChar(&name, *p);
		}
		p++;
		if (name.len == 0)
			dt_column_list_error(columns, *pos, "zero-length name");
	}
	else
	{
		while (*p == '_' || IS_HIGHBIT_SET(*p) || isalnum((unsigned char) *p) || *p == '$')
			p++;
		if (p == columns + *pos)
			dt_column_list_error(columns, *pos, "a column name was expected");
		appendStringInfoString(&name,
							   downcase_identifier(columns + *pos, p - (columns + *pos),
												   false, false));
	}
	if (name.len >= NAMEDATALEN)
		dt_column_list_error(columns, *pos, "name too long");
	*pos = p - columns;
	return name.data;
}

/* The type of a column: up to the next comma outside parentheses and quotes. */
static char *
dt_column_type(const char *columns, int *pos)
{
	int			start = *pos;
	int			depth = 0;
	bool		quoted = false;
	int			i;

	for (i = start; columns[i] != '\0'; i++)
	{
		char		c = columns[i];

		if (c == '"')
			quoted = !quoted;
		else if (!quoted && (c == '(' || c == '['))
			depth++;
		else if (!quoted && (c == ')' || c == ']'))
			depth--;
		else if (!quoted && depth == 0 && c == ',')
			break;
	}
	*pos = i;
	while (i > start && isspace((unsigned char) columns[i - 1]))
		i--;
	if (i == start)
		dt_column_list_error(columns, start, "a type was expected");
	return pnstrdup(columns + start, i - start);
}

static List *
dt_parse_columns(const char *columns)
{
	List	   *list = NIL;
	int			pos = 0;

	for (;;)
	{
		ViewColumn *col = palloc0(sizeof(ViewColumn));
		char	   *type;
		ListCell   *lc;
		int			i;

		CHECK_FOR_INTERRUPTS();
		if (list_length(list) >= MaxTupleAttributeNumber - lengthof(fixed_columns))
			ereport(ERROR,
					(errcode(ERRCODE_TOO_MANY_COLUMNS),
					 errmsg("a typed view can have at most %d columns besides its own",
							MaxTupleAttributeNumber - (int) lengthof(fixed_columns))));
		while (isspace((unsigned char) columns[pos]))
			pos++;
		col->name = dt_column_name(columns, &pos);
		if (!isspace((unsigned char) columns[pos]))
			dt_column_list_error(columns, pos, "a space and a type were expected after the name");
		while (isspace((unsigned char) columns[pos]))
			pos++;
		type = dt_column_type(columns, &pos);
		/* a type of the caller's search_path, as in its own CREATE VIEW */
		parseTypeString(type, &col->type, &col->typmod, false);
		if (get_typtype(col->type) == TYPTYPE_PSEUDO)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
					 errmsg("column \"%s\" cannot be of type %s", col->name, format_type_be(col->type))));
		for (i = 0; i < lengthof(fixed_columns); i++)
			if (strcmp(col->name, fixed_columns[i]) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_DUPLICATE_COLUMN),
						 errmsg("column \"%s\" is one of the view's own columns", col->name),
						 errhint("Every typed view has twin_id, event_count and updated_at.")));
		foreach(lc, list)
			if (strcmp(((ViewColumn *) lfirst(lc))->name, col->name) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_DUPLICATE_COLUMN),
						 errmsg("column \"%s\" specified more than once", col->name)));
		list = lappend(list, col);
		if (columns[pos] == '\0')
			break;
		pos++;					/* the comma */
	}
	return list;
}

/* The attributes of a composite state type, as columns. */
static List *
dt_composite_columns(Oid type)
{
	TupleDesc	desc = lookup_rowtype_tupdesc(type, -1);
	List	   *list = NIL;
	int			i;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		ViewColumn *col;

		if (att->attisdropped)
			continue;
		col = palloc0(sizeof(ViewColumn));
		col->name = pstrdup(NameStr(att->attname));
		col->type = att->atttypid;
		col->typmod = att->atttypmod;
		list = lappend(list, col);
	}
	ReleaseTupleDesc(desc);
	return list;
}

/* ----------------------------------------------------------------
 * The view's text
 * ----------------------------------------------------------------
 */

/*
 * The expression of one column over t.state, the jsonb of the live view
 * (to_jsonb() of a state of another type).  key NULL: the whole state.
 */
static void
dt_append_column_expr(StringInfo sql, const ViewColumn *col, const char *key)
{
	char	   *type = format_type_extended(col->type, col->typmod,
											FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY);
	char	   *value = key ? psprintf("(t.state OPERATOR(pg_catalog.->) %s)", quote_literal_cstr(key))
		: pstrdup("t.state");
	char	   *text = key ? psprintf("(t.state OPERATOR(pg_catalog.->>) %s)", quote_literal_cstr(key))
		: pstrdup("(t.state OPERATOR(pg_catalog.#>>) '{}'::pg_catalog.text[])");
	Oid			elem = get_element_type(col->type);

	if (col->type == JSONBOID)
		appendStringInfoString(sql, value);
	else if (type_is_rowtype(col->type))
		appendStringInfo(sql, "pg_catalog.jsonb_populate_record(NULL::%s, %s)", type, value);
	else if (OidIsValid(elem) && get_typlen(col->type) == -1)
		appendStringInfo(sql,
						 "CASE pg_catalog.jsonb_typeof(%s) WHEN 'array' THEN "
						 "ARRAY(SELECT pg_catalog.jsonb_array_elements_text(%s))::%s "
						 "ELSE %s::%s END",
						 value, value, type, text, type);
	else
		appendStringInfo(sql, "%s::%s", text, type);
}

static char *
dt_twin_view_sql(const char *nspname, const char *relname, const char *model,
				 List *columns, bool whole_state)
{
	StringInfoData sql;
	ListCell   *lc;

	initStringInfo(&sql);
	appendStringInfo(&sql, "CREATE VIEW %s AS SELECT t.twin_id",
					 quote_qualified_identifier(nspname, relname));
	foreach(lc, columns)
	{
		ViewColumn *col = lfirst(lc);

		appendStringInfoString(&sql, ", ");
		dt_append_column_expr(&sql, col, whole_state ? NULL : col->name);
		appendStringInfo(&sql, " AS %s", quote_identifier(col->name));
	}
	appendStringInfo(&sql, ", t.event_count, t.updated_at FROM digitaltwin.twins t "
					 "WHERE t.model OPERATOR(pg_catalog.=) %s",
					 quote_literal_cstr(model));
	return sql.data;
}

/* ----------------------------------------------------------------
 * create_twin_view(model text, view_name text, columns text DEFAULT NULL)
 * ----------------------------------------------------------------
 */

/* The model's id and state type, or an error; in a trusted scope. */
static void
dt_twin_view_model(const char *model, int32 *id, Oid *state_type)
{
	bool		isnull;

	dt_model_read_row(model, "id, state_type::pg_catalog.oid");
	*id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*state_type = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
}

static void
dt_twin_view_register(Oid view, Oid nsp, const char *relname, Oid owner,
					  int32 model_id, const char *columns)
{
	Oid			types[6] = {REGCLASSOID, NAMEOID, NAMEOID, REGROLEOID, INT4OID, TEXTOID};
	Datum		args[6];

	args[0] = ObjectIdGetDatum(view);
	args[1] = DirectFunctionCall1(namein, CStringGetDatum(get_namespace_name(nsp)));
	args[2] = DirectFunctionCall1(namein, CStringGetDatum(relname));
	args[3] = ObjectIdGetDatum(owner);
	args[4] = Int32GetDatum(model_id);
	args[5] = columns ? CStringGetTextDatum(columns) : (Datum) 0;
	/* rows whose view is gone, renamed or given away since */
	if (SPI_execute("DELETE FROM digitaltwin.twin_views v WHERE NOT EXISTS "
					"(SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
					"   ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
					" WHERE c.oid OPERATOR(pg_catalog.=) v.view::pg_catalog.oid "
					"   AND c.relname OPERATOR(pg_catalog.=) v.view_name "
					"   AND n.nspname OPERATOR(pg_catalog.=) v.view_schema "
					"   AND c.relowner OPERATOR(pg_catalog.=) v.owner::pg_catalog.oid)",
					false, 0) != SPI_OK_DELETE)
		elog(ERROR, "digitaltwin: cannot clean digitaltwin.twin_views");
	if (SPI_execute_with_args("INSERT INTO digitaltwin.twin_views "
							  "(view, view_schema, view_name, owner, model_id, columns) "
							  "VALUES ($1, $2, $3, $4, $5, $6)",
							  6, types, args, columns ? NULL : "     n", false, 0) != SPI_OK_INSERT)
		elog(ERROR, "digitaltwin: cannot register the typed view");
}

Datum
digitaltwin_create_twin_view(PG_FUNCTION_ARGS)
{
	char	   *model = dt_text_arg(fcinfo, 0, "model name");
	char	   *view_name = dt_text_arg(fcinfo, 1, "view name");
	char	   *columns = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	RangeVar   *rv;
	Oid			nsp;
	Oid			view;
	Oid			state_type;
	int32		model_id;
	List	   *cols;
	bool		whole_state = false;
	char	   *sql;
	int			level;
	AclResult	aclresult;
	Oid			caller = GetUserId();
	DtTrustedScope scope;

	dt_forbid_in_model("digitaltwin.create_twin_view()");
	dt_require_table("twin_views", "1.9", "digitaltwin.create_twin_view()");
	aclresult = pg_class_aclcheck(dt_extension_relid("twins"), GetUserId(), ACL_SELECT);
	if (aclresult != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to create a typed view of digitaltwin.twins"),
				 errdetail("The view reads digitaltwin.twins with its owner's rights, and its owner is you."),
				 errhint("Be a member of digitaltwin_reader, or be granted 'read' on the model with digitaltwin.grant_model().")));

	/* where the caller's CREATE VIEW would put it */
	rv = makeRangeVarFromNameList(stringToQualifiedNameList(view_name));
	nsp = RangeVarGetCreationNamespace(rv);

	dt_trusted_enter(&scope);
	dt_twin_view_model(model, &model_id, &state_type);
	dt_trusted_leave(&scope);
	/* the view would show nothing to its owner: say so now */
	if (!dt_model_allowed(model, caller, DT_RIGHT_READ))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to read model \"%s\"", model),
				 errhint("Members of digitaltwin_reader may read every model; digitaltwin.grant_model(model, role, 'read') lets a role read one.")));

	if (columns != NULL)
		cols = dt_parse_columns(columns);
	else if (type_is_rowtype(state_type))
		cols = dt_composite_columns(state_type);
	else if (state_type == JSONBOID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model \"%s\" has a jsonb state: its typed view needs a column list", model),
				 errhint("Name the properties and their types, for example 'bpm int, limit int, last_seen timestamptz'.")));
	else
	{
		ViewColumn *col = palloc0(sizeof(ViewColumn));

		/* one column, the state, of its own type */
		col->name = "state";
		col->type = state_type;
		col->typmod = -1;
		cols = list_make1(col);
		whole_state = true;
	}

	/* as the caller, who owns the view; its text means one thing only */
	sql = dt_twin_view_sql(get_namespace_name(nsp), rv->relname, model, cols, whole_state);
	level = dt_pin_search_path();
	SPI_connect();
	if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "digitaltwin: cannot create the typed view");
	SPI_execute(psprintf("COMMENT ON VIEW %s IS %s",
						 quote_qualified_identifier(get_namespace_name(nsp), rv->relname),
						 quote_literal_cstr(psprintf("Typed view of the twins of model %s (digitaltwin.create_twin_view()); dropped with the model.",
													 model))),
				false, 0);
	SPI_finish();
	AtEOXact_GUC(false, level);
	CommandCounterIncrement();
	view = get_relname_relid(rv->relname, nsp);
	if (!OidIsValid(view))
		elog(ERROR, "digitaltwin: the typed view was not created");

	dt_trusted_enter(&scope);
	dt_twin_view_register(view, nsp, rv->relname, caller, model_id, columns);
	dt_trusted_leave(&scope);
	PG_RETURN_OID(view);
}

/* ----------------------------------------------------------------
 * drop_model(): its typed views go with it
 * ----------------------------------------------------------------
 */

/*
 * Whether relid is still a view that reads digitaltwin.twins: a typed view
 * the user dropped may have left its number to another relation.
 */
static bool
dt_is_twin_view(Oid relid)
{
	Oid			twins = dt_extension_relid("twins");
	Oid			rule;
	Relation	depend;
	ScanKeyData key[2];
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	if (get_rel_relkind(relid) != RELKIND_VIEW)
		return false;
	/* the view's rule depends on the relations it reads */
	rule = get_rewrite_oid(relid, ViewSelectRuleName, true);
	if (!OidIsValid(rule))
		return false;
	depend = table_open(DependRelationId, AccessShareLock);
	ScanKeyInit(&key[0], Anum_pg_depend_classid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(RewriteRelationId));
	ScanKeyInit(&key[1], Anum_pg_depend_objid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(rule));
	scan = systable_beginscan(depend, DependDependerIndexId, true, NULL, 2, key);
	while (!found && HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_depend dep = (Form_pg_depend) GETSTRUCT(tup);

		found = dep->refclassid == RelationRelationId && dep->refobjid == twins;
	}
	systable_endscan(scan);
	table_close(depend, AccessShareLock);
	return found;
}

/*
 * The registered view, if it is still the one registered: the same number,
 * schema, name and owner, a view reading digitaltwin.twins.
 */
static bool
dt_twin_view_is(Oid relid, const char *nspname, const char *relname, Oid owner)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Form_pg_class rel;
	bool		same;

	if (!HeapTupleIsValid(tup))
		return false;
	rel = (Form_pg_class) GETSTRUCT(tup);
	same = rel->relkind == RELKIND_VIEW && rel->relowner == owner &&
		strcmp(NameStr(rel->relname), relname) == 0 &&
		rel->relnamespace == get_namespace_oid(nspname, true);
	ReleaseSysCache(tup);
	return same && dt_is_twin_view(relid);
}

/*
 * DROP VIEW, RESTRICT, in a subtransaction: when a view of the user's
 * reads it, the typed view stays (with a warning naming what depends on
 * it; its row goes with the model) rather than the user's objects
 * keeping the model from being dropped.  Any other error is the call's.
 */
static void
dt_twin_view_delete(Oid relid, const char *model)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ObjectAddress addr;

	ObjectAddressSet(addr, RelationRelationId, relid);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		performDeletion(&addr, DROP_RESTRICT, 0);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST)
			PG_RE_THROW();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		ereport(WARNING,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("typed view %s of model \"%s\" kept: other objects depend on it",
						get_rel_name(relid), model),
				 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
				 errhint("It shows no twins any more; DROP VIEW ... CASCADE removes it and what depends on it.")));
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
}

/*
 * Drop the model's typed views, whoever owns them (the model goes, and
 * they would show nothing).  Only views still what was registered; each
 * locked without waiting, as drop_model() holds digitaltwin.models, which
 * every worker's batch needs: a view in use makes the call fail, not the
 * workers wait.  In drop_model()'s trusted scope; the rows go with the
 * model (ON DELETE CASCADE).
 */
void
dt_twin_views_drop(int32 model_id, const char *model)
{
	Oid			argtype = INT4OID;
	Datum		arg = Int32GetDatum(model_id);
	SPITupleTable *rows;
	uint64		n;
	uint64		i;

	if (!dt_table_exists("twin_views"))
		return;
	if (SPI_execute_with_args("SELECT view::pg_catalog.oid, view_schema::pg_catalog.text, "
							  "view_name::pg_catalog.text, owner::pg_catalog.oid "
							  "FROM digitaltwin.twin_views WHERE model_id OPERATOR(pg_catalog.=) $1",
							  1, &argtype, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "digitaltwin: cannot read digitaltwin.twin_views");
	rows = SPI_tuptable;
	n = SPI_processed;
	for (i = 0; i < n; i++)
	{
		bool		isnull;
		Oid			relid = DatumGetObjectId(SPI_getbinval(rows->vals[i], rows->tupdesc, 1, &isnull));
		char	   *nspname = SPI_getvalue(rows->vals[i], rows->tupdesc, 2);
		char	   *relname = SPI_getvalue(rows->vals[i], rows->tupdesc, 3);
		Oid			owner = DatumGetObjectId(SPI_getbinval(rows->vals[i], rows->tupdesc, 4, &isnull));

		if (!dt_twin_view_is(relid, nspname, relname, owner))
			continue;
		if (!ConditionalLockRelationOid(relid, AccessExclusiveLock))
			ereport(ERROR,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("typed view %s.%s of model \"%s\" is in use", nspname, relname, model),
					 errhint("Drop the model when no transaction reads the view.")));
		/* as it is now that it is locked */
		if (!dt_twin_view_is(relid, nspname, relname, owner))
		{
			UnlockRelationOid(relid, AccessExclusiveLock);
			continue;
		}
		dt_twin_view_delete(relid, model);
	}
}
