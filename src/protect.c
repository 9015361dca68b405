/*-------------------------------------------------------------------------
 *
 * protect.c
 *	  What keeps a registered model runnable: its owner cannot be dropped,
 *	  its state type cannot be altered, and a chain of events that models
 *	  send to models has a bounded length.
 *
 * Roles.  digitaltwin.models records its owner by OID (regrole), which
 * leaves no trace in pg_shdepend, so DROP ROLE used to succeed and leave the
 * model dead-lettering every event ("invalid role OID").  A ProcessUtility
 * hook, installed only when the library is preloaded, refuses DROP ROLE of
 * a role that owns a model of the current database, and makes REASSIGN
 * OWNED BY old TO new move the models of this database to the new role as
 * it moves their functions.  A role can also be dropped from another
 * database of the cluster, where the models of this one are out of sight:
 * the workers then find the owner gone (dt_model_owner_exists) and
 * dead-letter the model's events with an error that says so.  The same
 * hook refuses DROP ROLE of a role that has rights on a model here
 * (rights.c), and makes DROP OWNED BY take those rights away.
 *
 * State types.  The sql_drop event trigger of version 1.3 refuses DROP of
 * a model's state type; the ddl_command_end trigger of version 1.4
 * (digitaltwin.protect_model_types, see the 1.3--1.4 script) refuses the
 * ALTERs that change its row layout.  It calls dt_alters_row_type below to
 * tell those subcommands from harmless ones, which only C can see.
 *
 * Chains.  Every event carries a depth (digitaltwin.events.depth): 0 when
 * an application sent it, the sending event's depth + 1 when a model did.
 * The column's default, digitaltwin._event_depth(), refuses a depth over
 * digitaltwin.max_message_depth, which dead-letters the sending event: a
 * model that sends events to itself stops instead of multiplying.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/lmgr.h"
#include "tcop/deparse_utility.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/syscache.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_event_depth);
PG_FUNCTION_INFO_V1(digitaltwin_alters_row_type);

static ProcessUtility_hook_type prev_process_utility = NULL;

static char *dt_model_grant_of(Oid role);

/* ----------------------------------------------------------------
 * Model owners
 * ----------------------------------------------------------------
 */

/*
 * Whether the role still exists.  For the worker: a model whose owner was
 * dropped from another database (which the ProcessUtility hook cannot see
 * from there) has nobody to run as.
 */
bool
dt_model_owner_exists(Oid owner)
{
	return SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(owner));
}

/*
 * The first model (by name) of this database owned by 'role', or NULL.
 * Runs as the owner of the extension's tables.
 */
static char *
dt_model_owned_by(Oid role)
{
	MemoryContext cxt = CurrentMemoryContext;
	DtTrustedScope scope;
	Oid			argtype = OIDOID;
	Datum		arg = ObjectIdGetDatum(role);
	char	   *model = NULL;
	int			ret;

	dt_trusted_enter(&scope);
	ret = SPI_execute_with_args("SELECT name FROM digitaltwin.models "
								"WHERE owner::pg_catalog.oid OPERATOR(pg_catalog.=) $1 "
								"ORDER BY name LIMIT 1",
								1, &argtype, &arg, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	if (SPI_processed > 0)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									  1, &isnull);

		/* out of SPI's memory, which SPI_finish frees */
		model = MemoryContextStrdup(cxt, TextDatumGetCString(d));
	}
	dt_trusted_leave(&scope);
	return model;
}

/* DROP ROLE: refuse it while the role owns a model here. */
static void
dt_check_drop_role(DropRoleStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->roles)
	{
		RoleSpec   *spec = lfirst(lc);
		Oid			role;
		char	   *model;

		/* DROP ROLE itself refuses CURRENT_USER and the like */
		if (spec->roletype != ROLESPEC_CSTRING)
			continue;
		role = get_role_oid(spec->rolename, true);
		if (!OidIsValid(role))
			continue;
		model = dt_model_owned_by(role);
		if (model != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("role \"%s\" cannot be dropped because some objects depend on it",
							spec->rolename),
					 errdetail("Role \"%s\" owns digitaltwin model \"%s\".",
							   spec->rolename, model),
					 errhint("Drop the model with digitaltwin.drop_model(), or give it to another role with REASSIGN OWNED BY %s TO another_role.",
							 quote_identifier(spec->rolename))));
		model = dt_model_grant_of(role);
		if (model != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("role \"%s\" cannot be dropped because some objects depend on it",
							spec->rolename),
					 errdetail("Role \"%s\" has privileges on digitaltwin model \"%s\".",
							   spec->rolename, model),
					 errhint("Revoke them with digitaltwin.revoke_model(), or run DROP OWNED BY %s first.",
							 quote_identifier(spec->rolename))));
	}
}

/* A model on which the role has a grant here, or NULL. */
static char *
dt_model_grant_of(Oid role)
{
	MemoryContext cxt = CurrentMemoryContext;
	DtTrustedScope scope;
	char	   *model;

	dt_trusted_enter(&scope);
	model = dt_model_granted_to(role);
	if (model != NULL)
		model = MemoryContextStrdup(cxt, model);
	dt_trusted_leave(&scope);
	return model;
}

/* DROP OWNED BY: the roles' model grants go with their privileges. */
static void
dt_drop_owned_grants(DropOwnedStmt *stmt)
{
	DtTrustedScope scope;
	ListCell   *lc;

	foreach(lc, stmt->roles)
	{
		Oid			role = get_rolespec_oid(lfirst(lc), false);

		dt_trusted_enter(&scope);
		dt_model_grants_drop_role(role);
		dt_trusted_leave(&scope);
	}
}

/*
 * REASSIGN OWNED BY old TO new: after core has reassigned the objects of
 * this database (the model functions among them), move the models too.
 * Core has checked that the caller may act for every role named.  A model
 * may not pass to a superuser unless digitaltwin.allow_superuser_models
 * permits superuser-owned models (create_model's rule).
 */
static void
dt_reassign_models(ReassignOwnedStmt *stmt)
{
	Oid			newrole = get_rolespec_oid(stmt->newrole, false);
	DtTrustedScope scope;
	Oid			argtypes[2] = {OIDOID, REGROLEOID};
	uint64		moved = 0;
	ListCell   *lc;

	foreach(lc, stmt->roles)
	{
		Oid			oldrole = get_rolespec_oid(lfirst(lc), false);
		Datum		args[2];
		int			ret;

		if (oldrole == newrole)
			continue;
		if (superuser_arg(newrole) && !dt_allow_superuser_models)
		{
			char	   *model = dt_model_owned_by(oldrole);

			if (model != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("a superuser cannot own a model"),
						 errdetail("REASSIGN OWNED would give digitaltwin model \"%s\" to superuser \"%s\".",
								   model, GetUserNameFromId(newrole, false)),
						 errhint("Reassign to an ordinary role, or set digitaltwin.allow_superuser_models = on.")));
		}

		args[0] = ObjectIdGetDatum(oldrole);
		args[1] = ObjectIdGetDatum(newrole);
		dt_trusted_enter(&scope);
		ret = SPI_execute_with_args("UPDATE digitaltwin.models "
									"SET owner = $2 "
									"WHERE owner::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
									2, argtypes, args, NULL, false, 0);
		if (ret != SPI_OK_UPDATE)
			elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
		moved += SPI_processed;
		dt_trusted_leave(&scope);
	}

	/* the workers' and inserters' caches hold the owner: re-read at commit */
	if (moved > 0)
		CacheInvalidateRelcacheByRelid(dt_models_relid());
}

/*
 * Whether this database has the extension.  Only for DROP ROLE and
 * REASSIGN OWNED, which always run in a transaction.  While the extension
 * is being created or dropped, its tables may be half there: leave those
 * commands alone.
 */
static bool
dt_extension_here(void)
{
	return !creating_extension &&
		OidIsValid(get_extension_oid("digitaltwin", true)) &&
		OidIsValid(get_namespace_oid("digitaltwin", true));
}

/* DROP EXTENSION ... digitaltwin ... */
static bool
dt_drops_extension(Node *parsetree)
{
	DropStmt   *stmt = (DropStmt *) parsetree;
	ListCell   *lc;

	if (!IsA(parsetree, DropStmt) || stmt->removeType != OBJECT_EXTENSION)
		return false;
	foreach(lc, stmt->objects)
	{
		if (strcmp(strVal(lfirst(lc)), "digitaltwin") == 0)
			return true;
	}
	return false;
}

/*
 * Before DROP EXTENSION or ALTER EXTENSION UPDATE by the extension's
 * owner: a coordinator of a cluster is not dropped without CASCADE (its
 * foreign partitions, the DBA's objects, would silently go with the
 * extension's partitioned tables), then models is taken whole.
 */
static void
dt_take_models_first(Node *parsetree)
{
	if (!pg_extension_ownercheck(get_extension_oid("digitaltwin", false), GetUserId()))
		return;
	if (dt_drops_extension(parsetree) &&
		((DropStmt *) parsetree)->behavior != DROP_CASCADE &&
		dt_table_exists("cluster_nodes"))
	{
		DtTrustedScope scope;
		int			ret;
		bool		coordinator;

		dt_trusted_enter(&scope);
		ret = SPI_execute("SELECT 1 FROM digitaltwin.cluster_nodes LIMIT 1", true, 1);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(ret));
		coordinator = SPI_processed > 0;
		dt_trusted_leave(&scope);
		if (coordinator)
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("cannot drop extension digitaltwin because it is the coordinator of a cluster"),
					 errdetail("The foreign partitions and servers of its nodes, in schema digitaltwin_cluster, depend on it."),
					 errhint("Use DROP EXTENSION digitaltwin CASCADE, then DROP SCHEMA digitaltwin_cluster CASCADE.")));
	}
	LockRelationOid(dt_models_relid(), AccessExclusiveLock);
}

/* ALTER EXTENSION digitaltwin UPDATE ... */
static bool
dt_updates_extension(Node *parsetree)
{
	return IsA(parsetree, AlterExtensionStmt) &&
		strcmp(((AlterExtensionStmt *) parsetree)->extname, "digitaltwin") == 0;
}

static void
dt_process_utility(PlannedStmt *pstmt, const char *queryString,
				   bool readOnlyTree, ProcessUtilityContext context,
				   ParamListInfo params, QueryEnvironment *queryEnv,
				   DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	bool		reassign = false;
	bool		drop_owned = false;

	if (IsA(parsetree, DropRoleStmt) && dt_extension_here())
		dt_check_drop_role((DropRoleStmt *) parsetree);
	else if (IsA(parsetree, ReassignOwnedStmt) && dt_extension_here())
		reassign = true;
	else if (IsA(parsetree, DropOwnedStmt) && dt_extension_here())
		drop_owned = true;

	/*
	 * DROP EXTENSION and ALTER EXTENSION UPDATE take digitaltwin.models
	 * whole before anything else: every batch locks models first and then
	 * other tables of the extension, so a command that locked one of those
	 * first and waited for models would deadlock with a batch in flight.
	 * This waits for the batch to end and keeps the next one out until the
	 * command commits.  (The update scripts take the same lock, for
	 * sessions that did not load the library.)  Only for the extension's
	 * owner, who may run the command: anyone else would queue behind a
	 * reader and hold every batch up, where the command fails at once.
	 */
	if ((dt_drops_extension(parsetree) || dt_updates_extension(parsetree)) &&
		dt_extension_here())
		dt_take_models_first(parsetree);

	/* commands that need a database without its workers (databases.c) */
	if (OidIsValid(dt_database_needed_alone(parsetree)))
		dt_database_hold(dt_database_needed_alone(parsetree));

	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context,
							 params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	if (reassign)
		dt_reassign_models((ReassignOwnedStmt *) parsetree);
	/* after core checked that the caller may act for the roles */
	if (drop_owned)
		dt_drop_owned_grants((DropOwnedStmt *) parsetree);
	if (dt_drops_extension(parsetree))
		dt_database_mark_dropping();
}

void
dt_install_utility_hook(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = dt_process_utility;
}

/* ----------------------------------------------------------------
 * State types
 * ----------------------------------------------------------------
 */

/*
 * digitaltwin._alters_row_type(pg_ddl_command): whether a collected
 * command changes the attributes of the relation it names (adds, drops,
 * retypes or renames one).  Those change the state type's layout or the
 * names model code and readers use; other ALTER TABLE / ALTER TYPE forms
 * (owner, constraints, storage, options, ...) do not, and stay allowed.
 */
Datum
digitaltwin_alters_row_type(PG_FUNCTION_ARGS)
{
	CollectedCommand *cmd = (CollectedCommand *) PG_GETARG_POINTER(0);
	ListCell   *lc;

	switch (cmd->type)
	{
		case SCT_AlterTable:
			foreach(lc, cmd->d.alterTable.subcmds)
			{
				CollectedATSubcmd *sub = lfirst(lc);
				AlterTableCmd *atc = castNode(AlterTableCmd, sub->parsetree);

				switch (atc->subtype)
				{
					case AT_AddColumn:
					case AT_AddColumnRecurse:
					case AT_AddColumnToView:
					case AT_DropColumn:
					case AT_DropColumnRecurse:
					case AT_AlterColumnType:
						PG_RETURN_BOOL(true);
					default:
						break;
				}
			}
			break;
		case SCT_Simple:
			if (cmd->parsetree != NULL && IsA(cmd->parsetree, RenameStmt))
			{
				RenameStmt *rs = (RenameStmt *) cmd->parsetree;

				if (rs->renameType == OBJECT_COLUMN ||
					rs->renameType == OBJECT_ATTRIBUTE)
					PG_RETURN_BOOL(true);
			}
			break;
		default:
			break;
	}
	PG_RETURN_BOOL(false);
}

/* ----------------------------------------------------------------
 * Chain depth
 * ----------------------------------------------------------------
 */

/*
 * The depth of an event sent now: 0 outside a model, the depth of the event
 * being processed + 1 inside one, an error beyond max_message_depth (which
 * dead-letters the sending event).  The default of digitaltwin.events.depth
 * and send() inside a model (messages.c) both ask here.
 */
int32
dt_next_event_depth(void)
{
	const DtEvent *ev;
	int32		depth;

	if (dt_current_event == NULL || dt_current_event->event == NULL)
		return 0;
	ev = dt_current_event->event;
	depth = ev->depth + 1;
	if (depth > dt_max_message_depth)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("event chain of model \"%s\" is too long", dt_current_event->model->name),
				 errdetail("Event " INT64_FORMAT " is %d events down a chain of events sent by models; digitaltwin.max_message_depth is %d.",
						   ev->id, ev->depth, dt_max_message_depth),
				 errhint("A model that sends events to itself (or to models that send back) must end the chain; "
						 "raise digitaltwin.max_message_depth if longer chains are intended.")));
	return depth;
}

/*
 * digitaltwin._event_depth(): default of digitaltwin.events.depth.  Writers
 * may insert only (model, twin_id, payload), so the default is the only way
 * a depth is set.
 */
Datum
digitaltwin_event_depth(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(dt_next_event_depth());
}
