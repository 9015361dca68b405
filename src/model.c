/*-------------------------------------------------------------------------
 *
 * model.c
 *	  Model registry: create_model() (drop_model() is in lifecycle.c), the
 *	  caches of models, and calling a model's functions as the model's owner.
 *
 * Models are rows of digitaltwin.models.  Two backend-local caches read it:
 * the insert-side set of known model names (used by the events trigger) and
 * the worker's full description of each model (FmgrInfo, state type).  Both
 * are invalidated through the relcache of digitaltwin.models: create_model()
 * and drop_model() queue a relcache invalidation for the table, which every
 * backend processes when the registering transaction commits, so a cache is
 * never stale across a transaction boundary.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/prepare.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/catcache.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/timeout.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_create_model);

static Oid	models_relid = InvalidOid;
static bool callbacks_registered = false;

/* insert side: names known to exist */
static HTAB *known_names = NULL;

/* worker side */
static HTAB *model_cache = NULL;
static DtModel *last_by_id = NULL;	/* of dt_model_lookup_id, in model_cache */
static MemoryContext model_cache_cxt = NULL;
static bool models_stale = true;

/* how many models of the cache are paused: the workers look for none else */
int			dt_models_paused = 0;

/* how many have an event log or a history (history.c) */
int			dt_models_logging = 0;

typedef struct KnownName
{
	char		name[NAMEDATALEN];
} KnownName;

static void
dt_models_inval_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == models_relid)
	{
		models_stale = true;
		if (known_names != NULL)
		{
			hash_destroy(known_names);
			known_names = NULL;
		}
		models_relid = InvalidOid;
	}
}

static void
dt_proc_inval_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	/* a model function was replaced or dropped: re-resolve models */
	models_stale = true;
}

void
dt_register_cache_callbacks(void)
{
	if (callbacks_registered)
		return;
	CacheRegisterRelcacheCallback(dt_models_inval_callback, (Datum) 0);
	CacheRegisterSyscacheCallback(PROCOID, dt_proc_inval_callback, (Datum) 0);
	callbacks_registered = true;
}

Oid
dt_extension_oid(void)
{
	return get_extension_oid("digitaltwin", true);
}

/*
 * OID of one of the extension's tables, digitaltwin.<relname>, for code
 * that runs only where the extension is installed (the workers); a missing
 * table is a can't-happen.
 */
Oid
dt_extension_relid(const char *relname)
{
	Oid			relid = get_relname_relid(relname, get_namespace_oid("digitaltwin", false));

	if (!OidIsValid(relid))
		elog(ERROR, "digitaltwin: table digitaltwin.%s is missing", relname);
	return relid;
}

/*
 * OID of digitaltwin.models; ERROR if the extension is not installed in
 * this database.
 */
Oid
dt_models_relid(void)
{
	dt_register_cache_callbacks();
	if (!OidIsValid(models_relid))
	{
		Oid			nsp = get_namespace_oid("digitaltwin", true);

		if (OidIsValid(nsp))
			models_relid = get_relname_relid("models", nsp);
		if (!OidIsValid(models_relid))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("extension \"digitaltwin\" is not installed in this database"),
					 errhint("Run CREATE EXTENSION digitaltwin.")));
	}
	return models_relid;
}

/* ----------------------------------------------------------------
 * create_model / drop_model
 * ----------------------------------------------------------------
 */

/*
 * A model name is shown in errors, dead letters, logs and NOTIFY payloads
 * and typed by people: refuse names that cannot be told apart when printed
 * (empty, blank, padded with white space) or that hold control characters
 * (which could forge lines in logs) or invalid encoding.
 */
static void
dt_check_model_name(const char *name)
{
	int			len = strlen(name);
	const unsigned char *p;

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid model name"),
				 errdetail("A model name must not be empty.")));
	if (!pg_verifymbstr(name, len, true))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid model name"),
				 errdetail("The name is not valid in the database encoding.")));
	for (p = (const unsigned char *) name; *p; p += pg_mblen((const char *) p))
	{
		pg_wchar	c = *p;
		bool		control;

		if (c < 0x80)
			control = c < 0x20 || c == 0x7f;
		else if (GetDatabaseEncoding() == PG_UTF8)
		{
			/* C1 controls too, U+0080..U+009F */
			c = utf8_to_unicode(p);
			control = c <= 0x9f;
		}
		else
			control = false;
		if (control)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid model name"),
					 errdetail("A model name must not contain control characters (U+%04X at byte %d).",
							   (unsigned int) c, (int) (p - (const unsigned char *) name) + 1)));
	}
	if (name[0] == ' ' || name[len - 1] == ' ')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid model name"),
				 errdetail("A model name must not begin or end with white space.")));
}


static HeapTuple
dt_lookup_proc(Oid fn, const char *role)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("%s function with OID %u does not exist", role, fn)));
	return tup;
}

static void
dt_check_proc_common(Form_pg_proc proc, Oid fn, const char *role)
{
	if (proc->prokind != PROKIND_FUNCTION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("%s function %s is not a plain function", role,
						format_procedure(fn)),
				 errhint("Aggregates, window functions and procedures cannot be models.")));
	if (proc->proretset)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("%s function %s must not return a set", role,
						format_procedure(fn))));
	if (pg_proc_aclcheck(fn, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_FUNCTION, format_procedure(fn));
	/* it would vanish with the session that created it */
	if (isAnyTempNamespace(proc->pronamespace))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a model function cannot be a temporary function"),
				 errdetail("%s function %s is in a temporary schema, which ends with its session.",
						   role, format_procedure(fn))));
}

static bool
dt_type_is_temporary(Oid type)
{
	HeapTuple	tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(type));
	bool		temporary;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for type %u", type);
	temporary = isAnyTempNamespace(((Form_pg_type) GETSTRUCT(tup))->typnamespace);
	ReleaseSysCache(tup);
	return temporary;
}

/*
 * Validate process(twin_id text, state S, event jsonb) RETURNS S and return
 * S.
 */
Oid
dt_check_process(Oid fn, bool *strict)
{
	HeapTuple	tup = dt_lookup_proc(fn, "process");
	Form_pg_proc proc = (Form_pg_proc) GETSTRUCT(tup);
	Oid			state_type = proc->prorettype;

	dt_check_proc_common(proc, fn, "process");
	if (proc->pronargs != 3 ||
		proc->proargtypes.values[0] != TEXTOID ||
		proc->proargtypes.values[1] != state_type ||
		proc->proargtypes.values[2] != JSONBOID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("process function %s has the wrong signature",
						format_procedure(fn)),
				 errdetail("A process function must be declared as (twin_id text, state S, event jsonb) RETURNS S for one state type S.")));
	if (get_typtype(state_type) == TYPTYPE_PSEUDO)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("state type of a model cannot be the pseudo-type %s",
						format_type_be(state_type))));
	if (dt_type_is_temporary(state_type))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("the state type of a model cannot be a temporary type"),
				 errdetail("Type %s is in a temporary schema, which ends with its session.",
						   format_type_be(state_type))));
	*strict = proc->proisstrict;
	ReleaseSysCache(tup);
	return state_type;
}

void
dt_check_init(Oid fn, Oid state_type)
{
	HeapTuple	tup = dt_lookup_proc(fn, "init");
	Form_pg_proc proc = (Form_pg_proc) GETSTRUCT(tup);

	dt_check_proc_common(proc, fn, "init");
	if (proc->pronargs != 1 ||
		proc->proargtypes.values[0] != TEXTOID ||
		proc->prorettype != state_type)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("init function %s has the wrong signature",
						format_procedure(fn)),
				 errdetail("The init function must be declared as (twin_id text) RETURNS %s, the state type of the process function.",
						   format_type_be(state_type))));
	ReleaseSysCache(tup);
}

/*
 * Validate migrate(twin_id text, old_state OLD) RETURNS NEW, for
 * alter_model().
 */
void
dt_check_migrate(Oid fn, Oid old_type, Oid new_type)
{
	HeapTuple	tup = dt_lookup_proc(fn, "migrate");
	Form_pg_proc proc = (Form_pg_proc) GETSTRUCT(tup);

	dt_check_proc_common(proc, fn, "migrate");
	if (proc->pronargs != 2 ||
		proc->proargtypes.values[0] != TEXTOID ||
		proc->proargtypes.values[1] != old_type ||
		proc->prorettype != new_type)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("migrate function %s has the wrong signature",
						format_procedure(fn)),
				 errdetail("The migrate function must be declared as (twin_id text, old_state %s) RETURNS %s: from the state type of the current version to that of the new one.",
						   format_type_be(old_type), format_type_be(new_type))));
	ReleaseSysCache(tup);
}

static bool
dt_model_row_exists(const char *name)
{
	Datum		arg = CStringGetTextDatum(name);
	Oid			argtype = TEXTOID;
	int			ret;

	ret = SPI_execute_with_args("SELECT 1 FROM digitaltwin.models WHERE name OPERATOR(pg_catalog.=) $1",
								1, &argtype, &arg, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	return SPI_processed > 0;
}

Datum
digitaltwin_create_model(PG_FUNCTION_ARGS)
{
	char	   *name;
	Oid			process;
	Oid			init = InvalidOid;
	Oid			state_type;
	bool		strict;
	Oid			argtypes[6] = {TEXTOID, REGPROCEDUREOID, REGPROCEDUREOID, REGTYPEOID,
	REGROLEOID, TEXTOID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	int			ret;
	Oid			caller = GetUserId();
	char	   *creator_search_path;
	DtTrustedScope scope;

	dt_require_preload();
	dt_forbid_in_model("digitaltwin.create_model()");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model name must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("process function of a model must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (strlen(name) == 0 || strlen(name) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model name must be 1 to %d bytes long", NAMEDATALEN - 1)));
	dt_check_model_name(name);

	if (superuser_arg(caller) && !dt_allow_superuser_models)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("a superuser cannot own a model"),
				 errdetail("A model's functions run as its owner in a background worker, with the owner's rights."),
				 errhint("Create the model as an ordinary role (for example a member of digitaltwin_admin, after SET ROLE), or set digitaltwin.allow_superuser_models = on.")));

	process = PG_GETARG_OID(1);
	state_type = dt_check_process(process, &strict);
	if (!PG_ARGISNULL(2))
	{
		init = PG_GETARG_OID(2);
		dt_check_init(init, state_type);
	}
	else if (strict)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("process function %s of a model without init must not be STRICT",
						format_procedure(process)),
				 errdetail("A new twin has a NULL state, and a STRICT function is never called with NULL."),
				 errhint("Declare the function CALLED ON NULL INPUT, or give the model an init function.")));

	/* the creator's, read before the scope pins its own */
	creator_search_path = pstrdup(namespace_search_path);
	dt_trusted_enter(&scope);
	if (dt_model_row_exists(name))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("model \"%s\" already exists", name),
				 errhint("Change its functions with digitaltwin.alter_model(), which keeps its twins.")));

	values[0] = CStringGetTextDatum(name);
	values[1] = ObjectIdGetDatum(process);
	values[2] = ObjectIdGetDatum(init);
	if (!OidIsValid(init))
		nulls[2] = 'n';
	values[3] = ObjectIdGetDatum(state_type);
	values[4] = ObjectIdGetDatum(caller);

	/*
	 * The model's functions resolve names with the search_path of its
	 * creator, fixed now: neither the worker's settings nor later changes by
	 * others can redirect them to different objects.
	 */
	values[5] = CStringGetTextDatum(creator_search_path);
	/* parameters of the columns' own types: no cast is looked up */
	ret = SPI_execute_with_args("INSERT INTO digitaltwin.models (name, process, init, state_type, owner, search_path) "
								"VALUES ($1, $2, $3, $4, $5, $6)",
								6, argtypes, values, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	/* version 1.8: its first version */
	if (dt_table_exists("model_versions"))
	{
		ret = SPI_execute_with_args("INSERT INTO digitaltwin.model_versions "
									"(model_id, model, version, process, init, state_type, search_path, created_by) "
									"SELECT m.id, m.name, 1, m.process, m.init, m.state_type, m.search_path, m.owner "
									"FROM digitaltwin.models m WHERE m.name OPERATOR(pg_catalog.=) $1",
									1, argtypes, values, NULL, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	}
	dt_trusted_leave(&scope);

	CacheInvalidateRelcacheByRelid(dt_models_relid());
	PG_RETURN_VOID();
}

/* A member of digitaltwin_admin (the role exists from version 1.1 on). */
bool
dt_is_admin(Oid roleid)
{
	Oid			admin = get_role_oid("digitaltwin_admin", true);

	return OidIsValid(admin) && has_privs_of_role(roleid, admin);
}

/*
 * Hold off the workers' batches (they take digitaltwin.models in ROW SHARE
 * mode, worker.c) until the end of the transaction, then read the given
 * columns of the model's row, locked, into SPI_tuptable: the switches of
 * lifecycle.c and drop_model() see what the last batches committed, and no
 * batch runs while they change the model.  Inside SPI.
 */
static void dt_model_select_row(const char *name, const char *columns, bool for_update);

void
dt_model_lock_row(const char *name, const char *columns)
{
	LockRelationOid(dt_models_relid(), ExclusiveLock);
	CommandCounterIncrement();
	dt_model_select_row(name, columns, true);
}

/* Read the given columns of the model's row into SPI_tuptable.  Inside SPI. */
void
dt_model_read_row(const char *name, const char *columns)
{
	dt_model_select_row(name, columns, false);
}

static void
dt_model_select_row(const char *name, const char *columns, bool for_update)
{
	Datum		arg = CStringGetTextDatum(name);
	Oid			argtype = TEXTOID;
	int			ret;

	ret = SPI_execute_with_args(psprintf("SELECT %s FROM digitaltwin.models "
										 "WHERE name OPERATOR(pg_catalog.=) $1%s",
										 columns, for_update ? " FOR UPDATE" : ""),
								1, &argtype, &arg, NULL, !for_update, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", name)));
}

/*
 * How many rows of digitaltwin.<table> (a table with a model_id column)
 * are of the model, with a fresh snapshot.  Inside SPI.
 */
int64
dt_model_rows(const char *table, int32 model_id)
{
	Datum		arg = Int32GetDatum(model_id);
	Oid			argtype = INT4OID;
	bool		isnull;

	if (SPI_execute_with_args(psprintf("SELECT count(*) FROM digitaltwin.%s "
									   "WHERE model_id OPERATOR(pg_catalog.=) $1", table),
							  1, &argtype, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "digitaltwin: cannot count the rows of digitaltwin.%s", table);
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* ----------------------------------------------------------------
 * Insert side: is this a model name?
 * ----------------------------------------------------------------
 */
bool
dt_model_name_known(const char *name)
{
	bool		found;
	bool		exists;
	DtTrustedScope scope;

	if (strlen(name) >= NAMEDATALEN)
		return false;

	(void) dt_models_relid();	/* sets up invalidation */
	if (known_names == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(KnownName);
		ctl.hcxt = CacheMemoryContext;
		known_names = hash_create("digitaltwin model names", 16, &ctl,
								  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
	hash_search(known_names, name, HASH_FIND, &found);
	if (found)
		return true;

	dt_trusted_enter(&scope);
	exists = dt_model_row_exists(name);
	dt_trusted_leave(&scope);

	/* only positive answers are cached: a model may appear at any time */
	if (exists && known_names != NULL)
		hash_search(known_names, name, HASH_ENTER, NULL);
	return exists;
}

/* ----------------------------------------------------------------
 * Worker side: the model cache
 * ----------------------------------------------------------------
 */

/*
 * Fill in what calling a model's functions takes (FmgrInfo, strictness,
 * the state type's layout), in cxt; 'broken' if a function is gone.
 */
void
dt_model_resolve(DtModel *m, MemoryContext cxt)
{
	HeapTuple	tup;

	/*
	 * The layout first: a broken model's twins are still loaded from
	 * twin_state (durable.c), and their images are read by it.
	 */
	get_typlenbyval(m->state_type, &m->typlen, &m->typbyval);
	m->is_jsonb = (m->state_type == JSONBOID);
	m->broken = false;
	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(m->process));
	if (!HeapTupleIsValid(tup))
	{
		m->broken = true;
		return;
	}
	m->process_strict = ((Form_pg_proc) GETSTRUCT(tup))->proisstrict;
	ReleaseSysCache(tup);
	fmgr_info_cxt(m->process, &m->process_fn, cxt);

	if (OidIsValid(m->init))
	{
		tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(m->init));
		if (!HeapTupleIsValid(tup))
		{
			m->broken = true;
			return;
		}
		m->init_strict = ((Form_pg_proc) GETSTRUCT(tup))->proisstrict;
		ReleaseSysCache(tup);
		fmgr_info_cxt(m->init, &m->init_fn, cxt);
	}
}

/* digitaltwin.models has the columns of version 1.8 (versions, pause) */
bool
dt_models_have_versions(void)
{
	return get_attnum(dt_models_relid(), "state_version") != InvalidAttrNumber;
}

/*
 * Reload the model cache if a model or a model function changed.  Runs in
 * the worker's transaction, inside SPI.
 *
 * The models are read with a fresh snapshot, never older than the one that
 * fetched the batch's events: an event is visible only once its model row
 * was (the trigger checked it), so a model missing from a fresh read was
 * really dropped.
 */
bool
dt_models_refresh(bool force)
{
	HASHCTL		ctl;
	int			ret;
	uint64		i;

	if (!models_stale && !force && model_cache != NULL)
		return false;
	(void) dt_models_relid();

	if (model_cache_cxt == NULL)
		model_cache_cxt = AllocSetContextCreate(TopMemoryContext,
												"digitaltwin model cache",
												ALLOCSET_SMALL_SIZES);
	/* clear the flag first: an invalidation arriving meanwhile re-sets it */
	models_stale = false;
	MemoryContextReset(model_cache_cxt);
	model_cache = NULL;
	last_by_id = NULL;
	dt_models_paused = 0;
	dt_models_logging = 0;

	ctl.keysize = NAMEDATALEN;
	ctl.entrysize = sizeof(DtModel);
	ctl.hcxt = model_cache_cxt;
	model_cache = hash_create("digitaltwin models", 16, &ctl,
							  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	/* version 1.8: versions and pause */
	ret = SPI_execute(dt_models_have_versions() ?
					  "SELECT id, name, process::pg_catalog.oid, init::pg_catalog.oid, "
					  "state_type::pg_catalog.oid, owner::pg_catalog.oid, search_path, "
					  "version, state_version, paused, "
					  "event_log_keep IS NOT NULL, history_keep IS NOT NULL "
					  "FROM digitaltwin.models" :
					  "SELECT id, name, process::pg_catalog.oid, init::pg_catalog.oid, "
					  "state_type::pg_catalog.oid, owner::pg_catalog.oid, search_path, "
					  "1, 1, false, false, false "
					  "FROM digitaltwin.models", false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(ret));

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *name = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		DtModel    *m;
		Datum		d;

		m = hash_search(model_cache, name, HASH_ENTER, NULL);
		/* dynahash does not clear a new entry: no field is left to chance */
		memset(m, 0, sizeof(DtModel));
		strlcpy(m->name, name, NAMEDATALEN);	/* the key, at once */
		m->id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		m->process = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
		d = SPI_getbinval(tup, desc, 4, &isnull);
		m->init = isnull ? InvalidOid : DatumGetObjectId(d);
		m->state_type = DatumGetObjectId(SPI_getbinval(tup, desc, 5, &isnull));
		m->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 6, &isnull));
		m->search_path = MemoryContextStrdup(model_cache_cxt,
											 TextDatumGetCString(SPI_getbinval(tup, desc, 7, &isnull)));
		m->version = DatumGetInt32(SPI_getbinval(tup, desc, 8, &isnull));
		m->state_version = DatumGetInt32(SPI_getbinval(tup, desc, 9, &isnull));
		m->paused = DatumGetBool(SPI_getbinval(tup, desc, 10, &isnull));
		if (m->paused)
			dt_models_paused++;
		m->log_events = DatumGetBool(SPI_getbinval(tup, desc, 11, &isnull));
		m->keep_history = DatumGetBool(SPI_getbinval(tup, desc, 12, &isnull));
		if (m->log_events || m->keep_history)
			dt_models_logging++;
		dt_model_resolve(m, model_cache_cxt);
	}
	return true;
}

/*
 * Make the cache cover the models of a fetched batch, before any of them is
 * applied (staged twins keep pointers into the cache, so it must not be
 * reloaded in the middle of a batch).  An invalidation may arrive after the
 * events were fetched but before it was read: reload on any miss.  Returns
 * true when the cache was reloaded.
 */
bool
dt_models_cover(DtEvent *events, int nevents)
{
	int			i;

	if (models_stale || model_cache == NULL)
		return dt_models_refresh(true);
	for (i = 0; i < nevents; i++)
	{
		if (dt_model_lookup(events[i].model) == NULL)
			return dt_models_refresh(true);
	}
	return false;
}

DtModel *
dt_model_lookup(const char *name)
{
	if (model_cache == NULL || strlen(name) >= NAMEDATALEN)
		return NULL;
	return hash_search(model_cache, name, HASH_FIND, NULL);
}

/* By id: a short scan, models are few; the last one found is remembered. */
DtModel *
dt_model_lookup_id(int32 model_id)
{
	HASH_SEQ_STATUS status;
	DtModel    *m;

	if (model_cache == NULL)
		return NULL;
	if (last_by_id != NULL && last_by_id->id == model_id)
		return last_by_id;
	hash_seq_init(&status, model_cache);
	while ((m = hash_seq_search(&status)) != NULL)
	{
		if (m->id == model_id)
		{
			hash_seq_term(&status);
			last_by_id = m;
			return m;
		}
	}
	return NULL;
}

bool
dt_model_id_live(int32 model_id)
{
	HASH_SEQ_STATUS status;
	DtModel    *m;

	if (model_cache == NULL)
		return false;
	hash_seq_init(&status, model_cache);
	while ((m = hash_seq_search(&status)) != NULL)
	{
		if (m->id == model_id)
		{
			hash_seq_term(&status);
			return true;
		}
	}
	return false;
}

/* ----------------------------------------------------------------
 * Calling a model
 *
 * A model function runs inside a worker, whose session outlives the call
 * and serves every other model.  Whatever the call does to that session is
 * undone when it returns or fails (DESIGN.md, trust rule 2):
 *	- settings: the call runs in its own GUC nest level (with the model's
 *	  search_path), closed with AtEOXact_GUC(false): even a session-level
 *	  set_config() of the model is thrown away, as core's analyze.c does for
 *	  index expressions;
 *	- session-level advisory locks and prepared statements are released;
 *	- temporary objects, SET ROLE and cursors WITH HOLD are refused by the
 *	  security-restricted operation the call runs in; LISTEN only takes
 *	  effect at commit, and the worker cancels it before the batch commits.
 *
 * Timeouts.  digitaltwin.model_timeout cancels the call like a statement
 * timeout (57014).  The cancel is a plain ERROR, which a model can catch
 * (EXCEPTION WHEN query_canceled) or not notice until it returns; so:
 *	- a call that returns after its timeout fired fails anyway, and the
 *	  pending cancel is cleared, so that it cannot hit the next event;
 *	- a call still running DT_TIMEOUT_GRACE_MS after the cancel is stopped
 *	  by terminating the worker (FATAL cannot be caught); the worker records
 *	  the event in its shared slot first, and its next incarnation
 *	  dead-letters that event without calling the model again.
 * ----------------------------------------------------------------
 */
#define DT_TIMEOUT_GRACE_MS 1000

static TimeoutId soft_timeout_id = MAX_TIMEOUTS;
static TimeoutId hard_timeout_id = MAX_TIMEOUTS;
static volatile sig_atomic_t call_timed_out = false;
static volatile sig_atomic_t call_stopped = false;
static volatile int64 call_event_id = 0;	/* the event of the armed call */
static volatile int64 stopped_event_id = 0;

static void
dt_model_soft_timeout(void)
{
	call_timed_out = true;
	QueryCancelPending = true;
	InterruptPending = true;
	SetLatch(MyLatch);
}

static void
dt_model_hard_timeout(void)
{
	/*
	 * The event is taken now: a call that does not look at interrupts may
	 * still return before the worker notices the stop, and the next event
	 * must not be blamed.  Only a plain variable is read here: the event's
	 * own memory may be a stack frame that an ERROR already unwound.
	 */
	if (!call_stopped)
		stopped_event_id = call_event_id;
	call_stopped = true;
	ProcDiePending = true;
	InterruptPending = true;
	SetLatch(MyLatch);
}

/* Worker start: register the two timeouts of a model call. */
void
dt_model_timeouts_init(void)
{
	soft_timeout_id = RegisterTimeout(USER_TIMEOUT, dt_model_soft_timeout);
	hard_timeout_id = RegisterTimeout(USER_TIMEOUT, dt_model_hard_timeout);
}

/*
 * The event whose model ignored its timeout, when the worker is exiting
 * for that reason; else 0.
 */
int64
dt_model_stopped_event(void)
{
	return call_stopped ? stopped_event_id : 0;
}

/* True if the timeout of the last (or current) call fired. */
bool
dt_model_call_timed_out(void)
{
	return call_timed_out;
}

static void
dt_model_timeouts_arm(void)
{
	EnableTimeoutParams timeouts[2];

	call_timed_out = false;
	if (dt_model_timeout_ms <= 0 || soft_timeout_id == MAX_TIMEOUTS)
		return;
	call_event_id = dt_current_event ? dt_current_event->event->id : 0;
	timeouts[0].id = soft_timeout_id;
	timeouts[0].type = TMPARAM_AFTER;
	timeouts[0].delay_ms = dt_model_timeout_ms;
	timeouts[1].id = hard_timeout_id;
	timeouts[1].type = TMPARAM_AFTER;
	timeouts[1].delay_ms = (int) Min((int64) dt_model_timeout_ms + DT_TIMEOUT_GRACE_MS,
									 PG_INT32_MAX);
	enable_timeouts(timeouts, 2);
}

/*
 * Disarm the timeouts; also on the error path (the caller's PG_CATCH), so
 * that neither can fire after the call.  A cancel our timer set and the
 * call never looked at must not hit the next call: cleared too.
 */
void
dt_model_timeouts_disarm(void)
{
	DisableTimeoutParams timeouts[2];

	if (soft_timeout_id == MAX_TIMEOUTS)
		return;
	if (call_timed_out)
		QueryCancelPending = false;
	timeouts[0].id = soft_timeout_id;
	timeouts[0].keep_indicator = false;
	timeouts[1].id = hard_timeout_id;
	timeouts[1].keep_indicator = false;
	disable_timeouts(timeouts, 2);
}

/*
 * Session state a model call may leave behind that no (sub)transaction end
 * undoes.  Called after every call, and by the worker after a failed one.
 */
void
dt_model_forget_session_state(void)
{
	LockReleaseSession(USER_LOCKMETHOD);
	DropAllPreparedStatements();
}

static void
dt_model_refuse_null_argument(DtModel *model, bool init)
{
	Oid			fn = init ? model->init : model->process;

	ereport(ERROR,
			(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
			 errmsg("%s function %s of model \"%s\" is STRICT and the twin has no state",
					init ? "init" : "process", format_procedure(fn), model->name),
			 errdetail("A STRICT function is never called with a NULL argument, so the event cannot be applied."),
			 errhint("Declare the function CALLED ON NULL INPUT, or give the model an init function.")));
}

/*
 * Call a model's process or init function as the model's owner, with the
 * model's search_path, in a security-restricted operation, under
 * digitaltwin.model_timeout.  The session is left as it was (see above).
 *
 * The caller runs this inside a subtransaction: on ERROR, aborting the
 * subtransaction restores the user id, the security context and the
 * settings; the caller disarms the timeouts and calls
 * dt_model_forget_session_state().
 */
Datum
dt_model_call(DtModel *model, bool init, int nargs, Datum *args,
			  bool *nulls, bool *isnull)
{
	FmgrInfo   *flinfo = init ? &model->init_fn : &model->process_fn;
	bool		strict = init ? model->init_strict : model->process_strict;
	LOCAL_FCINFO(fcinfo, 3);
	Oid			save_userid;
	int			save_sec_context;
	int			guc_level;
	Datum		result;
	int			i;

	Assert(nargs <= 3);
	InitFunctionCallInfoData(*fcinfo, flinfo, nargs, DEFAULT_COLLATION_OID,
							 NULL, NULL);
	for (i = 0; i < nargs; i++)
	{
		/* never a silent skip: the function may have become STRICT */
		if (nulls[i] && strict)
			dt_model_refuse_null_argument(model, init);
		fcinfo->args[i].value = args[i];
		fcinfo->args[i].isnull = nulls[i];
	}

	guc_level = dt_become_model_owner(model->owner, model->search_path,
									  &save_userid, &save_sec_context);
	dt_model_timeouts_arm();

	result = FunctionCallInvoke(fcinfo);

	dt_model_timeouts_disarm();
	dt_leave_model_owner(save_userid, save_sec_context, guc_level);
	/* a rehearsal calls models in the user's session: its state is the user's */
	if (dt_is_worker)
		dt_model_forget_session_state();

	if (call_timed_out)
	{
		/* the model caught the cancel, or never looked at it (cleared) */
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("model \"%s\" ran longer than digitaltwin.model_timeout (%d ms)",
						model->name, dt_model_timeout_ms)));
	}

	*isnull = fcinfo->isnull;
	return result;
}
