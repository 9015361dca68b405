/*-------------------------------------------------------------------------
 *
 * rights.c
 *	  Per-model rights: grant_model(), revoke_model(), and the checks that
 *	  enforce them.
 *
 * Three rights on a model: 'send' (queue events for it), 'read' (see its
 * twins, alerts and statistics) and 'admin' (reset its statistics, read
 * and retry its dead letters, grant rights on it), which includes the
 * other two.  Switching a model (alter, pause, resume, drop, the logging
 * switches) stays with its owner and digitaltwin_admin: a switch holds
 * every worker of the database until its transaction ends, which a team
 * trusted with one model must not be able to do to the others.  A role has a right on a model when it has the privileges of:
 *
 *	  a superuser, or the model's owner;
 *	  the group role that means "every model" for that right:
 *	  digitaltwin_writer (send), digitaltwin_reader (read),
 *	  digitaltwin_admin (admin, and through its memberships the others);
 *	  a role named in digitaltwin.model_grants for the model with that
 *	  right or 'admin'.
 *
 * "Has the privileges of" is has_privs_of_role(): membership with INHERIT,
 * as for PostgreSQL's own object privileges.
 *
 * Where they are enforced: at insert time in the events' CHECK constraint
 * (queue.c, so INSERT, COPY, send() and a model's sends alike); in the
 * live views, which leave out the models the caller may not read
 * (views.c, and so every typed view, which is a view over them); by row
 * level security on digitaltwin.alerts and dead_letters, whose policies
 * call _may_all() and _models_allowed() once per query (InitPlans); in
 * model_stats' WHERE clause; and in the functions that act on one model.
 *
 * grant_model() also gives the role the object privileges the right needs
 * (schema usage, INSERT on the queue, SELECT on the views...), so that a
 * grant is all it takes.  revoke_model() takes back the model grant only:
 * the object privileges give nothing without a model grant (every row is
 * filtered, every insert refused), and a DBA may have granted them on
 * purpose.
 *
 * The grants of every model are cached per backend, and the cache dropped
 * when digitaltwin.models or model_grants is invalidated (grant_model()
 * and revoke_model() invalidate it) or a role or membership changes.  The
 * events' CHECK runs for every row of a COPY: the last answer is kept.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_grant_model);
PG_FUNCTION_INFO_V1(digitaltwin_revoke_model);
PG_FUNCTION_INFO_V1(digitaltwin_may_all);
PG_FUNCTION_INFO_V1(digitaltwin_models_allowed);

typedef struct DtGrant
{
	Oid			grantee;
	int			rights;			/* DT_RIGHT_* bits */
} DtGrant;

typedef struct DtModelRights
{
	char		name[NAMEDATALEN];	/* hash key */
	int32		id;
	Oid			owner;
	int			ngrants;
	DtGrant    *grants;
} DtModelRights;

static HTAB *rights_cache = NULL;
static MemoryContext rights_cxt = NULL;
static bool callbacks_registered = false;
static uint64 rights_generation = 1;
static Oid	models_relid = InvalidOid;	/* the relations the cache reads */
static Oid	grants_relid = InvalidOid;

/* the last answer of dt_model_allowed() */
static struct
{
	uint64		generation;
	Oid			user;
	int			right;
	bool		allowed;
	char		model[NAMEDATALEN];
} last_answer;

static void
dt_rights_invalidate(void)
{
	rights_generation++;
	if (rights_cxt != NULL)
		MemoryContextReset(rights_cxt);
	rights_cache = NULL;
}

static void
dt_rights_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == models_relid || relid == grants_relid)
		dt_rights_invalidate();
}

static void
dt_rights_syscache_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	dt_rights_invalidate();
}

const char *
dt_right_name(int right)
{
	switch (right)
	{
		case DT_RIGHT_SEND:
			return "send";
		case DT_RIGHT_READ:
			return "read";
		case DT_RIGHT_ADMIN:
			return "admin";
	}
	elog(ERROR, "unknown digitaltwin right %d", right);
	return NULL;				/* keep compiler quiet */
}

/* 'send', 'read' or 'admin'; anything else is refused. */
int
dt_right_from_name(const char *name)
{
	if (strcmp(name, "send") == 0)
		return DT_RIGHT_SEND;
	if (strcmp(name, "read") == 0)
		return DT_RIGHT_READ;
	if (strcmp(name, "admin") == 0)
		return DT_RIGHT_ADMIN;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unrecognized model privilege \"%s\"", name),
			 errhint("The privileges of a model are 'send', 'read' and 'admin'.")));
	return 0;					/* keep compiler quiet */
}

/* The group role that has the right on every model. */
static Oid
dt_right_group(int right)
{
	const char *group = right == DT_RIGHT_SEND ? "digitaltwin_writer" :
	right == DT_RIGHT_READ ? "digitaltwin_reader" : "digitaltwin_admin";

	return get_role_oid(group, true);
}

/* Load every model's owner and grants (one query, as the tables' owner). */
static void
dt_rights_load(void)
{
	HASHCTL		ctl;
	DtTrustedScope scope;
	bool		has_grants;
	uint64		i;
	int			attempt;

	if (!callbacks_registered)
	{
		CacheRegisterRelcacheCallback(dt_rights_relcache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHOID, dt_rights_syscache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHMEMMEMROLE, dt_rights_syscache_callback, (Datum) 0);
		callbacks_registered = true;
	}
	if (rights_cxt == NULL)
		rights_cxt = AllocSetContextCreate(CacheMemoryContext, "digitaltwin model rights",
										   ALLOCSET_SMALL_SIZES);
	ctl.keysize = NAMEDATALEN;
	ctl.entrysize = sizeof(DtModelRights);
	ctl.hcxt = rights_cxt;

	models_relid = dt_models_relid();
	/* a library newer than the extension: no grants before version 1.10 */
	has_grants = dt_table_exists("model_grants");
	grants_relid = has_grants ? dt_extension_relid("model_grants") : InvalidOid;

	/*
	 * With a snapshot taken now, after the invalidations received so far,
	 * not the statement's or the transaction's: a cache loaded with an
	 * older snapshot (REPEATABLE READ, or a statement that began before a
	 * revoke_model() committed) would keep a revoked grant for the rest of
	 * the session, the revoke's invalidation being already consumed.  An
	 * invalidation that arrives while the query runs may be of a commit the
	 * snapshot does not see: load again.
	 */
	for (attempt = 0;; attempt++)
	{
		uint64		generation;

		AcceptInvalidationMessages();
		generation = rights_generation;
		dt_trusted_enter(&scope);
		dt_spi_read_latest(has_grants ?
						   "SELECT m.name, m.owner::pg_catalog.oid, g.grantee::pg_catalog.oid, g.privilege, m.id "
						   "FROM digitaltwin.models m "
						   "LEFT JOIN digitaltwin.model_grants g ON g.model_id OPERATOR(pg_catalog.=) m.id "
						   "ORDER BY m.name" :
						   "SELECT m.name, m.owner::pg_catalog.oid, NULL::pg_catalog.oid, NULL::pg_catalog.text, m.id "
						   "FROM digitaltwin.models m");
		/* nothing below accepts invalidations before the cache is published */
		if (generation == rights_generation || attempt >= 10)
			break;
		dt_trusted_leave(&scope);
	}

	/* built in full before it is published: an error leaves no half cache */
	{
		HTAB	   *cache = hash_create("digitaltwin model rights", 16, &ctl,
										HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

		for (i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			char	   *name = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
			DtModelRights *r;
			bool		found;
			Datum		grantee;
			char	   *privilege;

			if (strlen(name) >= NAMEDATALEN)
				continue;
			r = hash_search(cache, name, HASH_ENTER, &found);
			if (!found)
			{
				r->id = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
				r->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
				r->ngrants = 0;
				r->grants = NULL;
			}
			grantee = SPI_getbinval(tup, desc, 3, &isnull);
			if (isnull)
				continue;
			privilege = TextDatumGetCString(SPI_getbinval(tup, desc, 4, &isnull));
			r->grants = r->grants == NULL ?
				MemoryContextAlloc(rights_cxt, sizeof(DtGrant)) :
				repalloc(r->grants, sizeof(DtGrant) * (r->ngrants + 1));
			r->grants[r->ngrants].grantee = DatumGetObjectId(grantee);
			r->grants[r->ngrants].rights = dt_right_from_name(privilege);
			r->ngrants++;
		}
		dt_trusted_leave(&scope);
		rights_cache = cache;
	}
}

/* Whether the role has the right on every model (superuser, group role). */
bool
dt_may_all_models(Oid user, int right)
{
	Oid			group = dt_right_group(right);

	return superuser_arg(user) || (OidIsValid(group) && has_privs_of_role(user, group));
}

/*
 * Whether 'user' has 'right' on the model called 'model'.  A model that
 * does not exist: false, unless the role has the right on every model
 * (callers say that it does not exist).
 */
bool
dt_model_allowed(const char *model, Oid user, int right)
{
	uint64		generation = rights_generation;
	bool		allowed = false;

	if (last_answer.generation == generation && last_answer.user == user &&
		last_answer.right == right && strcmp(last_answer.model, model) == 0)
		return last_answer.allowed;

	if (dt_may_all_models(user, right))
		allowed = true;
	else if (strlen(model) < NAMEDATALEN)
	{
		DtModelRights *r;
		Oid			owner = InvalidOid;
		DtGrant    *grants = NULL;
		int			ngrants = 0;
		int			i;

		if (rights_cache == NULL)
			dt_rights_load();
		r = hash_search(rights_cache, model, HASH_FIND, NULL);
		/*
		 * A copy: has_privs_of_role() may read the catalogs, take a lock
		 * and accept an invalidation that resets the cache.
		 */
		if (r != NULL)
		{
			owner = r->owner;
			ngrants = r->ngrants;
			grants = palloc(sizeof(DtGrant) * Max(ngrants, 1));
			memcpy(grants, r->grants, sizeof(DtGrant) * ngrants);
			allowed = has_privs_of_role(user, owner);
		}
		for (i = 0; !allowed && i < ngrants; i++)
		{
			if ((grants[i].rights & (right | DT_RIGHT_ADMIN)) != 0 &&
				has_privs_of_role(user, grants[i].grantee))
				allowed = true;
		}
	}

	if (strlen(model) < NAMEDATALEN)
	{
		last_answer.generation = generation;
		last_answer.user = user;
		last_answer.right = right;
		last_answer.allowed = allowed;
		strlcpy(last_answer.model, model, NAMEDATALEN);
	}
	return allowed;
}

/*
 * Who may switch a model (alter, pause, resume, drop, set_event_log,
 * set_history): its owner and digitaltwin_admin.  Not a role granted
 * 'admin' on the model: a switch holds every worker of the database until
 * its transaction ends (lifecycle.c), so a team that may only administer
 * its own model must not be able to stall the others' by keeping one open.
 */
void
dt_check_model_owner(const char *name, Oid caller, Oid owner, const char *action)
{
	if (has_privs_of_role(caller, owner) || dt_is_admin(caller))
		return;
	/* new code runs as the owner: only the owner gives it (lifecycle.c) */
	if (strcmp(action, "alter") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of model \"%s\"", name),
				 errhint("The functions of a model run as its owner: only the owner, or a member of its role, may alter it.")));
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("must be owner of model \"%s\"", name),
			 errdetail("Changing a model holds every worker of the database until the transaction ends."),
			 errhint("Members of digitaltwin_admin may %s any model.", action)));
}

/*
 * Who may administer a model without switching it (reset its statistics,
 * grant and revoke rights on it): its owner, digitaltwin_admin and the
 * roles granted 'admin' on it.
 */
void
dt_check_model_admin(const char *name, Oid caller, Oid owner, const char *action)
{
	if (has_privs_of_role(caller, owner) || dt_model_allowed(name, caller, DT_RIGHT_ADMIN))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("must be owner of model \"%s\"", name),
			 errhint("Members of digitaltwin_admin may %s any model; digitaltwin.grant_model(model, role, 'admin') lets a role %s this one.",
					 action, action)));
}

/*
 * Read a model's row (inside a trusted scope) and check that the caller
 * may administer it; returns its id.  ERROR if it does not exist.
 */
Datum
dt_model_admin_row(const char *name, Oid caller, const char *action)
{
	bool		isnull;
	Datum		id;

	dt_model_read_row(name, "id, owner::pg_catalog.oid");
	id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	dt_check_model_admin(name, caller,
						 DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
														SPI_tuptable->tupdesc, 2, &isnull)),
						 action);
	return id;
}

/* The refusal of an insert into the queue for a model the role may not send to. */
void
dt_check_model_send(const char *model)
{
	if (!dt_model_allowed(model, GetUserId(), DT_RIGHT_SEND))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to send events to model \"%s\"", model),
				 errhint("Members of digitaltwin_writer may send to every model; digitaltwin.grant_model(model, role, 'send') lets a role send to one.")));
}

/* ----------------------------------------------------------------
 * grant_model(), revoke_model()
 * ----------------------------------------------------------------
 */

/*
 * The object privileges each right needs, given with the first grant.
 * Functions that act on one model check the model themselves.
 */
static const char *const send_privileges[] = {
	"GRANT USAGE ON SCHEMA digitaltwin TO %s",
	"GRANT INSERT (model, twin_id, payload, event_time), SELECT (id) ON digitaltwin.events TO %s",
	"GRANT EXECUTE ON FUNCTION "
	"digitaltwin.send(pg_catalog.text, pg_catalog.text, pg_catalog.jsonb, pg_catalog.timestamptz), "
	"digitaltwin.wait_idle(pg_catalog.interval) TO %s",
	NULL
};
static const char *const read_privileges[] = {
	"GRANT USAGE ON SCHEMA digitaltwin TO %s",
	"GRANT SELECT ON digitaltwin.twins, digitaltwin.live_twins, digitaltwin.alerts, "
	"digitaltwin.model_stats, digitaltwin.twin_views TO %s",
	"GRANT EXECUTE ON FUNCTION digitaltwin.twin_entries(), digitaltwin._model_live_stats(), "
	"digitaltwin.create_twin_view(pg_catalog.text, pg_catalog.text, pg_catalog.text), "
	"digitaltwin.wait_idle(pg_catalog.interval) TO %s",
	NULL
};
static const char *const admin_privileges[] = {
	"GRANT SELECT ON digitaltwin.dead_letters TO %s",
	"GRANT EXECUTE ON FUNCTION digitaltwin.reset_stats(pg_catalog.text), "
	"digitaltwin.retry_dead_letters(pg_catalog.text, pg_catalog.int8[]) TO %s",
	NULL
};

static void
dt_grant_object_privileges(const char *const *statements, Oid role)
{
	const char *name = quote_identifier(GetUserNameFromId(role, false));
	int			i;

	for (i = 0; statements[i] != NULL; i++)
	{
		int			ret = SPI_execute(psprintf(statements[i], name), false, 0);

		if (ret != SPI_OK_UTILITY)
			elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(ret));
	}
}

/*
 * Read the arguments of grant_model() and revoke_model(), find the model
 * (in the trusted scope: SPI_tuptable holds its id) and check that the
 * caller (the role before the scope's switch) may administer it.
 */
static int
dt_rights_arguments(FunctionCallInfo fcinfo, const char *function, Oid caller,
					char **model, Oid *role, Datum *model_id)
{
	int			right;

	dt_require_preload();
	dt_forbid_in_model(function);
	*model = dt_text_arg(fcinfo, 0, "model name");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("role must not be null")));
	*role = PG_GETARG_OID(1);
	right = dt_right_from_name(dt_text_arg(fcinfo, 2, "privilege"));

	*model_id = dt_model_admin_row(*model, caller, "grant privileges on");
	return right;
}

/*
 * grant_model(model, role, privilege): record the grant and give the role
 * the object privileges it needs.  Granting again is no error.
 */
Datum
digitaltwin_grant_model(PG_FUNCTION_ARGS)
{
	DtTrustedScope scope;
	char	   *model;
	Oid			role;
	Datum		model_id;
	int			right;
	int			ret;
	Oid			argtypes[4] = {INT4OID, OIDOID, TEXTOID, OIDOID};
	Datum		args[4];

	dt_trusted_enter(&scope);
	right = dt_rights_arguments(fcinfo, "digitaltwin.grant_model()", scope.save_userid,
								&model, &role, &model_id);
	if (!OidIsValid(role) || !SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(role)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role with OID %u does not exist", role)));

	args[0] = model_id;
	args[1] = ObjectIdGetDatum(role);
	args[2] = CStringGetTextDatum(dt_right_name(right));
	args[3] = ObjectIdGetDatum(scope.save_userid);
	ret = SPI_execute_with_args("INSERT INTO digitaltwin.model_grants "
								"(model_id, grantee, privilege, granted_by) "
								"VALUES ($1, $2::pg_catalog.regrole, $3, $4::pg_catalog.regrole) "
								"ON CONFLICT DO NOTHING",
								4, argtypes, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));

	if (right != DT_RIGHT_READ)
		dt_grant_object_privileges(send_privileges, role);
	if (right != DT_RIGHT_SEND)
		dt_grant_object_privileges(read_privileges, role);
	if (right == DT_RIGHT_ADMIN)
		dt_grant_object_privileges(admin_privileges, role);
	dt_trusted_leave(&scope);

	CacheInvalidateRelcacheByRelid(dt_extension_relid("model_grants"));
	PG_RETURN_VOID();
}

/* revoke_model(model, role, privilege): false if there was no such grant. */
Datum
digitaltwin_revoke_model(PG_FUNCTION_ARGS)
{
	DtTrustedScope scope;
	char	   *model;
	Oid			role;
	Datum		model_id;
	int			right;
	int			ret;
	Oid			argtypes[3] = {INT4OID, OIDOID, TEXTOID};
	Datum		args[3];
	bool		revoked;

	dt_trusted_enter(&scope);
	right = dt_rights_arguments(fcinfo, "digitaltwin.revoke_model()", scope.save_userid,
								&model, &role, &model_id);
	args[0] = model_id;
	args[1] = ObjectIdGetDatum(role);
	args[2] = CStringGetTextDatum(dt_right_name(right));
	ret = SPI_execute_with_args("DELETE FROM digitaltwin.model_grants "
								"WHERE model_id OPERATOR(pg_catalog.=) $1 "
								"AND grantee::pg_catalog.oid OPERATOR(pg_catalog.=) $2 "
								"AND privilege OPERATOR(pg_catalog.=) $3",
								3, argtypes, args, NULL, false, 0);
	if (ret != SPI_OK_DELETE)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	revoked = SPI_processed > 0;
	dt_trusted_leave(&scope);

	CacheInvalidateRelcacheByRelid(dt_extension_relid("model_grants"));
	PG_RETURN_BOOL(revoked);
}

/* ----------------------------------------------------------------
 * For the row level security policies and the views
 * ----------------------------------------------------------------
 */

/* _may_all(privilege): whether the caller has it on every model. */
Datum
digitaltwin_may_all(PG_FUNCTION_ARGS)
{
	int			right = dt_right_from_name(dt_text_arg(fcinfo, 0, "privilege"));

	PG_RETURN_BOOL(dt_may_all_models(GetUserId(), right));
}

/*
 * The models on which 'user' has 'right': their names and ids (palloc'd
 * arrays), from the cache.  The entries are copied first: checking a
 * model may reset the cache (see dt_model_allowed).
 */
static int
dt_models_allowed(Oid user, int right, char ***names, int32 **ids)
{
	HASH_SEQ_STATUS status;
	DtModelRights *r;
	int			size;
	int			nmodels = 0;
	int			n = 0;
	int			i;

	if (rights_cache == NULL)
		dt_rights_load();
	size = Max(hash_get_num_entries(rights_cache), 1);
	*names = palloc(sizeof(char *) * size);
	*ids = palloc(sizeof(int32) * size);
	hash_seq_init(&status, rights_cache);
	while ((r = hash_seq_search(&status)) != NULL)
	{
		(*names)[nmodels] = pstrdup(r->name);
		(*ids)[nmodels++] = r->id;
	}
	for (i = 0; i < nmodels; i++)
	{
		if (dt_model_allowed((*names)[i], user, right))
		{
			(*names)[n] = (*names)[i];
			(*ids)[n++] = (*ids)[i];
		}
	}
	return n;
}

/* _models_allowed(privilege): the models on which the caller has it. */
Datum
digitaltwin_models_allowed(PG_FUNCTION_ARGS)
{
	int			right = dt_right_from_name(dt_text_arg(fcinfo, 0, "privilege"));
	char	  **names;
	int32	   *ids;
	Datum	   *values;
	int			n = dt_models_allowed(GetUserId(), right, &names, &ids);
	int			i;

	values = palloc(sizeof(Datum) * Max(n, 1));
	for (i = 0; i < n; i++)
		values[i] = CStringGetTextDatum(names[i]);
	PG_RETURN_ARRAYTYPE_P(construct_array(values, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * The ids of the models on which 'user' has 'right', as a hash of int32
 * in the current memory context (for _model_live_stats(), whose rows name
 * models by id).
 */
HTAB *
dt_model_ids_allowed(Oid user, int right)
{
	HASHCTL		ctl;
	HTAB	   *hash;
	char	  **names;
	int32	   *ids;
	int			n = dt_models_allowed(user, right, &names, &ids);
	int			i;

	ctl.keysize = sizeof(int32);
	ctl.entrysize = sizeof(int32);
	ctl.hcxt = CurrentMemoryContext;
	hash = hash_create("digitaltwin allowed models", 16, &ctl,
					   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	for (i = 0; i < n; i++)
		(void) hash_search(hash, &ids[i], HASH_ENTER, NULL);
	return hash;
}

/*
 * The models granted to a role here, for DROP ROLE (protect.c): NULL if
 * none.  Inside a trusted scope.
 */
char *
dt_model_granted_to(Oid role)
{
	Oid			argtype = OIDOID;
	Datum		arg = ObjectIdGetDatum(role);
	int			ret;

	if (!dt_table_exists("model_grants"))
		return NULL;
	ret = SPI_execute_with_args("SELECT m.name FROM digitaltwin.model_grants g "
								"JOIN digitaltwin.models m ON m.id OPERATOR(pg_catalog.=) g.model_id "
								"WHERE g.grantee::pg_catalog.oid OPERATOR(pg_catalog.=) $1 "
								"ORDER BY m.name LIMIT 1",
								1, &argtype, &arg, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/* DROP OWNED BY: the role's model grants go too.  Inside a trusted scope. */
void
dt_model_grants_drop_role(Oid role)
{
	Oid			argtype = OIDOID;
	Datum		arg = ObjectIdGetDatum(role);
	int			ret;

	if (!dt_table_exists("model_grants"))
		return;
	ret = SPI_execute_with_args("DELETE FROM digitaltwin.model_grants "
								"WHERE grantee::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
								1, &argtype, &arg, NULL, false, 0);
	if (ret != SPI_OK_DELETE)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	if (SPI_processed > 0)
		CacheInvalidateRelcacheByRelid(dt_extension_relid("model_grants"));
}
