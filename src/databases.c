/*-------------------------------------------------------------------------
 *
 * databases.c
 *	  Which databases are served: what a backend asks of the launcher and
 *	  what it may do in its database.
 *
 * Each database that has the extension gets an entry of shared memory
 * (DtDatabase) holding its workers' slots and its twins.  The launcher
 * (launcher.c) starts and stops the workers of every entry; a backend
 * finds its database's entry here, asks the launcher to serve its database
 * (CREATE EXTENSION), holds the workers off while a command needs the
 * database alone (DROP DATABASE, ALTER DATABASE, CREATE DATABASE from it),
 * and refuses to queue events that nobody would process.
 *
 * Entry states change under DtShared.lock, taken by the launcher and by
 * the backends here; a process reading its own entry without that lock
 * (the per-row queue default, the views) checks dboid and incarnation,
 * which are never both reused: an entry given to another database, or to
 * this one again, gets a new incarnation.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/acl.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_serve_database);

/* How long a backend waits for the launcher before it gives up. */
#define DT_LAUNCHER_WAIT_MS (30 * 1000)

static uint32 my_incarnation = 0;

void
dt_launcher_wake(void)
{
	Latch	   *latch = dt_shared->launcher_latch;

	if (latch != NULL)
		SetLatch(latch);
}

/* The entry assigned to a database, or NULL.  DtShared.lock is held. */
static DtDatabase *
dt_database_find_locked(Oid dboid)
{
	int			i;

	for (i = 0; i < dt_shared->ndatabases; i++)
	{
		DtDatabase *db = dt_database_entry(i);

		if (db->state != DT_DB_FREE && db->dboid == dboid)
			return db;
	}
	return NULL;
}

/*
 * The entry of database 'dboid', or a free one given to it now (a new
 * incarnation, STARTING, everything of its last database forgotten); NULL
 * if it has none and none is free.  DtShared.lock is held exclusively.
 * The launcher (a database found by a probe) and CREATE EXTENSION both
 * take entries here.
 */
DtDatabase *
dt_database_take_locked(Oid dboid, const char *name)
{
	DtDatabase *db = dt_database_find_locked(dboid);
	int			i;

	if (db != NULL)
		return db;
	for (i = 0; i < dt_shared->ndatabases && db == NULL; i++)
	{
		if (dt_database_entry(i)->state == DT_DB_FREE)
			db = dt_database_entry(i);
	}
	if (db == NULL)
		return NULL;
	db->dboid = dboid;
	db->incarnation++;
	db->state = DT_DB_STARTING;
	strlcpy(db->name, name ? name : "", sizeof(db->name));
	db->reason[0] = '\0';
	db->refusal_code = 0;
	db->holds = 0;
	db->serve_requests = db->serve_answered = 0;
	db->creating_xid = InvalidTransactionId;
	db->creation_aborted = false;
	db->dropping_xid = InvalidTransactionId;
	db->extension_dropped = false;
	/* no worker of the entry runs: the next ones start with a load at start */
	SpinLockAcquire(&db->start_load_mutex);
	db->start_load = DT_START_LOAD_OPEN;
	db->start_loaded = 0;
	SpinLockRelease(&db->start_load_mutex);
	return db;
}

/* Entries no database has. */
static int
dt_free_entries(void)
{
	int			n = 0;
	int			i;

	LWLockAcquire(&dt_shared->lock, LW_SHARED);
	for (i = 0; i < dt_shared->ndatabases; i++)
		n += (dt_database_entry(i)->state == DT_DB_FREE);
	LWLockRelease(&dt_shared->lock);
	return n;
}

/* Make 'db' this process's database entry (a worker's, from its start). */
void
dt_database_set(DtDatabase *db)
{
	dt_db = db;
	my_incarnation = db->incarnation;
}

/*
 * This backend's database entry, or NULL if its database has none.  The
 * entry remembered in dt_db is checked first, without a lock.
 */
DtDatabase *
dt_database_current(void)
{
	dt_require_preload();
	if (dt_db != NULL && dt_db->dboid == MyDatabaseId &&
		dt_db->incarnation == my_incarnation && dt_db->state != DT_DB_FREE)
		return dt_db;

	LWLockAcquire(&dt_shared->lock, LW_SHARED);
	dt_db = dt_database_find_locked(MyDatabaseId);
	if (dt_db != NULL)
		my_incarnation = dt_db->incarnation;
	LWLockRelease(&dt_shared->lock);
	return dt_db;
}

/* ----------------------------------------------------------------
 * Refusals: never a silent queue
 * ----------------------------------------------------------------
 */

static void dt_refuse(int sqlerrcode, const char *detail, const char *hint) pg_attribute_noreturn();

static void
dt_refuse(int sqlerrcode, const char *detail, const char *hint)
{
	char	   *dbname = get_database_name(MyDatabaseId);

	ereport(ERROR,
			(errcode(sqlerrcode),
			 errmsg("database \"%s\" is not served by digitaltwin",
					dbname ? dbname : "?"),
			 errdetail_internal("%s", detail),
			 hint ? errhint("%s", hint) : 0));
}

static const char *
dt_refusal_hint(int sqlerrcode)
{
	if (sqlerrcode == ERRCODE_CONFIGURATION_LIMIT_EXCEEDED)
		return "Raise max_worker_processes (or lower digitaltwin.workers) and restart the server; "
			"each served database needs digitaltwin.workers background workers, the launcher one more.";
	return "Add the database to digitaltwin.databases and reload the configuration.";
}

/* Fail if the launcher refused this database's entry, with its reason. */
static void
dt_raise_if_refused(DtDatabase *db)
{
	int			code = 0;
	char		reason[sizeof(db->reason)];

	/* every INSERT statement passes here: no lock unless it looks refused */
	if (db->state != DT_DB_REFUSED)
		return;
	LWLockAcquire(&dt_shared->lock, LW_SHARED);
	if (db->state == DT_DB_REFUSED)
	{
		code = db->refusal_code;
		strlcpy(reason, db->reason, sizeof(reason));
	}
	LWLockRelease(&dt_shared->lock);
	if (code != 0)
		dt_refuse(code, reason, dt_refusal_hint(code));
}

/* The refusals that the configuration decides alone. */
static void
dt_require_served_config(void)
{
	char	   *dbname;

	if (dt_workers == 0)
		dt_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  "digitaltwin.workers is 0.",
				  "Set digitaltwin.workers and restart the server.");
	if (dt_databases == NULL || dt_databases[0] == '\0')
		return;					/* every database: no catalog lookup per statement */
	dbname = get_database_name(MyDatabaseId);
	if (dbname != NULL && !dt_database_listed(dbname))
	{
		char	   *detail = psprintf("digitaltwin.databases is \"%s\".", dt_databases);

		dt_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, detail,
				  dt_refusal_hint(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE));
	}
}

/*
 * Fail unless events queued in this database will be processed: the
 * configuration excludes it, or the launcher refused it (no worker slot,
 * too many databases).  A database the launcher has not looked at yet
 * (just after server start) passes: it is about to be served or refused.
 */
void
dt_require_served(void)
{
	DtDatabase *db;

	dt_require_served_config();
	db = dt_database_current();
	if (db == NULL && dt_shared->scanned)
	{
		/*
		 * A database just copied from a template, or given an old version
		 * of the extension (whose script did not ask to be served): the
		 * launcher looks now.  It probes a database at most once a second,
		 * so one dropped and created again within the second may need a
		 * look or two more (the extension is here: its probe will find it).
		 */
		TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 5000);

		do
		{
			dt_launcher_rescan();
			db = dt_database_current();
		} while (db == NULL && dt_free_entries() > 0 &&
				 GetCurrentTimestamp() < deadline);
	}
	if (db == NULL)
	{
		if (!dt_shared->scanned)
			return;
		if (dt_free_entries() == 0)
			dt_refuse(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
					  psprintf("More databases than digitaltwin.max_databases (%d) have the extension.",
							   dt_max_databases),
					  "Raise digitaltwin.max_databases and restart the server.");
		dt_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  "The launcher has not found the extension in this database yet.",
				  "Try again in a second; if it goes on, the server log says why (a probe needs a free background worker slot).");
	}
	dt_raise_if_refused(db);
}

/*
 * The status digitaltwin.stats shows for this database when it has no
 * entry: why it is not served, or that the launcher has not looked yet.
 */
char *
dt_database_status_without_entry(void)
{
	char	   *dbname;

	if (dt_workers == 0)
		return pstrdup("not served: digitaltwin.workers is 0");
	dbname = get_database_name(MyDatabaseId);
	if (dbname != NULL && !dt_database_listed(dbname))
		return pstrdup("not served: digitaltwin.databases does not list it");
	if (dt_shared->scanned && dt_free_entries() == 0)
		return psprintf("not served: more databases than digitaltwin.max_databases (%d) have the extension",
						dt_max_databases);
	return pstrdup("starting");
}

/*
 * Wait until this database is served, or the deadline (wait_idle()).
 * Returns its entry, or NULL at the deadline; fails if it is refused.
 */
DtDatabase *
dt_database_wait_served(TimestampTz deadline)
{
	DtDatabase *db;

	for (;;)
	{
		dt_require_served();
		db = dt_database_current();
		if (db != NULL && db->state == DT_DB_SERVED)
			return db;
		if (GetCurrentTimestamp() >= deadline)
			return NULL;
		ConditionVariableTimedSleep(&dt_shared->launcher_cv, 100, PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
	}
}

/* ----------------------------------------------------------------
 * Asking the launcher
 * ----------------------------------------------------------------
 */

/*
 * Wait on the launcher's condition variable until done(arg) is true; an
 * error if the launcher does not answer in time.
 */
static void
dt_launcher_wait(bool (*done) (void *arg), void *arg, const char *what)
{
	TimestampTz start = GetCurrentTimestamp();

	ConditionVariablePrepareToSleep(&dt_shared->launcher_cv);
	while (!done(arg))
	{
		if (TimestampDifferenceExceeds(start, GetCurrentTimestamp(), DT_LAUNCHER_WAIT_MS))
		{
			ConditionVariableCancelSleep();
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the digitaltwin launcher did not %s in time", what),
					 errhint("Check that digitaltwin is in shared_preload_libraries and that the server log shows no error of the launcher.")));
		}
		dt_launcher_wake();
		ConditionVariableTimedSleep(&dt_shared->launcher_cv, 1000, PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
	}
	ConditionVariableCancelSleep();
}

typedef struct DtServeWait
{
	DtDatabase *db;
	uint64		request;
} DtServeWait;

static bool
dt_serve_answered(void *arg)
{
	DtServeWait *w = arg;
	bool		answered;

	LWLockAcquire(&dt_shared->lock, LW_SHARED);
	answered = w->db->serve_answered >= w->request;
	LWLockRelease(&dt_shared->lock);
	return answered;
}

/*
 * Serve this database: take an entry for it and have the launcher start
 * its workers, or fail with the reason.  CREATE EXTENSION calls this
 * (through digitaltwin.serve_database()) inside its transaction: the
 * workers start at once and wait for that transaction to end
 * (creating_xid), so they begin with whatever it committed, and exit if it
 * rolled back.
 */
static void
dt_database_request_service(void)
{
	DtDatabase *db;
	DtServeWait w;
	char	   *dbname = get_database_name(MyDatabaseId);
	int			attempt = 0;

	dt_require_served_config();

again:
	LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
	db = dt_database_take_locked(MyDatabaseId, dbname);
	if (db == NULL)
	{
		LWLockRelease(&dt_shared->lock);

		/*
		 * An entry may be on its way out (DROP EXTENSION elsewhere just
		 * committed; its workers are stopping): let the launcher finish a
		 * few looks before refusing.
		 */
		if (attempt++ < 5)
		{
			dt_launcher_rescan();
			goto again;
		}
		dt_refuse(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
				  psprintf("More databases than digitaltwin.max_databases (%d) would have the extension.",
						   dt_max_databases),
				  "Raise digitaltwin.max_databases and restart the server, or drop the extension from a database that does not need it.");
	}
	if (db->state != DT_DB_SERVED)
		db->state = DT_DB_STARTING;
	strlcpy(db->name, dbname ? dbname : "", sizeof(db->name));
	/* the subtransaction's: CREATE EXTENSION may be rolled back to a savepoint */
	db->creating_xid = GetCurrentTransactionId();
	db->creation_aborted = false;
	db->dropping_xid = InvalidTransactionId;
	db->extension_dropped = false;
	w.db = db;
	w.request = ++db->serve_requests;
	LWLockRelease(&dt_shared->lock);

	dt_launcher_wait(dt_serve_answered, &w, "start the workers");

	dt_raise_if_refused(db);
}

Datum
digitaltwin_serve_database(PG_FUNCTION_ARGS)
{
	dt_require_preload();
	if (RecoveryInProgress())
		PG_RETURN_VOID();
	dt_database_request_service();
	PG_RETURN_VOID();
}

/* ----------------------------------------------------------------
 * Holding a database's workers off (utility hook, protect.c)
 * ----------------------------------------------------------------
 */

/*
 * Databases this transaction holds, released when it ends, or when the
 * subtransaction that took the hold is rolled back (the command failed).
 */
#define DT_MAX_HOLDS 4
static Oid	held[DT_MAX_HOLDS];
static SubTransactionId held_by[DT_MAX_HOLDS];
static int	nheld = 0;
static bool hold_callback_registered = false;

static void
dt_database_release(Oid dboid)
{
	DtDatabase *db;

	LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
	db = dt_database_find_locked(dboid);
	if (db != NULL && db->holds > 0)
		db->holds--;
	LWLockRelease(&dt_shared->lock);
	dt_launcher_wake();
}

/*
 * At the end of the transaction, not of the command: a dropped database's
 * row is gone for the launcher only once the DROP commits, and a renamed
 * one has its new name only then; released earlier, the launcher would
 * start workers in a database about to vanish.
 */
static void
dt_hold_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			while (nheld > 0)
				dt_database_release(held[--nheld]);
			break;
		default:
			break;
	}
}

static void
dt_hold_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	int			i;

	if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (i = 0; i < nheld; i++)
		{
			if (held_by[i] == mySubid)
				held_by[i] = parentSubid;
		}
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		while (nheld > 0 && held_by[nheld - 1] == mySubid)
			dt_database_release(held[--nheld]);
	}
}

static bool
dt_workers_gone(void *arg)
{
	DtDatabase *db = arg;
	int			i;

	for (i = 0; i < dt_shared->nworkers; i++)
	{
		DtWorkerSlot *slot = &db->slots[i];
		pid_t		pid;

		SpinLockAcquire(&slot->mutex);
		pid = slot->pid;
		SpinLockRelease(&slot->mutex);
		if (pid != 0)
			return false;
	}
	return true;
}

/*
 * DROP DATABASE, ALTER DATABASE ... RENAME or SET TABLESPACE, and CREATE
 * DATABASE ... TEMPLATE fail while other sessions are connected to the
 * database: stop its workers first, and keep them stopped until the
 * transaction ends, however it ends.
 */
void
dt_database_hold(Oid dboid)
{
	DtDatabase *db;

	if (nheld == DT_MAX_HOLDS)
		return;					/* more than one such command per transaction */
	if (!hold_callback_registered)
	{
		RegisterXactCallback(dt_hold_xact_callback, NULL);
		RegisterSubXactCallback(dt_hold_subxact_callback, NULL);
		hold_callback_registered = true;
	}
	LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
	db = dt_database_find_locked(dboid);
	if (db != NULL)
	{
		db->holds++;
		held_by[nheld] = GetCurrentSubTransactionId();
		held[nheld++] = dboid;
	}
	LWLockRelease(&dt_shared->lock);
	if (db != NULL)
		dt_launcher_wait(dt_workers_gone, db, "stop the workers of the database");
}

typedef struct DtRescanWait
{
	uint64		request;
} DtRescanWait;

static bool
dt_rescan_done(void *arg)
{
	DtRescanWait *w = arg;
	bool		done;

	LWLockAcquire(&dt_shared->lock, LW_SHARED);
	done = dt_shared->rescans_done >= w->request;
	LWLockRelease(&dt_shared->lock);
	return done;
}

/*
 * Have the launcher look at the databases again, probing this one even if
 * it did before, and wait until it has: a database copied from a template
 * that has the extension is probed by the launcher's next look (within a
 * second), and one queueing events before that must not be refused; so is
 * one that got an old version of the extension, whose script did not ask
 * to be served.
 */
void
dt_launcher_rescan(void)
{
	DtRescanWait w;

	LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
	w.request = ++dt_shared->rescan_requests;
	dt_shared->reprobe_dboid = MyDatabaseId;
	LWLockRelease(&dt_shared->lock);
	dt_launcher_wait(dt_rescan_done, &w, "look at the new database");
}

/*
 * DROP EXTENSION digitaltwin (utility hook): once its transaction commits,
 * the launcher stops the database's workers and frees its entry, without
 * waiting for a worker to notice.
 */
void
dt_database_mark_dropping(void)
{
	DtDatabase *db = dt_database_current();

	if (db == NULL)
		return;
	LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
	if (db->dboid == MyDatabaseId && db->state != DT_DB_FREE)
		db->dropping_xid = GetCurrentTransactionId();	/* not its savepoint's parent */
	LWLockRelease(&dt_shared->lock);
}

/*
 * Whether the current user may copy database 'dboid' (CREATE DATABASE ...
 * TEMPLATE): CREATEDB, and the template is marked as one or owned by them.
 */
static bool
dt_may_copy_database(Oid dboid)
{
	HeapTuple	tup;
	bool		is_template;

	if (!have_createdb_privilege())
		return false;
	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(dboid));
	if (!HeapTupleIsValid(tup))
		return false;
	is_template = ((Form_pg_database) GETSTRUCT(tup))->datistemplate;
	ReleaseSysCache(tup);
	return is_template || pg_database_ownercheck(dboid, GetUserId());
}

/*
 * The database a utility command needs without other sessions connected
 * (so without its workers), or InvalidOid: DROP DATABASE, ALTER DATABASE
 * ... RENAME or SET TABLESPACE, and CREATE DATABASE from a template (by
 * default template1, which may have the extension too).  Only when the
 * current user may run the command on it: holding a database's workers off
 * is not for whoever types the command (the command checks its rights only
 * later, and the hold lasts until the end of the transaction).
 */
Oid
dt_database_needed_alone(Node *parsetree)
{
	const char *name = NULL;
	bool		copy = false;
	bool		rename = false;
	ListCell   *lc;
	Oid			dboid;

	if (IsA(parsetree, DropdbStmt))
		name = ((DropdbStmt *) parsetree)->dbname;
	else if (IsA(parsetree, RenameStmt) &&
			 ((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
	{
		name = ((RenameStmt *) parsetree)->subname;
		rename = true;
	}
	else if (IsA(parsetree, AlterDatabaseStmt))
	{
		AlterDatabaseStmt *stmt = (AlterDatabaseStmt *) parsetree;

		foreach(lc, stmt->options)
		{
			if (strcmp(((DefElem *) lfirst(lc))->defname, "tablespace") == 0)
				name = stmt->dbname;
		}
	}
	else if (IsA(parsetree, CreatedbStmt))
	{
		name = "template1";
		copy = true;
		foreach(lc, ((CreatedbStmt *) parsetree)->options)
		{
			DefElem    *opt = lfirst(lc);

			if (strcmp(opt->defname, "template") == 0 && opt->arg != NULL)
				name = defGetString(opt);
		}
	}
	if (name == NULL)
		return InvalidOid;
	dboid = get_database_oid(name, true);
	if (!OidIsValid(dboid))
		return InvalidOid;
	if (copy ? !dt_may_copy_database(dboid) :
		(!pg_database_ownercheck(dboid, GetUserId()) ||
		 (rename && !have_createdb_privilege())))
		return InvalidOid;
	return dboid;
}
