/*-------------------------------------------------------------------------
 *
 * lifecycle.c
 *	  The life of a model after create_model(): alter_model() (a new
 *	  version, with a migration of the states), pause_model() and
 *	  resume_model(), the workers' side of a pause (holding events), and
 *	  drop_model() (with the model's typed views).
 *
 * Switching.  A switch takes digitaltwin.models in EXCLUSIVE mode before
 * it reads the model's row.  Every worker batch takes the same table in
 * ROW SHARE mode before it looks at the model cache or takes the snapshot
 * it fetches with, and keeps it to its commit (worker.c).  So a switch
 * waits for the batches in flight, and no batch starts until the switch
 * has committed or rolled back: each batch runs wholly under one version,
 * and a migration converts states that no batch is changing.  Readers take
 * ACCESS SHARE and are never held up.
 *
 * A migration rewrites twin_state in the switching transaction; the
 * statement trigger of twin_state (reload.c) then has the workers reload
 * their twins after the commit, before their next batch.  Until they have,
 * shared memory holds images of the former state type: every image there
 * is tagged with the state_version of its model (DtTwinEntry), and a
 * reader whose snapshot sees another state_version reads the twin from
 * twin_state instead (views.c), where its snapshot finds the state that
 * goes with the version it sees.
 *
 * Pausing.  The workers move the fetched events of a paused model to
 * digitaltwin.held_events in the batch that fetched them (they are
 * consumed, so the queue drains and rotates as usual), and park its due
 * timers (timers.c).  resume_model() puts the held events back into the
 * queue under their original ids: the workers read the queue in id order,
 * so they come before every later event of their twins.  Because the
 * switch waits for the batches in flight, no batch can be holding events
 * while resume_model() moves them back.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_alter_model);
PG_FUNCTION_INFO_V1(digitaltwin_drop_model);
PG_FUNCTION_INFO_V1(digitaltwin_pause_model);
PG_FUNCTION_INFO_V1(digitaltwin_resume_model);
PG_FUNCTION_INFO_V1(digitaltwin_set_event_log);
PG_FUNCTION_INFO_V1(digitaltwin_set_history);

/* migrated states are written by this many at a time */
#define DT_MIGRATE_CHUNK 1000

/* The model's row, as a switch reads it (locked). */
typedef struct DtModelRow
{
	int32		id;
	Oid			process;
	Oid			init;
	Oid			state_type;
	Oid			owner;
	int32		version;
	bool		paused;
	int32		state_version;
} DtModelRow;

/*
 * A switch holds the workers of the database until its transaction ends:
 * it cannot be prepared (COMMIT PREPARED could come after a restart, the
 * workers waiting all along).
 */
static bool switched_in_xact = false;
static bool switch_callback_registered = false;

static void
dt_switch_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (switched_in_xact)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that ran alter_model(), pause_model(), resume_model(), set_event_log() or set_history()"),
						 errdetail("The workers of the database wait for it to end.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			switched_in_xact = false;
			dt_migration_running = false;
			break;
		default:
			break;
	}
}

/*
 * Lock out the workers' batches (see the file header), then read and lock
 * the model's row.  Runs inside a trusted scope (SPI connected); pushes
 * the snapshot the switch reads with, which dt_switch_end() pops.
 *
 * A transaction-wide snapshot (REPEATABLE READ, SERIALIZABLE) is refused:
 * taken before the lock, it would miss what the last batches committed
 * (the states to migrate, the events to hold or resume).
 */
static void
dt_switch_begin(const char *name, Oid caller, const char *action, DtModelRow *row)
{
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot %s a model in a transaction at isolation level %s",
						action, XactIsoLevel == XACT_SERIALIZABLE ? "SERIALIZABLE" : "REPEATABLE READ"),
				 errdetail("The switch must see what the workers committed up to the moment it has their lock."),
				 errhint("Run it in a READ COMMITTED transaction.")));
	if (!switch_callback_registered)
	{
		RegisterXactCallback(dt_switch_xact_callback, NULL);
		switch_callback_registered = true;
	}
	switched_in_xact = true;
	dt_model_lock_row(name, "id, process::pg_catalog.oid, init::pg_catalog.oid, "
					  "state_type::pg_catalog.oid, owner::pg_catalog.oid, version, paused, state_version");
	/* for the reads that follow: what the batches before the lock committed */
	PushActiveSnapshot(GetTransactionSnapshot());
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	row->id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	row->process = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
	d = SPI_getbinval(tup, desc, 3, &isnull);
	row->init = isnull ? InvalidOid : DatumGetObjectId(d);
	row->state_type = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));
	row->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 5, &isnull));
	row->version = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
	row->paused = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
	row->state_version = DatumGetInt32(SPI_getbinval(tup, desc, 8, &isnull));
	dt_check_model_owner(name, caller, row->owner, action);
}

static void
dt_switch_end(void)
{
	PopActiveSnapshot();
}

/* init and migrate are checked in the trusted scope: the caller's right here */
static void
dt_check_caller_may_execute(Oid fn, Oid caller)
{
	if (OidIsValid(fn) && pg_proc_aclcheck(fn, caller, ACL_EXECUTE) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_FUNCTION, format_procedure(fn));
}

static char *
dt_switch_name_arg(FunctionCallInfo fcinfo, const char *function)
{
	dt_require_preload();
	dt_forbid_in_model(function);
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model name must not be null")));
	return text_to_cstring(PG_GETARG_TEXT_PP(0));
}

/*
 * The model's functions run as its owner, whoever switches them: the owner
 * must be allowed to call them (the caller's right was checked with the
 * signature).
 */
static void
dt_check_owner_may_execute(Oid fn, Oid owner, const char *name, const char *role)
{
	if (OidIsValid(fn) && pg_proc_aclcheck(fn, owner, ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("owner %s of model \"%s\" may not execute %s function %s",
						GetUserNameFromId(owner, false), name, role, format_procedure(fn)),
				 errdetail("A model's functions run as the model's owner."),
				 errhint("GRANT EXECUTE ON FUNCTION %s TO %s.", format_procedure(fn),
						 quote_identifier(GetUserNameFromId(owner, false)))));
}

/* ----------------------------------------------------------------
 * Migration of the states
 * ----------------------------------------------------------------
 */
typedef struct DtMigration
{
	const char *model;
	int32		model_id;
	Oid			migrate;
	FmgrInfo	flinfo;
	Oid			owner;
	const char *search_path;
	int16		old_typlen;
	bool		old_typbyval;
	DtModel		target;			/* what dt_check_state needs of the new type */
	MemoryContext row_cxt;		/* one twin's conversion */
	MemoryContext chunk_cxt;	/* the states waiting to be written */
	Datum		twin_ids[DT_MIGRATE_CHUNK];
	Datum		states[DT_MIGRATE_CHUNK];
	int			n;
	Size		bytes;			/* of the states waiting */
	int64		migrated;
	const char *twin_id;		/* the twin being converted, for the context */
} DtMigration;

static void
dt_migration_context(void *arg)
{
	DtMigration *mg = arg;

	if (mg->twin_id != NULL)
		errcontext("migrating twin \"%s\" of model \"%s\"", mg->twin_id, mg->model);
}

/* Write the converted states of the chunk into twin_state. */
static void
dt_migration_flush(DtMigration *mg)
{
	Oid			types[3] = {INT4OID, TEXTARRAYOID, BYTEAARRAYOID};
	Datum		args[3];
	int			ret;

	if (mg->n == 0)
		return;
	args[0] = Int32GetDatum(mg->model_id);
	args[1] = PointerGetDatum(construct_array(mg->twin_ids, mg->n, TEXTOID, -1, false, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(mg->states, mg->n, BYTEAOID, -1, false, TYPALIGN_INT));
	/* a level of its own: the scan's cursor keeps its results */
	SPI_connect();
	ret = SPI_execute_with_args("UPDATE digitaltwin.twin_state s SET state = u.state "
								"FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) AS u(twin_id, state) "
								"WHERE s.model_id OPERATOR(pg_catalog.=) $1 "
								"AND s.twin_id OPERATOR(pg_catalog.=) u.twin_id",
								3, types, args, NULL, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	if (SPI_processed != (uint64) mg->n)
		elog(ERROR, "digitaltwin: migrated " UINT64_FORMAT " states of %d", SPI_processed, mg->n);
	SPI_finish();
	mg->migrated += mg->n;
	mg->n = 0;
	mg->bytes = 0;
	MemoryContextReset(mg->chunk_cxt);
}

/* dt_durable_scan() callback: convert one twin's state. */
static void
dt_migrate_twin(void *arg, int32 model_id, const char *twin_id, int idlen,
				const char *image, Size len, int64 event_count,
				TimestampTz updated_at)
{
	DtMigration *mg = arg;
	MemoryContext old;
	char	   *copy;
	char	   *id;
	LOCAL_FCINFO(fcinfo, 2);
	Oid			save_userid;
	int			save_sec_context;
	int			guc_level;
	Datum		result;

	if (model_id != mg->model_id)
		return;
	CHECK_FOR_INTERRUPTS();
	old = MemoryContextSwitchTo(mg->row_cxt);
	id = pnstrdup(twin_id, idlen);
	mg->twin_id = id;
	/* images in the scan are not aligned */
	copy = palloc(Max(len, sizeof(Datum)));
	memcpy(copy, image, len);

	InitFunctionCallInfoData(*fcinfo, &mg->flinfo, 2, DEFAULT_COLLATION_OID, NULL, NULL);
	fcinfo->args[0].value = CStringGetTextDatum(id);
	fcinfo->args[0].isnull = false;
	fcinfo->args[1].value = dt_state_image_read(copy, len, mg->old_typlen, mg->old_typbyval);
	fcinfo->args[1].isnull = false;
	guc_level = dt_become_model_owner(mg->owner, mg->search_path,
									  &save_userid, &save_sec_context);
	/* no switch from inside (reset at the end of the transaction on error) */
	dt_migration_running = true;
	result = FunctionCallInvoke(fcinfo);
	dt_migration_running = false;
	dt_leave_model_owner(save_userid, save_sec_context, guc_level);
	if (fcinfo->isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("migrate function %s returned NULL for twin \"%s\" of model \"%s\"",
						format_procedure(mg->migrate), id, mg->model),
				 errhint("Return a state for every twin; a twin ends when its process function returns NULL.")));
	dt_check_state(&mg->target, result);

	/* copied out of the call's memory, which is reset below */
	MemoryContextSwitchTo(mg->chunk_cxt);
	mg->twin_ids[mg->n] = CStringGetTextDatum(id);
	mg->states[mg->n] = PointerGetDatum(dt_state_to_bytea(result, mg->target.typlen,
														  mg->target.typbyval));
	mg->bytes += VARSIZE(DatumGetPointer(mg->states[mg->n]));
	mg->n++;
	MemoryContextSwitchTo(old);
	mg->twin_id = NULL;
	MemoryContextReset(mg->row_cxt);
	/* arrays well under the 1 GB a value may have */
	if (mg->n == DT_MIGRATE_CHUNK || mg->bytes >= DT_FLUSH_BYTES)
		dt_migration_flush(mg);
}

/* Every twin of the model was converted: none left in the former type. */
static void
dt_migration_check_count(int32 model_id, int64 migrated)
{
	int64		twins = dt_model_rows("twin_state", model_id);

	if (twins != migrated)
		elog(ERROR, "digitaltwin: migrated " INT64_FORMAT " of " INT64_FORMAT " twins", migrated, twins);
}

/*
 * Convert every durable state of the model with migrate, as the model's
 * owner with the new version's search_path.  Any error fails the switch:
 * all or nothing.  Returns the number of twins converted.
 */
static int64
dt_migrate_states(const char *name, const DtModelRow *row, Oid migrate,
				  Oid new_type, const char *search_path)
{
	DtMigration *mg = palloc0(sizeof(DtMigration));
	ErrorContextCallback errcb;
	int64		migrated;

	mg->model = name;
	mg->model_id = row->id;
	mg->migrate = migrate;
	fmgr_info(migrate, &mg->flinfo);
	mg->owner = row->owner;
	mg->search_path = search_path;
	get_typlenbyval(row->state_type, &mg->old_typlen, &mg->old_typbyval);
	strlcpy(mg->target.name, name, NAMEDATALEN);
	mg->target.state_type = new_type;
	get_typlenbyval(new_type, &mg->target.typlen, &mg->target.typbyval);
	mg->target.is_jsonb = (new_type == JSONBOID);
	mg->row_cxt = AllocSetContextCreate(CurrentMemoryContext, "digitaltwin migration row",
										ALLOCSET_DEFAULT_SIZES);
	mg->chunk_cxt = AllocSetContextCreate(CurrentMemoryContext, "digitaltwin migration chunk",
										  ALLOCSET_DEFAULT_SIZES);

	errcb.callback = dt_migration_context;
	errcb.arg = mg;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	dt_durable_scan(-1, 1, mg->model_id, dt_migrate_twin, mg);
	dt_migration_flush(mg);
	error_context_stack = errcb.previous;

	migrated = mg->migrated;
	dt_migration_check_count(mg->model_id, migrated);
	MemoryContextDelete(mg->row_cxt);
	MemoryContextDelete(mg->chunk_cxt);
	pfree(mg);
	return migrated;
}

/* ----------------------------------------------------------------
 * alter_model
 * ----------------------------------------------------------------
 */
Datum
digitaltwin_alter_model(PG_FUNCTION_ARGS)
{
	char	   *name = dt_switch_name_arg(fcinfo, "digitaltwin.alter_model()");
	Oid			caller = GetUserId();
	Oid			process = PG_ARGISNULL(1) ? InvalidOid : PG_GETARG_OID(1);
	Oid			init = PG_ARGISNULL(2) ? InvalidOid : PG_GETARG_OID(2);
	Oid			migrate = PG_ARGISNULL(3) ? InvalidOid : PG_GETARG_OID(3);
	char	   *search_path;
	DtModelRow	row;
	Oid			new_type = InvalidOid;
	bool		strict = false;
	int64		migrated = 0;
	Oid			argtypes[7] = {INT4OID, REGPROCEDUREOID, REGPROCEDUREOID, REGTYPEOID,
	TEXTOID, INT4OID, REGPROCEDUREOID};
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int32		version;
	bool		isnull;
	int			ret;
	DtTrustedScope scope;

	if (!OidIsValid(process) && !OidIsValid(init) && !OidIsValid(migrate))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("alter_model() of model \"%s\" changes nothing", name),
				 errhint("Give a new process, init or migrate function.")));

	/* as the caller: signatures and the caller's right to execute them */
	if (OidIsValid(process))
		new_type = dt_check_process(process, &strict);
	dt_check_caller_may_execute(init, caller);
	dt_check_caller_may_execute(migrate, caller);
	search_path = pstrdup(namespace_search_path);

	dt_trusted_enter(&scope);
	dt_switch_begin(name, caller, "alter", &row);

	/*
	 * New code runs as the owner: only the owner (or a member of its role)
	 * gives it; digitaltwin_admin may pause, resume and drop any model, but
	 * not run its code as another role.
	 */
	if (!has_privs_of_role(caller, row.owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only the owner of model \"%s\" may change its functions", name),
				 errdetail("The functions of a model run as its owner, %s.",
						   GetUserNameFromId(row.owner, false)),
				 errhint("Members of digitaltwin_admin may pause, resume or drop the model; its owner alters it.")));
	if (!dt_allow_superuser_models && superuser_arg(row.owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("model \"%s\" is owned by a superuser", name),
				 errhint("Set digitaltwin.allow_superuser_models = on, or recreate the model as an ordinary role.")));
	if (!OidIsValid(process))
	{
		process = row.process;
		new_type = row.state_type;
		strict = func_strict(process);
	}
	if (OidIsValid(init))
		dt_check_init(init, new_type);
	else if (OidIsValid(row.init) && new_type == row.state_type)
		init = row.init;
	else if (OidIsValid(row.init))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("the init function %s of model \"%s\" returns the former state type %s",
						format_procedure(row.init), name, format_type_be(row.state_type)),
				 errhint("Give an init function that returns %s.", format_type_be(new_type))));
	if (!OidIsValid(init) && strict)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("process function %s of a model without init must not be STRICT",
						format_procedure(process)),
				 errdetail("A new twin has a NULL state, and a STRICT function is never called with NULL."),
				 errhint("Declare the function CALLED ON NULL INPUT, or give the model an init function.")));
	if (OidIsValid(migrate))
		dt_check_migrate(migrate, row.state_type, new_type);
	else if (new_type != row.state_type)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("the state type of model \"%s\" would change from %s to %s",
						name, format_type_be(row.state_type), format_type_be(new_type)),
				 errdetail("Every twin's state must then be converted in the same transaction."),
				 errhint("Give a migrate function declared as (twin_id text, old_state %s) RETURNS %s.",
						 format_type_be(row.state_type), format_type_be(new_type))));
	dt_check_owner_may_execute(process, row.owner, name, "process");
	dt_check_owner_may_execute(init, row.owner, name, "init");
	dt_check_owner_may_execute(migrate, row.owner, name, "migrate");

	/*
	 * The images in shared memory carry the state version in 16 bits
	 * (DtTwinEntry): it must never come round to a value a reader could
	 * still hold.
	 */
	if (OidIsValid(migrate) && row.state_version >= PG_UINT16_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("model \"%s\" has been migrated %d times, the most a model can be",
						name, row.state_version - 1),
				 errhint("Create a new model for another migration.")));
	if (OidIsValid(migrate))
		migrated = dt_migrate_states(name, &row, migrate, new_type, search_path);

	values[0] = Int32GetDatum(row.id);
	values[1] = ObjectIdGetDatum(process);
	values[2] = ObjectIdGetDatum(init);
	nulls[2] = OidIsValid(init) ? ' ' : 'n';
	values[3] = ObjectIdGetDatum(new_type);
	values[4] = CStringGetTextDatum(search_path);
	values[5] = Int32GetDatum(OidIsValid(migrate) ? 1 : 0);
	values[6] = ObjectIdGetDatum(migrate);
	nulls[6] = OidIsValid(migrate) ? ' ' : 'n';
	ret = SPI_execute_with_args("UPDATE digitaltwin.models SET process = $2, init = $3, "
								"state_type = $4, search_path = $5, "
								"version = version OPERATOR(pg_catalog.+) 1, "
								"state_version = state_version OPERATOR(pg_catalog.+) $6 "
								"WHERE id OPERATOR(pg_catalog.=) $1 RETURNING version",
								6, argtypes, values, nulls, false, 0);
	if (ret != SPI_OK_UPDATE_RETURNING || SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	/* new functions are not the rules any more (alter_rule_model() records them again) */
	if (get_attnum(dt_models_relid(), "rules") != InvalidAttrNumber &&
		SPI_execute_with_args("UPDATE digitaltwin.models SET rules = NULL "
							  "WHERE id OPERATOR(pg_catalog.=) $1 AND rules IS NOT NULL",
							  1, argtypes, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "digitaltwin: cannot clear the rules of model \"%s\"", name);

	values[5] = ObjectIdGetDatum(caller);
	argtypes[5] = REGROLEOID;
	ret = SPI_execute_with_args("INSERT INTO digitaltwin.model_versions "
								"(model_id, model, version, process, init, state_type, search_path, "
								" created_by, migrate) "
								"SELECT m.id, m.name, m.version, $2, $3, $4, $5, $6, $7 "
								"FROM digitaltwin.models m WHERE m.id OPERATOR(pg_catalog.=) $1",
								7, argtypes, values, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	dt_switch_end();
	dt_trusted_leave(&scope);

	CacheInvalidateRelcacheByRelid(dt_models_relid());
	if (OidIsValid(migrate))
		ereport(NOTICE,
				(errmsg("model \"%s\" is at version %d; " INT64_FORMAT " twins migrated",
						name, version, migrated),
				 errdetail("The workers reload their twins once this transaction commits.")));
	PG_RETURN_INT32(version);
}

/* ----------------------------------------------------------------
 * pause_model / resume_model
 * ----------------------------------------------------------------
 */
static void
dt_set_paused(int32 id, bool paused)
{
	Datum		arg = Int32GetDatum(id);
	Oid			argtype = INT4OID;
	int			ret;

	ret = SPI_execute_with_args(paused ?
								"UPDATE digitaltwin.models SET paused_at = pg_catalog.now() "
								"WHERE id OPERATOR(pg_catalog.=) $1" :
								"UPDATE digitaltwin.models SET paused_at = NULL "
								"WHERE id OPERATOR(pg_catalog.=) $1",
								1, &argtype, &arg, NULL, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	CacheInvalidateRelcacheByRelid(dt_models_relid());
}

Datum
digitaltwin_pause_model(PG_FUNCTION_ARGS)
{
	char	   *name = dt_switch_name_arg(fcinfo, "digitaltwin.pause_model()");
	Oid			caller = GetUserId();
	DtModelRow	row;
	DtTrustedScope scope;

	dt_trusted_enter(&scope);
	dt_switch_begin(name, caller, "pause", &row);
	if (row.paused)
		ereport(NOTICE,
				(errmsg("model \"%s\" is already paused", name)));
	else
		dt_set_paused(row.id, true);
	dt_switch_end();
	dt_trusted_leave(&scope);
	PG_RETURN_VOID();
}

Datum
digitaltwin_resume_model(PG_FUNCTION_ARGS)
{
	char	   *name = dt_switch_name_arg(fcinfo, "digitaltwin.resume_model()");
	Oid			caller = GetUserId();
	DtModelRow	row;
	Datum		arg;
	Oid			argtype = INT4OID;
	int			ret;
	uint64		resumed = 0;
	DtTrustedScope scope;

	dt_trusted_enter(&scope);
	dt_switch_begin(name, caller, "resume", &row);
	if (!row.paused)
		ereport(NOTICE,
				(errmsg("model \"%s\" is not paused", name)));
	else
	{
		/*
		 * Under their own ids, into the queue partition of the current
		 * generation (the column default): the queue is read in id order.
		 */
		arg = Int32GetDatum(row.id);
		ret = SPI_execute_with_args("WITH h AS (DELETE FROM digitaltwin.held_events "
									"           WHERE model_id OPERATOR(pg_catalog.=) $1 RETURNING *) "
									"INSERT INTO digitaltwin.events "
									"(id, model, twin_id, payload, enqueued_at, depth, event_time, "
									" sender_model, sender_twin, retry_of) "
									"OVERRIDING SYSTEM VALUE "
									"SELECT id, model, twin_id, payload, enqueued_at, depth, event_time, "
									"       sender_model, sender_twin, retry_of "
									"FROM h ORDER BY id",
									1, &argtype, &arg, NULL, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
		resumed = SPI_processed;
		dt_set_paused(row.id, false);
	}
	dt_switch_end();
	dt_trusted_leave(&scope);
	PG_RETURN_INT64((int64) resumed);
}

/* ----------------------------------------------------------------
 * Workers: holding the events of paused models
 * ----------------------------------------------------------------
 */
static SPIPlanPtr hold_plan = NULL;

/* the columns of held_events the workers write, in order */
static const Oid hold_types[11] = {
	INT8OID, INT4OID, TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID, INT4OID,
	TIMESTAMPTZOID, TEXTOID, TEXTOID, INT8OID
};

void
dt_hold_forget_plans(void)
{
	if (hold_plan)
		SPI_freeplan(hold_plan);
	hold_plan = NULL;
}

/* Insert the held events into digitaltwin.held_events, in one statement. */
static void
dt_hold_insert(DtEvent **held, int n)
{
	Datum	   *cols[11];
	bool	   *nulls[11];
	Datum		args[11];
	int			ret;
	int			c;
	int			i;

	if (hold_plan == NULL)
	{
		Oid			types[11];

		for (c = 0; c < 11; c++)
			types[c] = get_array_type(hold_types[c]);

		hold_plan = dt_spi_prepare_kept("INSERT INTO digitaltwin.held_events "
										"(id, model_id, model, twin_id, payload, enqueued_at, depth, "
										" event_time, sender_model, sender_twin, retry_of) "
										"SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
										"pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), "
										"pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8), "
										"pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11))",
										11, types);
	}
	for (c = 0; c < 11; c++)
	{
		cols[c] = palloc(sizeof(Datum) * n);
		nulls[c] = palloc0(sizeof(bool) * n);
	}
	for (i = 0; i < n; i++)
	{
		DtEvent    *ev = held[i];

		cols[0][i] = Int64GetDatum(ev->id);
		cols[1][i] = Int32GetDatum(dt_model_lookup(ev->model)->id);
		cols[2][i] = CStringGetTextDatum(ev->model);
		cols[3][i] = CStringGetTextDatum(ev->twin_id);
		cols[4][i] = JsonbPGetDatum(ev->payload);
		nulls[4][i] = (ev->payload == NULL);
		cols[5][i] = TimestampTzGetDatum(ev->enqueued_at);
		cols[6][i] = Int32GetDatum(ev->depth);
		cols[7][i] = TimestampTzGetDatum(ev->event_time);
		cols[8][i] = ev->sender_model ? CStringGetTextDatum(ev->sender_model) : (Datum) 0;
		nulls[8][i] = (ev->sender_model == NULL);
		cols[9][i] = ev->sender_twin ? CStringGetTextDatum(ev->sender_twin) : (Datum) 0;
		nulls[9][i] = (ev->sender_twin == NULL);
		cols[10][i] = Int64GetDatum(ev->retry_of);
		nulls[10][i] = (ev->retry_of == 0);
	}
	for (c = 0; c < 11; c++)
		args[c] = dt_make_array(cols[c], nulls[c], n, hold_types[c]);
	ret = SPI_execute_plan(hold_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));
}

/*
 * Of a batch's fetched events, move those of paused models to held_events
 * (they are deleted from the queue with the others) and return how many
 * are left to apply, compacted in order at the front of the array.  Runs
 * in the batch's transaction, the model cache covering the events.
 */
int
dt_hold_paused_events(DtEvent *events, int nevents)
{
	DtEvent   **held = NULL;
	int			nheld = 0;
	int			kept = 0;
	int			i;

	for (i = 0; i < nevents; i++)
	{
		DtModel    *model = dt_model_lookup(events[i].model);

		if (model != NULL && model->paused)
		{
			if (held == NULL)
				held = palloc(sizeof(DtEvent *) * nevents);
			held[nheld++] = &events[i];
		}
	}
	if (nheld == 0)
		return nevents;
	dt_hold_insert(held, nheld);
	/* keep the order; the held ones stay, in order, behind the others */
	{
		DtEvent    *rest = palloc(sizeof(DtEvent) * nheld);
		int			r = 0;

		for (i = 0; i < nevents; i++)
		{
			DtModel    *model = dt_model_lookup(events[i].model);

			if (model != NULL && model->paused)
				rest[r++] = events[i];
			else
				events[kept++] = events[i];
		}
		memcpy(&events[kept], rest, sizeof(DtEvent) * nheld);
	}
	return kept;
}

/* ----------------------------------------------------------------
 * set_event_log / set_history
 * ----------------------------------------------------------------
 */

/*
 * Set how long the model's events (or states) are kept, as a switch: the
 * batches after it log, those before it did not.  Returns whether the
 * model kept none before.
 */
static bool
dt_set_keep(FunctionCallInfo fcinfo, const char *name, Oid caller,
			const char *function, const char *column, int32 *id_out)
{
	Interval   *keep = PG_ARGISNULL(1) ? NULL : PG_GETARG_INTERVAL_P(1);
	Interval	zero;
	DtModelRow	row;
	Oid			types[2] = {INT4OID, INTERVALOID};
	Datum		args[2];
	bool		isnull;
	bool		was_off;
	int			ret;

	memset(&zero, 0, sizeof(zero));
	if (keep != NULL &&
		DatumGetInt32(DirectFunctionCall2(interval_cmp, IntervalPGetDatum(keep),
										  IntervalPGetDatum(&zero))) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("keep must be a positive interval"),
				 errhint("Pass keep => NULL to stop the event log or the history.")));
	dt_require_table("log_partitions", "1.8", function);
	dt_switch_begin(name, caller, "change", &row);
	args[0] = Int32GetDatum(row.id);
	args[1] = keep ? IntervalPGetDatum(keep) : (Datum) 0;
	ret = SPI_execute_with_args(psprintf("SELECT %s IS NULL FROM digitaltwin.models "
										 "WHERE id OPERATOR(pg_catalog.=) $1", column),
								1, types, args, NULL, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	was_off = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	ret = SPI_execute_with_args(psprintf("UPDATE digitaltwin.models SET %s = $2 "
										 "WHERE id OPERATOR(pg_catalog.=) $1", column),
								2, types, args, keep ? NULL : " n", false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	CacheInvalidateRelcacheByRelid(dt_models_relid());
	*id_out = row.id;
	return was_off && keep != NULL;
}

Datum
digitaltwin_set_event_log(PG_FUNCTION_ARGS)
{
	const char *name = dt_switch_name_arg(fcinfo, "digitaltwin.set_event_log()");
	Oid			caller = GetUserId();
	int32		id;
	DtTrustedScope scope;

	dt_trusted_enter(&scope);
	(void) dt_set_keep(fcinfo, name, caller, "digitaltwin.set_event_log()", "event_log_keep", &id);
	dt_switch_end();
	dt_trusted_leave(&scope);
	PG_RETURN_VOID();
}

/*
 * Starting a history records the twins' current states, valid from now:
 * twins_as_of() then finds every twin, not only those that change later.
 */
Datum
digitaltwin_set_history(PG_FUNCTION_ARGS)
{
	const char *name = dt_switch_name_arg(fcinfo, "digitaltwin.set_history()");
	Oid			caller = GetUserId();
	int32		id;
	Datum		arg;
	Oid			type = INT4OID;
	DtTrustedScope scope;

	dt_trusted_enter(&scope);
	if (dt_set_keep(fcinfo, name, caller, "digitaltwin.set_history()", "history_keep", &id))
	{
		arg = Int32GetDatum(id);
		if (SPI_execute_with_args("INSERT INTO digitaltwin.state_history "
								  "(model_id, model, twin_id, state, event_count, valid_from) "
								  "SELECT m.id, m.name, t.twin_id, t.state, t.event_count, pg_catalog.now() "
								  "FROM digitaltwin.twins t JOIN digitaltwin.models m "
								  "  ON m.name OPERATOR(pg_catalog.=) t.model "
								  "WHERE m.id OPERATOR(pg_catalog.=) $1",
								  1, &type, &arg, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "digitaltwin: cannot record the current states of model \"%s\"", name);
	}
	dt_switch_end();
	dt_trusted_leave(&scope);
	PG_RETURN_VOID();
}


/* ----------------------------------------------------------------
 * drop_model
 * ----------------------------------------------------------------
 */

/*
 * A model that still has twins (or, from version 1.8, held events) is
 * dropped only with force => true: dropping forgets them for good, and
 * alter_model() is the way to change a model and keep them.
 */
static void
dt_drop_model_check_force(const char *name, int32 id)
{
	int64		twins = dt_model_rows("twin_state", id);
	int64		held = dt_table_exists("held_events") ? dt_model_rows("held_events", id) : 0;

	if (twins > 0 || held > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("model \"%s\" has " INT64_FORMAT " twins and " INT64_FORMAT " held events",
						name, twins, held),
				 errdetail("Dropping the model forgets its twins, their timers and its held events for good."),
				 errhint("To change the model and keep its twins, use digitaltwin.alter_model(); to drop it anyway, digitaltwin.drop_model(%s, force => true).",
						 quote_literal_cstr(name))));
}

Datum
digitaltwin_drop_model(PG_FUNCTION_ARGS)
{
	char	   *name;
	Datum		arg;
	Oid			argtype = TEXTOID;
	bool		isnull;
	Oid			owner;
	Datum		id;
	int			ret;
	Oid			caller = GetUserId();
	/* version 1.7's drop_model(text) forces, as it always did */
	bool		force = PG_NARGS() < 2 || (!PG_ARGISNULL(1) && PG_GETARG_BOOL(1));
	DtTrustedScope scope;

	dt_require_preload();
	dt_forbid_in_model("digitaltwin.drop_model()");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model name must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	arg = CStringGetTextDatum(name);

	if (!force && IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot tell whether model \"%s\" has twins in a transaction at isolation level %s",
						name, XactIsoLevel == XACT_SERIALIZABLE ? "SERIALIZABLE" : "REPEATABLE READ"),
				 errhint("Run it in a READ COMMITTED transaction, or drop with force => true.")));
	dt_trusted_enter(&scope);

	/*
	 * As a switch of lifecycle.c: no batch is creating twins of the model
	 * or holding its events while it is looked at and dropped, and the
	 * look sees what the last batches committed.
	 */
	dt_model_lock_row(name, "owner::pg_catalog.oid, id");
	owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));
	id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	dt_check_model_owner(name, caller, owner, "drop");
	if (!force)
		dt_drop_model_check_force(name, DatumGetInt32(id));

	dt_twin_views_drop(DatumGetInt32(id), name);
	/* twin_state and twin_views rows go with it (ON DELETE CASCADE) */
	ret = SPI_execute_with_args("DELETE FROM digitaltwin.models WHERE name OPERATOR(pg_catalog.=) $1",
								1, &argtype, &arg, NULL, false, 0);
	if (ret != SPI_OK_DELETE)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	dt_trusted_leave(&scope);

	CacheInvalidateRelcacheByRelid(dt_models_relid());
	PG_RETURN_VOID();
}
