/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: the workers of every database that has the extension.
 *
 * The launcher is the only background worker registered at postmaster
 * start.  It connects to no database, reads pg_database (a shared
 * catalog) about once a second, and:
 *	- probes each connectable database it has not seen yet with a short-
 *	  lived worker that checks pg_extension (server start, CREATE DATABASE
 *	  from a template that has the extension);
 *	- gives each database that has the extension an entry of shared memory
 *	  (DtDatabase) and starts digitaltwin.workers dynamic workers for it,
 *	  or marks it refused with the reason (digitaltwin.databases, no free
 *	  worker slot);
 *	- serves the requests of CREATE EXTENSION (databases.c), which waits for
 *	  the answer inside its transaction;
 *	- restarts a worker that exited with an error two seconds later (what
 *	  bgw_restart_time did for the static workers of earlier versions);
 *	- stops the workers of a database while a command needs the database
 *	  alone (holds), or for good when the extension or the database is
 *	  dropped, and then frees the entry and its twins' memory.
 *
 * The workers are registered BGW_NEVER_RESTART, so that a crash-restart of
 * the server forgets them along with shared memory, and the launcher
 * (restarted with everything else) finds the databases again.  A worker
 * claims its slot when it starts (slot->pid): if a restarted launcher,
 * which lost its handles, starts a second worker for a slot, that one
 * exits at once, and the launcher adopts the running one by its pid.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "dt_internal.h"

#define DT_RESTART_DELAY_MS 2000	/* before a failed worker starts again */
#define DT_RETRY_REFUSED_MS 10000	/* before a refused database is tried again */
#define DT_SCAN_INTERVAL_MS 1000

/* What the launcher knows of one entry, beyond shared memory. */
typedef struct DtLaunched
{
	uint32		incarnation;	/* of the entry, when this was filled */
	BackgroundWorkerHandle *handles[DT_MAX_WORKERS];
	TimestampTz restart_at[DT_MAX_WORKERS];
	TimestampTz retry_at;		/* of a refused database */
	bool		logged_served;
	bool		releasing;		/* the extension is gone: stopping, then freeing */
} DtLaunched;

/* One row of pg_database. */
typedef struct DtDbRow
{
	Oid			oid;
	NameData	name;
	bool		allowconn;
} DtDbRow;

static DtLaunched *launched = NULL;
static DtDbRow *db_rows = NULL;
static int	ndb_rows = 0;
typedef struct DtProbed
{
	Oid			dboid;
	TimestampTz at;
} DtProbed;

static DtProbed *probed = NULL; /* databases probed by this launcher */
static int	nprobed = 0;
static int	probed_size = 0;

void
dt_register_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* never on a standby: workers write; everything starts at promotion */
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "digitaltwin");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "digitaltwin_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "digitaltwin launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "digitaltwin launcher");
	RegisterBackgroundWorker(&worker);
}

/* ----------------------------------------------------------------
 * Starting workers and probes
 * ----------------------------------------------------------------
 */

/* bgw_extra of a worker: which database entry it serves */
typedef struct DtWorkerExtra
{
	Oid			dboid;
	uint32		incarnation;
} DtWorkerExtra;

static BackgroundWorkerHandle *
dt_start_dynamic(const char *function, const char *name, const char *type,
				 Datum arg, const DtWorkerExtra *extra)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	MemoryContext old;
	bool		ok;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "digitaltwin");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker.bgw_name, BGW_MAXLEN, "%s", name);
	snprintf(worker.bgw_type, BGW_MAXLEN, "%s", type);
	worker.bgw_main_arg = arg;
	memcpy(worker.bgw_extra, extra, sizeof(DtWorkerExtra));
	worker.bgw_notify_pid = MyProcPid;

	old = MemoryContextSwitchTo(TopMemoryContext);
	ok = RegisterDynamicBackgroundWorker(&worker, &handle);
	MemoryContextSwitchTo(old);
	return ok ? handle : NULL;
}

/*
 * Whether a database has the extension: a probe worker connects to it and
 * says so in shared memory.  One probe at a time, never waited for: a
 * probe can block for as long as another session holds a lock on its
 * database (an ALTER DATABASE left open), and the launcher serves every
 * other database meanwhile.  A probe that takes longer than
 * DT_PROBE_TIMEOUT_MS is terminated and its database tried again later.
 */
#define DT_PROBE_TIMEOUT_MS 5000

static BackgroundWorkerHandle *probe_handle = NULL;
static DtDbRow probe_row;
static TimestampTz probe_started;

/* Start probing a database; false if no worker could be started. */
static bool
dt_probe_start(const DtDbRow *row)
{
	DtWorkerExtra extra = {row->oid, 0};
	char		name[BGW_MAXLEN];

	LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
	dt_shared->probe_dboid = row->oid;
	dt_shared->probe_result = 0;
	LWLockRelease(&dt_shared->lock);

	snprintf(name, sizeof(name), "digitaltwin probe of database %u", row->oid);
	probe_handle = dt_start_dynamic("digitaltwin_probe_main", name, "digitaltwin probe",
									(Datum) 0, &extra);
	probe_row = *row;
	probe_started = GetCurrentTimestamp();
	return probe_handle != NULL;
}

/*
 * The probe's answer once it has exited: 1 the database has the extension,
 * 2 it has not, 0 the probe could not tell (it could not connect: the
 * database was being dropped; or it was too slow), -1 still running.
 */
static int
dt_probe_finish(void)
{
	pid_t		pid;
	int			result;

	if (GetBackgroundWorkerPid(probe_handle, &pid) != BGWH_STOPPED)
	{
		if (TimestampDifferenceExceeds(probe_started, GetCurrentTimestamp(),
									   DT_PROBE_TIMEOUT_MS))
			TerminateBackgroundWorker(probe_handle);
		return -1;
	}
	pfree(probe_handle);
	probe_handle = NULL;
	LWLockAcquire(&dt_shared->lock, LW_SHARED);
	result = dt_shared->probe_result;
	LWLockRelease(&dt_shared->lock);
	return result;
}

/* The probe: connect, look for the extension, report, exit. */
void
digitaltwin_probe_main(Datum main_arg)
{
	DtWorkerExtra extra;
	bool		has;

	memcpy(&extra, MyBgworkerEntry->bgw_extra, sizeof(extra));
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(extra.dboid, InvalidOid, 0);

	StartTransactionCommand();
	has = OidIsValid(get_extension_oid("digitaltwin", true));
	CommitTransactionCommand();

	LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
	if (dt_shared->probe_dboid == extra.dboid)
		dt_shared->probe_result = has ? 1 : 2;
	LWLockRelease(&dt_shared->lock);
}

static bool
dt_start_worker(int index, int partition)
{
	DtDatabase *db = dt_database_entry(index);
	DtWorkerExtra extra = {db->dboid, db->incarnation};
	DtWorkerSlot *slot = &db->slots[partition];
	char		name[BGW_MAXLEN];

	SpinLockAcquire(&slot->mutex);
	slot->extension_gone = false;
	SpinLockRelease(&slot->mutex);
	snprintf(name, sizeof(name), "digitaltwin worker %d of database %u",
			 partition, db->dboid);
	launched[index].handles[partition] =
		dt_start_dynamic("digitaltwin_worker_main", name, "digitaltwin worker",
						 Int32GetDatum(index * DT_MAX_WORKERS + partition), &extra);
	return launched[index].handles[partition] != NULL;
}

/* ----------------------------------------------------------------
 * The databases
 * ----------------------------------------------------------------
 */

static void
dt_read_databases(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	int			size = 16;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	if (db_rows != NULL)
		pfree(db_rows);
	db_rows = MemoryContextAlloc(TopMemoryContext, sizeof(DtDbRow) * size);
	ndb_rows = 0;
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database form = (Form_pg_database) GETSTRUCT(tup);

		if (ndb_rows == size)
		{
			size *= 2;
			db_rows = repalloc(db_rows, sizeof(DtDbRow) * size);
		}
		db_rows[ndb_rows].oid = form->oid;
		db_rows[ndb_rows].name = form->datname;
		/* a database being dropped has datconnlimit -2 (15.4 and later) */
		db_rows[ndb_rows].allowconn = form->datallowconn && form->datconnlimit != -2;
		ndb_rows++;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
}

static const DtDbRow *
dt_db_row(Oid dboid)
{
	int			i;

	for (i = 0; i < ndb_rows; i++)
	{
		if (db_rows[i].oid == dboid)
			return &db_rows[i];
	}
	return NULL;
}

static bool
dt_was_probed(Oid dboid)
{
	int			i;

	for (i = 0; i < nprobed; i++)
	{
		if (probed[i].dboid == dboid)
			return true;
	}
	return false;
}

static void
dt_remember_probed(Oid dboid)
{
	if (nprobed == probed_size)
	{
		probed_size = Max(16, probed_size * 2);
		probed = probed == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(DtProbed) * probed_size) :
			repalloc(probed, sizeof(DtProbed) * probed_size);
	}
	probed[nprobed].dboid = dboid;
	probed[nprobed].at = GetCurrentTimestamp();
	nprobed++;
}

/*
 * Probe a database again at its next look: at once ('now'), or when a
 * backend found it without an entry, but then not more than once a second:
 * a session inserting into an unserved queue in a loop must not fork a
 * probe per statement.
 */
static void
dt_forget_probed(Oid dboid, bool now)
{
	int			i;

	for (i = 0; i < nprobed; i++)
	{
		if (probed[i].dboid == dboid &&
			(now || TimestampDifferenceExceeds(probed[i].at, GetCurrentTimestamp(), 1000)))
		{
			probed[i] = probed[--nprobed];
			break;
		}
	}
}

/* Give a database found by a probe an entry; false if none is free. */
static bool
dt_assign_entry(const DtDbRow *row)
{
	DtDatabase *db;

	LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
	db = dt_database_take_locked(row->oid, NameStr(row->name));
	LWLockRelease(&dt_shared->lock);
	return db != NULL;
}

/*
 * Databases that have the extension but found no free entry: probed again
 * whenever an entry is freed.
 */
static Oid	lacking[64];
static int	nlacking = 0;

/*
 * Probe the databases not seen yet, one per call of this (the main loop
 * calls it at least once a second, and at once when a probe exits).  A
 * database that has an entry needs no probe: CREATE EXTENSION gave it one.
 */
static void
dt_probe_new_databases(void)
{
	int			i;

	if (probe_handle != NULL)
	{
		int			result = dt_probe_finish();

		if (result < 0)
			return;				/* still running */
		if (result == 0)
			return;				/* not probed: tried again at a later look */
		dt_remember_probed(probe_row.oid);
		if (result == 1 && !dt_assign_entry(&probe_row))
		{
			ereport(WARNING,
					(errmsg("digitaltwin: database \"%s\" is not served: more databases than digitaltwin.max_databases (%d) have the extension",
							NameStr(probe_row.name), dt_max_databases),
					 errhint("Raise digitaltwin.max_databases and restart the server.")));
			if (nlacking < lengthof(lacking))
				lacking[nlacking++] = probe_row.oid;
		}
	}

	for (i = 0; i < ndb_rows; i++)
	{
		const DtDbRow *row = &db_rows[i];

		if (!row->allowconn || dt_was_probed(row->oid))
			continue;
		if (!dt_probe_start(row))
			ereport(LOG,
					(errmsg("digitaltwin: no background worker slot to look for the extension in database \"%s\"; trying again later",
							NameStr(row->name))));
		return;
	}
}

/* An entry was freed: the databases that lacked one are probed again. */
static void
dt_reprobe_lacking(void)
{
	while (nlacking > 0)
		dt_forget_probed(lacking[--nlacking], true);
}

/* ----------------------------------------------------------------
 * Tending one entry
 * ----------------------------------------------------------------
 */

static pid_t
dt_slot_pid(DtWorkerSlot *slot)
{
	pid_t		pid;

	SpinLockAcquire(&slot->mutex);
	pid = slot->pid;
	SpinLockRelease(&slot->mutex);
	return pid;
}

/*
 * Whether worker 'partition' of an entry runs (or is about to): by its
 * handle if this launcher started it, else by the pid in its slot (a
 * worker started by a previous launcher).  Forgets the handle of a worker
 * that stopped.
 */
static bool
dt_worker_alive(int index, int partition)
{
	DtLaunched *l = &launched[index];
	DtWorkerSlot *slot = &dt_database_entry(index)->slots[partition];
	pid_t		pid;

	if (l->handles[partition] != NULL)
	{
		if (GetBackgroundWorkerPid(l->handles[partition], &pid) != BGWH_STOPPED)
			return true;
		pfree(l->handles[partition]);
		l->handles[partition] = NULL;
		l->restart_at[partition] =
			TimestampTzPlusMilliseconds(GetCurrentTimestamp(), DT_RESTART_DELAY_MS);
	}
	return dt_slot_pid(slot) != 0;
}

/* Ask every worker of an entry to stop; true once none runs. */
static bool
dt_stop_workers(int index)
{
	DtLaunched *l = &launched[index];
	DtDatabase *db = dt_database_entry(index);
	bool		stopped = true;
	int			p;

	for (p = 0; p < dt_shared->nworkers; p++)
	{
		pid_t		pid;

		if (l->handles[p] != NULL)
			TerminateBackgroundWorker(l->handles[p]);
		else if ((pid = dt_slot_pid(&db->slots[p])) != 0)
			kill(pid, SIGTERM);
		if (dt_worker_alive(index, p))
			stopped = false;
		else
			l->restart_at[p] = 0;
	}
	return stopped;
}

static void
dt_set_state(DtDatabase *db, DtDbState state, int code, const char *reason)
{
	LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
	db->state = state;
	db->refusal_code = code;
	strlcpy(db->reason, reason ? reason : "", sizeof(db->reason));
	db->serve_answered = db->serve_requests;
	LWLockRelease(&dt_shared->lock);
	ConditionVariableBroadcast(&dt_shared->launcher_cv);
}

static void
dt_refuse_database(int index, int code, const char *reason)
{
	DtDatabase *db = dt_database_entry(index);

	if (db->state != DT_DB_REFUSED || strcmp(db->reason, reason) != 0)
		ereport(WARNING,
				(errmsg("digitaltwin: database \"%s\" is not served: %s", db->name, reason)));
	launched[index].logged_served = false;
	launched[index].retry_at =
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), DT_RETRY_REFUSED_MS);
	dt_set_state(db, DT_DB_REFUSED, code, reason);
}

/*
 * Free an entry whose database no longer has the extension (or no longer
 * exists), once its workers are gone: its twins' memory goes back to the
 * other databases.  A CREATE EXTENSION waiting for an answer keeps it.
 */
static void
dt_release_entry(int index, const char *why)
{
	DtDatabase *db = dt_database_entry(index);
	Oid			dboid;
	int			p;

	if (!dt_stop_workers(index))
		return;

	dt_db = db;
	dt_attach_store();
	dt_store_purge_database();
	dt_db = NULL;

	LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
	if (db->serve_requests > db->serve_answered)
	{
		LWLockRelease(&dt_shared->lock);
		return;
	}
	ereport(LOG,
			(errmsg("digitaltwin: database \"%s\" is no longer served: %s", db->name, why)));
	for (p = 0; p < dt_shared->nworkers; p++)
		dt_slot_clear(&db->slots[p]);
	pg_atomic_write_u64(&db->queue_generation, DT_GENERATION_UNKNOWN);
	db->state = DT_DB_FREE;
	dboid = db->dboid;
	db->dboid = InvalidOid;
	db->name[0] = '\0';
	LWLockRelease(&dt_shared->lock);
	launched[index].logged_served = false;
	launched[index].releasing = false;
	ConditionVariableBroadcast(&dt_shared->launcher_cv);

	/*
	 * Look into the database again: the extension may be back already (an
	 * older version's script does not ask to be served).  And the entry
	 * may go to a database that lacked one.
	 */
	dt_forget_probed(dboid, true);
	dt_reprobe_lacking();
}

/*
 * The outcome of a transaction remembered in an entry: 1 committed, 0
 * rolled back, -1 none or still running.  A finished one is forgotten, so
 * that its status is never looked up again once the commit log it lives in
 * may have been truncated.  DtShared.lock is held exclusively.
 */
static int
dt_xact_outcome(TransactionId *xid)
{
	int			outcome;

	if (!TransactionIdIsValid(*xid) || TransactionIdIsInProgress(*xid))
		return -1;
	outcome = TransactionIdDidCommit(*xid) ? 1 : 0;
	*xid = InvalidTransactionId;
	return outcome;
}

/*
 * Settle the transactions an entry remembers as soon as they end, whatever
 * the entry's state: a DROP EXTENSION that committed, a CREATE EXTENSION
 * that rolled back.
 */
static void
dt_settle_xacts(DtDatabase *db)
{
	LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
	if (dt_xact_outcome(&db->dropping_xid) == 1)
		db->extension_dropped = true;
	if (dt_xact_outcome(&db->creating_xid) == 0)
		db->creation_aborted = true;
	LWLockRelease(&dt_shared->lock);
}

/*
 * Whether the extension is gone from an entry's database: a DROP
 * EXTENSION committed, the CREATE EXTENSION that was refused rolled back,
 * or a worker found it gone.
 */
static bool
dt_extension_dropped(int index)
{
	DtDatabase *db = dt_database_entry(index);
	bool		gone;
	int			p;

	LWLockAcquire(&dt_shared->lock, LW_SHARED);
	gone = db->extension_dropped ||
		(db->state == DT_DB_REFUSED && db->creation_aborted);
	LWLockRelease(&dt_shared->lock);

	for (p = 0; p < dt_shared->nworkers; p++)
	{
		DtWorkerSlot *slot = &db->slots[p];

		SpinLockAcquire(&slot->mutex);
		gone |= slot->extension_gone;
		SpinLockRelease(&slot->mutex);
	}
	return gone;
}

static void
dt_tend_entry(int index)
{
	DtDatabase *db = dt_database_entry(index);
	DtLaunched *l = &launched[index];
	const DtDbRow *row;
	TimestampTz now = GetCurrentTimestamp();
	bool		pending;
	int			holds;
	int			p;

	if (db->state == DT_DB_FREE)
		return;
	if (l->incarnation != db->incarnation)
	{
		for (p = 0; p < DT_MAX_WORKERS; p++)
		{
			if (l->handles[p] != NULL)
				pfree(l->handles[p]);
		}
		memset(l, 0, sizeof(*l));
		l->incarnation = db->incarnation;
	}

	dt_settle_xacts(db);
	row = dt_db_row(db->dboid);
	if (row == NULL)
	{
		dt_release_entry(index, "the database was dropped");
		return;
	}
	LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
	strlcpy(db->name, NameStr(row->name), sizeof(db->name));	/* RENAME */
	pending = db->serve_requests > db->serve_answered;
	holds = db->holds;
	LWLockRelease(&dt_shared->lock);

	/* a release takes passes (the workers must exit first): finish it */
	if (pending)
		l->releasing = false;
	else if (l->releasing || dt_extension_dropped(index))
	{
		l->releasing = true;
		dt_release_entry(index, "the extension was dropped");
		return;
	}
	if (holds > 0)
	{
		if (dt_stop_workers(index))
			ConditionVariableBroadcast(&dt_shared->launcher_cv);
		return;
	}
	if (dt_workers == 0 || !dt_database_listed(db->name))
	{
		(void) dt_stop_workers(index);
		dt_refuse_database(index, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
						   dt_workers == 0 ? "digitaltwin.workers is 0" :
						   "digitaltwin.databases does not list it");
		return;
	}
	/* lack of worker slots: try again now and then (the configuration was just seen to allow it) */
	if (db->state == DT_DB_REFUSED &&
		db->refusal_code == ERRCODE_CONFIGURATION_LIMIT_EXCEEDED &&
		!pending && now < l->retry_at)
		return;

	for (p = 0; p < dt_shared->nworkers; p++)
	{
		if (dt_worker_alive(index, p) || now < l->restart_at[p])
			continue;
		if (!dt_start_worker(index, p))
		{
			char		reason[200];

			/*
			 * A served database whose worker needs a restart waits for a
			 * slot (parallel query may hold them for a moment) rather than
			 * losing its other workers; its queue stays open, the log and
			 * the worker's missing pid in digitaltwin.stats tell.
			 */
			if (db->state == DT_DB_SERVED && !pending)
			{
				ereport(WARNING,
						(errmsg("digitaltwin: no free background worker slot to restart worker %d of database \"%s\"; trying again in %d ms",
								p, db->name, DT_RESTART_DELAY_MS)));
				l->restart_at[p] = TimestampTzPlusMilliseconds(now, DT_RESTART_DELAY_MS);
				continue;
			}
			(void) dt_stop_workers(index);
			snprintf(reason, sizeof(reason),
					 "no free background worker slot for its %d workers (max_worker_processes is %d)",
					 dt_shared->nworkers, max_worker_processes);
			dt_refuse_database(index, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED, reason);
			return;
		}
	}
	if (db->state != DT_DB_SERVED || pending)
		dt_set_state(db, DT_DB_SERVED, 0, NULL);
	if (!l->logged_served)
	{
		ereport(LOG,
				(errmsg("digitaltwin: serving database \"%s\" with %d workers",
						db->name, dt_shared->nworkers)));
		l->logged_served = true;
	}
}

/* ----------------------------------------------------------------
 * Main loop
 * ----------------------------------------------------------------
 */

static void
dt_launcher_exit(int code, Datum arg)
{
	LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
	dt_shared->launcher_pid = 0;
	dt_shared->launcher_latch = NULL;
	LWLockRelease(&dt_shared->lock);
}

void
digitaltwin_launcher_main(Datum main_arg)
{
	int			i;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	/* no database: pg_database is a shared catalog */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	launched = MemoryContextAllocZero(TopMemoryContext,
									  sizeof(DtLaunched) * dt_shared->ndatabases);
	LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
	dt_shared->launcher_pid = MyProcPid;
	dt_shared->launcher_latch = MyLatch;
	LWLockRelease(&dt_shared->lock);
	before_shmem_exit(dt_launcher_exit, (Datum) 0);

	for (;;)
	{
		uint64		rescan;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
		rescan = dt_shared->rescan_requests;
		dt_forget_probed(dt_shared->reprobe_dboid, false);
		dt_shared->reprobe_dboid = InvalidOid;
		LWLockRelease(&dt_shared->lock);

		dt_read_databases();
		for (i = 0; i < dt_shared->ndatabases; i++)
			dt_tend_entry(i);
		/* after the entries: one freed just now lets a waiting database in */
		dt_probe_new_databases();

		/* a look is done once no probe is left to run */
		if (probe_handle == NULL)
		{
			LWLockAcquire(&dt_shared->lock, LW_EXCLUSIVE);
			dt_shared->scanned = true;
			dt_shared->rescans_done = rescan;
			LWLockRelease(&dt_shared->lock);
		}
		ConditionVariableBroadcast(&dt_shared->launcher_cv);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 DT_SCAN_INTERVAL_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
